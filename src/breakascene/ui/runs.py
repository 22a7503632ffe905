"""The run folders the app knows: finished runs and interrupted runs it can resume (:func:`list_runs`), the
inputs saved for resuming (:func:`save_job`/:func:`load_job`), zips for download (:func:`zip_folder`)."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import RunError
from ..scene_folder import find_scene_files, write_scene_folder
from .mask_inputs import mask_image
from .names import sanitize_run_name

JOBS_DIR = ".ui-jobs"  # inside the runs folder: the inputs of runs started here, so they can be resumed
JOB_FILE = "job.json"


@dataclass
class RunList:
    finished: list[str]  # folders holding a finished run (scene.json and model_index.json)
    resumable: list[str]  # interrupted runs started from this app: NAME.partial with a checkpoint + saved inputs
    interrupted_elsewhere: list[str]  # NAME.partial with a checkpoint but no saved inputs (resume with the CLI)


def list_runs(runs_dir: Path) -> RunList:
    """The runs under ``runs_dir``, by name, sorted."""
    from ..run_folder import CHECKPOINT_DIR, SCENE_FILE

    runs_dir = Path(runs_dir)
    finished, resumable, elsewhere = [], [], []
    if runs_dir.is_dir():
        for path in sorted(runs_dir.iterdir()):
            if not path.is_dir():
                continue
            if path.name.endswith(".partial"):
                name = path.name[: -len(".partial")]
                if (path / CHECKPOINT_DIR / "state.json").is_file():
                    (resumable if (job_dir(runs_dir, name) / JOB_FILE).is_file() else elsewhere).append(name)
            elif (path / SCENE_FILE).is_file() and (path / "model_index.json").is_file():
                finished.append(path.name)
    return RunList(finished, resumable, elsewhere)


def finished_run(runs_dir: Path, name: str | None) -> Path:
    """The folder of the finished run called ``name`` under ``runs_dir``.

    Raises:
        RunError: no run chosen, or no finished run of that name.
    """
    if not name:
        raise RunError("choose a finished run first (train one in the Extract tab, or press refresh)")
    run = Path(runs_dir) / sanitize_run_name(name)
    if sanitize_run_name(name) != name or name not in list_runs(runs_dir).finished:
        raise RunError(f"{name!r} is not a finished run in {runs_dir}; press refresh and choose one")
    return run


def job_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / JOBS_DIR / name


def save_job(folder: Path, photo: Image.Image, masks: Sequence[np.ndarray], config: dict) -> None:
    """Saves what a run was started from (``img.png``, ``mask0.png``, ... and ``job.json``) under server-chosen
    names, so the run can be resumed from the app later with exactly the same scene and settings."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    write_scene_folder(folder, photo, [mask_image(mask) for mask in masks])
    (folder / JOB_FILE).write_text(json.dumps({"config": config, "masks": len(masks)}, indent=2) + "\n")


def load_job(folder: Path) -> tuple[Image.Image, list[Image.Image], dict]:
    """``(photo, mask images, config dict)`` saved by :func:`save_job`.

    Raises:
        RunError: the folder is missing or damaged.
    """
    folder = Path(folder)
    try:
        job = json.loads((folder / JOB_FILE).read_text())
        files = find_scene_files(folder)
        if len(files.masks) != int(job["masks"]):
            raise ValueError(f"{len(files.masks)} masks, {job['masks']} expected")
        photo, masks = Image.open(files.photo), [Image.open(path) for path in files.masks]
        for image in (photo, *masks):
            image.load()
        return photo, masks, dict(job["config"])
    except (OSError, ValueError, KeyError) as error:  # SceneError is a ValueError
        raise RunError(f"the saved inputs of this run ({folder}) are missing or damaged; start it again") from error


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zips ``folder`` into ``zip_path`` with the folder's name as the top entry; returns ``zip_path``.

    Weights (``.safetensors``, ``.bin``) are stored uncompressed: they do not compress and deflating gigabytes
    of them would only cost time. Resumable-checkpoint folders are left out.
    """
    folder, zip_path = Path(folder), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or "checkpoint" in relative.parts:
                continue
            stored = path.suffix in (".safetensors", ".bin")
            archive.write(path, Path(folder.name) / relative,
                          compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    return zip_path


def stamp() -> str:
    """A folder name for one button press: time to the second plus 4 random hex digits (never reused)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def attention_files(folder: str | Path) -> list[Path]:
    """The end-of-phase attention figures present in ``folder`` (``phase1.png``, ``phase2.png``), in order."""
    folder = Path(folder)
    return sorted(folder.glob("phase*.png")) if folder.is_dir() else []
