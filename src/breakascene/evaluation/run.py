"""``eval run``: train every scene with one method, then generate the prompt set; sharded and resumable.

Results of one method and one set of settings live in ``<out>/<method>-<hash>/``, where ``hash`` is
:func:`settings_hash` of everything that changes what is trained or generated (method, the resolved
``ExtractConfig``, generation settings with the sampling steps and guidance used, templates, batch size). Other
settings give another folder, so results of different configs never mix; the same settings find the same folder
and continue it::

    results/ours-1a2b3c4d5e/
      config.json                   method, hash, settings (with the sampling steps and guidance used), the
                                    resolved ExtractConfig
      coco-000000000139/
        scene.json                  classes, handles, the scene files' fingerprint
        run/                        the trained run folder (written by recipe.extract: appears only when finished)
        images/0003-seed0.png       prompt 3 of the scene's prompt set, image seed 0
        batches/0000.json           one record per image of batch 0 (written last: a batch is done iff it exists)

Work items are (scene) for training, then (scene, batch of prompts) for generation. Every process builds the same
full item list and takes its share with ``accelerate.PartialState().split_between_processes``; an item that is
already finished is skipped, so a re-run after an interruption (or on more GPUs) does only what is missing.

The method -> training function dispatch is :data:`methods.METHODS`: one :class:`methods.Method` per ``--method``
value. A method's ``train`` gets a :class:`methods.TrainRequest` and must leave a finished run folder at
``request.out`` that ``generation.generate`` can read (``recipe.extract`` does exactly that).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..config import ExtractConfig
from ..errors import RunError, SceneError
from ..run_folder import check_clear_of_inputs
from .common import config_hash, files_fingerprint, write_json_atomic
from .methods import METHODS, Method, TrainRequest, extract_config, get_method, training_loss
from .prompts import PromptItem, choose_templates, prompt_set
from .settings import EvalSettings, with_sampling_defaults

RESULTS_FORMAT = "break-a-scene eval results"
CONFIG_FILE = "config.json"
SCENE_FILE = "scene.json"


def settings_hash(settings: EvalSettings, config: ExtractConfig) -> tuple[str, dict]:
    """(hash, the dict it hashes): what decides the results, not where or how fast they are made."""
    generation = asdict(settings)
    for ignored in ("device",):  # where it runs does not change what is made
        generation.pop(ignored)
    keyed = {
        "method": settings.method,
        "extract_config": config.training_fingerprint(),
        "generation": generation,
        "templates": list(choose_templates(settings.templates)),
    }
    return config_hash(keyed), keyed


def results_folder(out: Path, settings: EvalSettings) -> Path:
    settings = with_sampling_defaults(settings)
    method = get_method(settings.method)
    digest, _ = settings_hash(settings, extract_config(settings, method))
    return Path(out) / f"{method.name}-{digest}"


# ----------------------------------------------------------------------------------------------------------
# scenes and items


@dataclass
class SceneEntry:
    """A scene folder written by ``eval build-scenes`` (or by hand: img.*, mask*.png, classes.json)."""

    name: str
    folder: Path
    classes: list[str]
    fingerprint: str


def list_scenes(scenes_dir: str | Path) -> list[SceneEntry]:
    """Every sub-folder of ``scenes_dir`` with a ``classes.json``, sorted by name; SceneError if there are none."""
    from .coco import SCENE_CLASSES_FILE

    scenes_dir = Path(scenes_dir)
    if not scenes_dir.is_dir():
        raise SceneError(f"--scenes {scenes_dir} is not a folder (make one with break-a-scene eval build-scenes)")
    entries = []
    for folder in sorted(p for p in scenes_dir.iterdir() if p.is_dir() and (p / SCENE_CLASSES_FILE).is_file()):
        try:
            classes = json.loads((folder / SCENE_CLASSES_FILE).read_text())["classes"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise SceneError(f"{folder / SCENE_CLASSES_FILE} is damaged ({error}); build the scenes again") from error
        masks = sorted(folder.glob("mask*.png"))
        if len(masks) != len(classes):
            raise SceneError(f"{folder} has {len(masks)} masks but {len(classes)} classes in {SCENE_CLASSES_FILE}")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        entries.append(SceneEntry(folder.name, folder, list(classes), files_fingerprint(files)))
    if not entries:
        raise SceneError(f"--scenes {scenes_dir} holds no scene folder (sub-folders with img.*, mask*.png, classes.json)")
    return entries


def concept_tokens(run: Path) -> list[str]:
    """The concept handles of a finished run, in concept order (``<bg>`` left out)."""
    from ..run_info import RunInfo

    return RunInfo.read(run).concept_tokens


def plan_batches(items: list[PromptItem], prompts_per_batch: int) -> list[list[PromptItem]]:
    """The prompt set cut into consecutive batches of ``prompts_per_batch`` prompts (the last may be shorter)."""
    return [items[i : i + prompts_per_batch] for i in range(0, len(items), prompts_per_batch)]


def image_name(item: PromptItem, seed: int) -> str:
    return f"{item.index:04d}-seed{seed}.png"


def batch_path(scene_folder: Path, batch: int) -> Path:
    return scene_folder / "batches" / f"{batch:04d}.json"


def is_trained(scene_folder: Path) -> bool:
    return (scene_folder / "run" / "scene.json").is_file() and (scene_folder / SCENE_FILE).is_file()


def is_generated(scene_folder: Path, batch: int) -> bool:
    path = batch_path(scene_folder, batch)
    if not path.is_file():
        return False
    records = json.loads(path.read_text())["images"]
    return all((scene_folder / r["file"]).is_file() for r in records)


# ----------------------------------------------------------------------------------------------------------
# the two stages


@dataclass
class RunSummary:
    folder: Path
    trained: int = 0  # scenes trained by this process
    trained_skipped: int = 0  # scenes of this process's share already trained
    batches: int = 0  # batches generated by this process
    batches_skipped: int = 0


def _check_config_file(folder: Path, digest: str, keyed: dict, settings: EvalSettings, config: ExtractConfig) -> None:
    path = folder / CONFIG_FILE
    if path.is_file():
        held = json.loads(path.read_text())
        if held.get("hash") != digest:
            raise RunError(f"{path} belongs to other settings (hash {held.get('hash')}); choose another --out")
        return
    write_json_atomic(
        path,
        {"format": RESULTS_FORMAT, "method": settings.method, "label": METHODS[settings.method].label,
         "hash": digest, "training_loss": training_loss(config), "keyed": keyed, "settings": asdict(settings),
         "extract_config": config.to_dict()},
    )


def train_scene(entry: SceneEntry, scene_folder: Path, method: Method, settings: EvalSettings,
                config: ExtractConfig, components_factory, progress: bool) -> bool:
    """Trains one scene unless it is trained already; returns whether it trained."""
    from ..scene import load_scene_folder

    if is_trained(scene_folder):
        held = json.loads((scene_folder / SCENE_FILE).read_text())
        if held["fingerprint"] != entry.fingerprint:
            raise RunError(
                f"scene {entry.name} changed since {scene_folder} was trained; use another --out or --overwrite"
            )
        return False
    scene = load_scene_folder(entry.folder, config.resolution)
    scene_folder.mkdir(parents=True, exist_ok=True)
    components = components_factory() if components_factory is not None else None
    request = TrainRequest(scene, config, scene_folder / "run", settings, components, progress)
    method.train(request)
    tokens = concept_tokens(scene_folder / "run")
    if len(tokens) != len(entry.classes):
        raise RunError(f"{method.name} learned {len(tokens)} concept handles for {len(entry.classes)} classes")
    write_json_atomic(
        scene_folder / SCENE_FILE,
        {"scene": entry.name, "source": str(entry.folder), "classes": entry.classes, "tokens": tokens,
         "fingerprint": entry.fingerprint},
    )
    return True


def generate_batch(scene_folder: Path, batch: int, items: list[PromptItem], settings: EvalSettings, pipeline) -> None:
    """Generates one batch into a hidden temporary folder, moves the images in place, then writes the record."""
    from ..inference.generation import generate

    tmp = scene_folder / f".batch-{batch:04d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    made = generate(
        scene_folder / "run", [item.prompt for item in items], num_images=settings.images_per_prompt,
        seed=settings.seed, steps=settings.steps, guidance=settings.guidance, out=tmp, pipeline=pipeline,
        progress=False, scheduler=settings.scheduler, grid=False,
    )
    images = scene_folder / "images"
    images.mkdir(exist_ok=True)
    records = []
    for k, image in enumerate(made):  # generate() returns prompt by prompt, image by image
        item = items[k // settings.images_per_prompt]
        name = image_name(item, image.seed)
        Path(image.path).replace(images / name)
        records.append({"file": f"images/{name}", "seed": image.seed, "prompt_index": item.index,
                        **{k2: v for k2, v in item.record().items() if k2 != "index"}})
    write_json_atomic(batch_path(scene_folder, batch), {"batch": batch, "images": records})
    shutil.rmtree(tmp, ignore_errors=True)


def run_eval(
    scenes_dir: str | Path,
    out: str | Path,
    settings: EvalSettings,
    *,
    overwrite: bool = False,
    progress: bool = True,
    components_factory: Callable[[], object] | None = None,
    state=None,
) -> RunSummary:
    """Trains every scene with ``settings.method`` and generates its prompt set (module docstring).

    Args:
        scenes_dir: the folder ``eval build-scenes`` wrote.
        out: the results folder; this run's files go to ``out/<method>-<hash>/``.
        overwrite: delete that method-and-hash folder first (otherwise it is continued).
        components_factory: returns a fresh base model per scene (tests); None: ``settings.model`` is loaded.
        state: an ``accelerate.PartialState`` (default: a new one); one process per GPU with ``accelerate launch``.

    Raises:
        ConfigError: unknown or unavailable method, bad numbers. SceneError: no scenes. RunError: a scene
            changed under finished results.
    """
    settings.validate()
    settings = with_sampling_defaults(settings)  # the numbers used go into the hash and config.json
    method = get_method(settings.method)
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    if settings.device is None and state.num_processes > 1:
        settings = EvalSettings(**{**asdict(settings), "device": str(state.device)})
    config = extract_config(settings, method)
    check_clear_of_inputs(out, [("scenes folder", scenes_dir)])
    scenes = list_scenes(scenes_dir)
    digest, keyed = settings_hash(settings, config)
    folder = Path(out) / f"{method.name}-{digest}"
    summary = RunSummary(folder)

    if state.is_main_process:
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _check_config_file(folder, digest, keyed, settings, config)
    state.wait_for_everyone()

    # Stage 1: one item per scene. Every process splits the same full list and skips what is done.
    with state.split_between_processes(scenes) as mine:
        for entry in mine:
            if train_scene(entry, folder / entry.name, method, settings, config, components_factory, progress):
                summary.trained += 1
            else:
                summary.trained_skipped += 1
    state.wait_for_everyone()

    # Stage 2: one item per (scene, batch of prompts).
    templates = choose_templates(settings.templates)
    work = []
    for entry in scenes:
        scene_folder = folder / entry.name
        if not is_trained(scene_folder):
            raise RunError(f"{scene_folder} was not trained (did another process fail?); run the same command again")
        items = prompt_set(concept_tokens(scene_folder / "run"), entry.classes, templates)
        work += [(scene_folder, b, batch) for b, batch in enumerate(plan_batches(items, settings.prompts_per_batch))]
    with state.split_between_processes(work) as mine:
        pipeline, loaded = None, None
        for scene_folder, b, batch in mine:
            if is_generated(scene_folder, b):
                summary.batches_skipped += 1
                continue
            if loaded != scene_folder:  # consecutive items mostly share a scene: load its pipeline once
                from ..inference.pipeline import load_pipeline

                pipeline, loaded = load_pipeline(scene_folder / "run", settings.device)[0], scene_folder
            generate_batch(scene_folder, b, batch, settings, pipeline)
            summary.batches += 1
            if progress:
                print(f"[{state.process_index}] {scene_folder.name} batch {b}: {len(batch)} prompts", file=sys.stderr)
    state.wait_for_everyone()
    return summary
