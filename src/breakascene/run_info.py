"""``scene.json``, typed: what a finished run learned and how, read once per command.

Extraction writes it (:meth:`RunInfo.write`); generation, editing, exports, the web app and the evaluation read
it back (:meth:`RunInfo.read`), which also checks that the folder is a finished run. The JSON keys are the
file format (``format_version`` 1) that other tools and older runs rely on: the fields below map to them one
to one, and :meth:`RunInfo.to_json` writes exactly those keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RunError
from .run_folder import SCENE_FILE, partial_path, write_json

FORMAT = "break-a-scene run"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class HandleInfo:
    """One learned handle as scene.json records it."""

    name: str  # "asset0", or the mask's name
    token: str  # "<asset0>": what prompts write
    init_word: str  # the word its vector started from
    background: bool = False  # the <bg> handle, learned from the complement of the masks


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA run's adapters (``extract --lora-rank``); the base model is loaded again to use them."""

    rank: int
    alpha: float
    weights: str  # the denoiser's adapters (UNet or FLUX transformer), diffusers' LoRA file inside the run folder
    text_encoder: str | None = None  # the text encoder's adapters (peft keys), when trained
    text_encoder_2: str | None = None  # SDXL's second text encoder's or FLUX's T5's, the same way


@dataclass
class RunInfo:
    """A run's scene.json. ``attention_scores`` maps a phase to its (K, K) mass-inside-mask matrix."""

    base_model: str
    resolution: int
    handles: list[HandleInfo]
    prediction_type: str | None = None
    lora: LoraInfo | None = None
    masks: list[str] = field(default_factory=list)  # the mask files' names, in handle order
    seed: int = 0
    steps: dict[str, int] = field(default_factory=dict)  # phase -> steps
    total_steps: int = 0
    train_seconds_this_process: float = 0.0
    attention_scores: dict[str, list[list[float]]] = field(default_factory=dict)
    losses: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # ExtractConfig.to_dict()
    versions: dict[str, str] = field(default_factory=dict)
    pipeline: str = "StableDiffusionPipeline"  # the family's diffusers pipeline class (runs before SDXL: this)
    vae: str | None = None  # extract --vae: the VAE that replaced the base model's (a LoRA run loads it again)

    @property
    def tokens(self) -> list[str]:
        return [h.token for h in self.handles]

    @property
    def concept_tokens(self) -> list[str]:
        return [h.token for h in self.handles if not h.background]

    @property
    def background_tokens(self) -> list[str]:
        return [h.token for h in self.handles if h.background]

    def to_json(self) -> dict:
        lora = None
        if self.lora is not None:
            lora = {"rank": self.lora.rank, "alpha": self.lora.alpha, "weights": self.lora.weights,
                    "text_encoder": self.lora.text_encoder}
            if self.lora.text_encoder_2:  # only then: SD runs' scene.json stays as it was
                lora["text_encoder_2"] = self.lora.text_encoder_2
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "pipeline": self.pipeline,
            "vae": self.vae,
            "resolution": self.resolution,
            "prediction_type": self.prediction_type,
            "lora": lora,
            "handles": [{"name": h.name, "token": h.token, "init_word": h.init_word, "background": h.background}
                        for h in self.handles],
            "masks": list(self.masks),
            "seed": self.seed,
            "steps": dict(self.steps),
            "total_steps": self.total_steps,
            "train_seconds_this_process": round(self.train_seconds_this_process, 1),
            # the diagonal, for a reader who wants one number per handle
            "attention_mass_inside_own_mask": {
                phase: [row[i] for i, row in enumerate(matrix)] for phase, matrix in self.attention_scores.items()
            },
            "attention_mass_matrix": self.attention_scores,
            "losses": self.losses,
            "config": self.config,
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, data: dict, source: Path | str = SCENE_FILE) -> RunInfo:
        """Builds a RunInfo from scene.json's dict. RunError naming ``source`` if a required key is missing."""
        try:
            lora = data.get("lora")
            return cls(
                base_model=data["base_model"],
                resolution=int(data["resolution"]),
                handles=[HandleInfo(h["name"], h["token"], h.get("init_word", ""), bool(h.get("background")))
                         for h in data["handles"]],
                prediction_type=data.get("prediction_type"),
                lora=LoraInfo(lora["rank"], lora["alpha"], lora["weights"], lora.get("text_encoder"),
                              lora.get("text_encoder_2")) if lora else None,
                masks=list(data.get("masks", [])),
                seed=data.get("seed", 0),
                steps=dict(data.get("steps", {})),
                total_steps=data.get("total_steps", 0),
                train_seconds_this_process=data.get("train_seconds_this_process", 0.0),
                attention_scores=data.get("attention_mass_matrix", {}),
                losses=data.get("losses", []),
                config=data.get("config", {}),
                versions=data.get("versions", {}),
                pipeline=data.get("pipeline", "StableDiffusionPipeline"),
                vae=data.get("vae"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RunError(f"{source} is damaged (no usable {error}); extract the scene again") from error

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / SCENE_FILE, self.to_json())

    @classmethod
    def read(cls, run: Path | str) -> RunInfo:
        """Reads a finished run's scene.json, with an error that says what is wrong with the folder.

        Raises:
            RunError: the folder is missing or unfinished (a ``.partial`` twin exists), has no scene.json, a
                damaged one, or lacks its weights (a LoRA run its adapters file, a full run model_index.json).
        """
        run = Path(run)
        if not run.is_dir():
            if partial_path(run).is_dir():
                raise RunError(f"{run} is not finished ({partial_path(run)} exists); resume it with extract --resume")
            raise RunError(f"run folder {run} does not exist")
        path = run / SCENE_FILE
        if not path.is_file():
            raise RunError(f"{run} is not a break-a-scene run folder (no {SCENE_FILE})")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RunError(f"{path} is damaged ({error.msg}); extract the scene again") from error
        if not isinstance(data, dict):
            raise RunError(f"{path} is damaged (not a JSON object); extract the scene again")
        # A full run holds the fine-tuned pipeline; a LoRA run (extract --lora-rank) only its adapters.
        lora = data.get("lora")
        weights = run / lora["weights"] if isinstance(lora, dict) and "weights" in lora else run / "model_index.json"
        if not weights.is_file():
            raise RunError(f"{run} is not a break-a-scene run folder: {weights.name} is missing (copied only in part?)")
        return cls.from_json(data, path)
