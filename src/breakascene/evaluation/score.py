"""``eval score``: prompt and identity similarity of every generated image, sharded and resumable.

Work items are the generation batches of every method folder under the results folder. The scores of a batch go
to ``<method folder>/scores-<hash>/<scene>/<batch>.json`` (one record per image), where ``hash`` covers the metric
models and the segmenter's threshold: scores made with other models never mix with these. A batch whose score
file exists is skipped. The arithmetic is in ``metrics.py``; the models in ``scorers.py``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, RunError
from ..scene import load_scene_folder
from .common import config_hash, write_json_atomic
from .metrics import MISSING_POLICIES, cosine, identity_score, masked_image
from .run import CONFIG_FILE, RESULTS_FORMAT, SCENE_FILE
from .scorers import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    DEFAULT_SEGMENTER_MODEL,
    label_ids_for_class,
    read_image,
    segments_mask,
)

SCORES_FILE = "score.json"


@dataclass
class ScoreSettings:
    clip_model: str = DEFAULT_CLIP_MODEL
    dino_model: str = DEFAULT_DINO_MODEL
    segmenter_model: str = DEFAULT_SEGMENTER_MODEL
    segmenter_threshold: float = 0.5  # post_process_panoptic_segmentation's score threshold
    missing: str = "black"  # a prompted class the segmenter does not find: "black" (literal) or "zero"
    device: str | None = None  # None: the process's accelerate device

    def validate(self) -> None:
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"--missing-concept must be one of {', '.join(MISSING_POLICIES)}, got {self.missing!r}")
        if not 0 <= self.segmenter_threshold <= 1:
            raise ConfigError(f"--segmenter-threshold must be in [0, 1], got {self.segmenter_threshold}")

    def key(self) -> str:
        data = asdict(self)
        data.pop("device")
        return config_hash(data)


@dataclass
class Scorers:
    """The three models (``scorers.ClipScorer``, ``DinoEmbedder``, ``PanopticSegmenter`` or stand-ins)."""

    clip: object
    dino: object
    segmenter: object

    @classmethod
    def load(cls, settings: ScoreSettings, device) -> Scorers:
        from .scorers import ClipScorer, DinoEmbedder, PanopticSegmenter

        return cls(
            ClipScorer(settings.clip_model, device),
            DinoEmbedder(settings.dino_model, device),
            PanopticSegmenter(settings.segmenter_model, device, settings.segmenter_threshold),
        )


def method_folders(results: str | Path) -> list[Path]:
    """The ``<method>-<hash>`` folders ``eval run`` wrote under ``results``, sorted; RunError if none."""
    results = Path(results)
    if not results.is_dir():
        raise RunError(f"results folder {results} does not exist (eval run --out writes it)")
    folders = []
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        path = folder / CONFIG_FILE
        if path.is_file() and json.loads(path.read_text()).get("format") == RESULTS_FORMAT:
            folders.append(folder)
    if not folders:
        raise RunError(f"{results} holds no eval run results (folders <method>-<hash>/ with {CONFIG_FILE})")
    return folders


def batch_files(folder: Path) -> list[Path]:
    """Every finished generation batch of a method folder: ``<scene>/batches/NNNN.json``, sorted."""
    return sorted(folder.glob("*/batches/*.json"))


def score_path(folder: Path, key: str, batch_file: Path) -> Path:
    scene = batch_file.parent.parent.name
    return folder / f"scores-{key}" / scene / batch_file.name


class SceneInputs:
    """A scene's input as trained (the run's ``scene/`` files), its classes and the DINO embeddings of its concepts."""

    def __init__(self, scene_folder: Path, scorers: Scorers):
        run = scene_folder / "run"
        info = json.loads((scene_folder / SCENE_FILE).read_text())
        run_info = json.loads((run / "scene.json").read_text())
        self.classes: list[str] = info["classes"]
        # The scene as trained (the run's scene/ copy), else the source scene loaded the same way training did.
        source = run / "scene" if (run / "scene").is_dir() else Path(info["source"])
        scene = load_scene_folder(source, run_info["resolution"])
        image, masks = scene.image, list(scene.masks)
        self.label_ids = [label_ids_for_class(c, scorers.segmenter.id2label) for c in self.classes]
        # The input masked to each concept (black elsewhere), embedded once per scene.
        self.embeddings = scorers.dino.embed([masked_image(image, m) for m in masks])  # (N, D)


def score_batch(batch_file: Path, inputs: SceneInputs, scorers: Scorers, missing: str = "black") -> list[dict]:
    """One record per image of a batch: prompt similarity, identity per concept of its prompt, found flags."""
    scene_folder = batch_file.parent.parent
    records = json.loads(batch_file.read_text())["images"]
    images = [read_image(scene_folder / r["file"]) for r in records]
    prompt = cosine(scorers.clip.image_embeddings(images), scorers.clip.text_embeddings([r["class_prompt"] for r in records]))
    out = []
    for record, image, prompt_similarity in zip(records, images, prompt.tolist()):
        segmentation, segments = scorers.segmenter.segment(image)
        concepts = list(record["subset"])
        class_masks = [segments_mask(segmentation, segments, inputs.label_ids[i]) for i in concepts]
        generated = scorers.dino.embed([masked_image(image, m) for m in class_masks])  # (k, D)
        found = [bool(m.sum() > 0) for m in class_masks]
        similarity = cosine(inputs.embeddings[concepts], generated).tolist()
        identity = [identity_score(v, f, missing) for v, f in zip(similarity, found)]
        out.append(
            {
                "scene": scene_folder.name,
                "file": record["file"],
                "prompt_index": record["prompt_index"],
                "template": record["template"],
                "subset": concepts,
                "class_prompt": record["class_prompt"],
                "prompt_similarity": prompt_similarity,
                "identity": {str(i): v for i, v in zip(concepts, identity)},
                "found": {str(i): f for i, f in zip(concepts, found)},
            }
        )
    return out


@dataclass
class ScoreSummary:
    scored: int = 0
    skipped: int = 0


def score_results(results: str | Path, settings: ScoreSettings, *, state=None, scorers: Scorers | None = None,
                  progress: bool = True) -> ScoreSummary:
    """Scores every finished generation batch under ``results`` that has no score file for these models yet."""
    settings.validate()
    folders = method_folders(results)
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    key = settings.key()
    device = torch.device(settings.device) if settings.device else state.device
    if state.is_main_process:
        for folder in folders:
            write_json_atomic(folder / f"scores-{key}" / SCORES_FILE, {"hash": key, **asdict(settings), "device": None})
    state.wait_for_everyone()
    work = [(folder, b) for folder in folders for b in batch_files(folder)]
    summary = ScoreSummary()
    with state.split_between_processes(work) as mine:
        inputs_cache: dict[Path, SceneInputs] = {}
        for folder, batch_file in mine:
            target = score_path(folder, key, batch_file)
            if target.is_file():
                summary.skipped += 1
                continue
            if scorers is None:
                scorers = Scorers.load(settings, device)
            scene_folder = batch_file.parent.parent
            if scene_folder not in inputs_cache:
                inputs_cache.clear()  # one scene's inputs at a time
                inputs_cache[scene_folder] = SceneInputs(scene_folder, scorers)
            records = score_batch(batch_file, inputs_cache[scene_folder], scorers, settings.missing)
            write_json_atomic(target, {"batch": batch_file.name, "images": records})
            summary.scored += 1
            if progress:
                print(f"[{state.process_index}] scored {folder.name}/{scene_folder.name}/{batch_file.name}", file=sys.stderr)
    state.wait_for_everyone()
    return summary
