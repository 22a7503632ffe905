"""The run folder: where an extraction writes, and how it is made atomically.

A run trains inside ``<out>.partial/`` (checkpoints included) and, only once everything is written, that
folder is renamed to ``<out>``. So ``<out>`` exists only for a finished run, and an interrupted one leaves
a ``.partial`` folder that ``--resume`` continues. A finished folder is a diffusers pipeline folder plus:

    handles.safetensors     the learned handle vectors, (K, dim) under "embeddings", tokens in the metadata
    scene.json              base model, resolution, handles, config, seed, versions, steps, attention scores
    scene/                  image.png and one <name>.png mask per handle, as used for training
    attention/              phase1.png, phase2.png: each handle's map next to its mask, end of each phase
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from .errors import RunError

SCENE_FILE = "scene.json"
HANDLES_FILE = "handles.safetensors"
CHECKPOINT_DIR = "checkpoint"


def partial_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def prepare_output(out: Path, *, overwrite: bool, resume: bool) -> Path:
    """Checks the output location before any work; returns the ``.partial`` folder to train in.

    Raises:
        RunError: ``out`` exists without --overwrite; --resume with nothing to resume; a stale partial run
            without --resume or --overwrite.
    """
    out = Path(out)
    partial = partial_path(out)
    if out.exists() and not overwrite and not resume:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    if resume:
        if not (partial / CHECKPOINT_DIR / "state.json").is_file():
            raise RunError(
                f"nothing to resume: {partial} holds no checkpoint (did the run use --checkpoint-every N?)"
            )
        return partial
    if partial.exists():
        if not overwrite:
            raise RunError(
                f"{partial} holds an interrupted run; pass --resume to continue it or --overwrite to start over"
            )
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def finalize(partial: Path, out: Path) -> None:
    """Drops the checkpoint and moves ``partial`` to ``out``, replacing an old ``out`` only at the last moment."""
    partial, out = Path(partial), Path(out)
    shutil.rmtree(partial / CHECKPOINT_DIR, ignore_errors=True)
    old = None
    if out.exists():
        old = out.with_name(out.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    partial.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def written_atomically(out: Path):
    """Yields a fresh ``<out>.partial`` folder to write into; when the block ends without an error it replaces
    ``out`` (:func:`finalize`), and on any error it is removed, so ``out`` is never half-written."""
    out = Path(out)
    partial = partial_path(out)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finalize(partial, out)


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_scene_json(run: Path) -> dict:
    """Reads a finished run's ``scene.json``, with an error that says what is wrong with the folder."""
    run = Path(run)
    if not run.is_dir():
        if partial_path(run).is_dir():
            raise RunError(f"{run} is not finished ({partial_path(run)} exists); resume it with extract --resume")
        raise RunError(f"run folder {run} does not exist")
    path = run / SCENE_FILE
    if not path.is_file():
        raise RunError(f"{run} is not a break-a-scene run folder (no {SCENE_FILE})")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is damaged ({error.msg}); extract the scene again") from error
    # A full run holds the fine-tuned pipeline; a LoRA run (extract --lora-rank) only its adapters.
    weights = run / info["lora"]["weights"] if info.get("lora") else run / "model_index.json"
    if not weights.is_file():
        raise RunError(f"{run} is not a break-a-scene run folder: {weights.name} is missing (copied only in part?)")
    return info
