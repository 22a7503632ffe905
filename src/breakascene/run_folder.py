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
import os
import shutil
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, RunError

SCENE_FILE = "scene.json"
HANDLES_FILE = "handles.safetensors"
CHECKPOINT_DIR = "checkpoint"


def check_clear_of_inputs(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]], flag: str = "--out") -> None:
    """Refuses an output location that is, contains or lies inside one of the inputs, with or without --overwrite:
    replacing it would delete the user's photo, masks or model.

    Args:
        out: the folder (or file) a command will write or replace.
        inputs: ``(what, path)`` pairs, e.g. ``("photo", "scene/img.jpg")``; None paths are skipped.
    Raises:
        ConfigError: naming the input and how ``out`` overlaps it.
    """
    target = Path(os.path.realpath(out))
    for what, path in inputs:
        if path is None:
            continue
        source = Path(os.path.realpath(path))
        if target == source:
            relation = "is"
        elif source.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(source):
            relation = "lies inside"
        else:
            continue
        raise ConfigError(f"{flag} {out} {relation} the {what} {path}; write to a folder outside the inputs")


RUN_PARTS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler", "scene", CHECKPOINT_DIR)


def check_clear_of_run(out: str | Path, run: str | Path, flag: str = "--out", what: str = "run folder",
                       parts: Iterable[str] = RUN_PARTS) -> None:
    """For outputs that by default go inside an input folder (RUN/samples, RUN/edits, RESULTS/report): ``out``
    may lie inside ``run``, but must not be it, contain it, or lie inside its ``parts`` (the pipeline's and the
    scene's own folders, for a run).

    Raises:
        ConfigError: naming how ``out`` overlaps ``run``.
    """
    target, source = Path(os.path.realpath(out)), Path(os.path.realpath(run))
    if target == source or source.is_relative_to(target):
        relation = "is" if target == source else "contains"
        raise ConfigError(f"{flag} {out} {relation} the {what} {run}; write to a folder outside it or inside it")
    check_clear_of_inputs(out, [(f"{part}/ folder of the {what}", Path(run) / part) for part in parts], flag)


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def run_lock(out: str | Path):
    """Holds ``<out>.lock`` (an exclusive ``flock`` with the pid inside) while a run writes ``out``/``out.partial``.

    A second run on the same ``out`` is refused at once, even with --overwrite, which would delete the live run's
    ``.partial``. The operating system drops the lock when its process ends, however it ends (SIGKILL included),
    so a lock file left behind by a dead run is stale by construction and is simply taken over. Where ``fcntl``
    is missing (Windows) runs are not locked.

    Raises:
        RunError: "another run (pid N) is writing OUT".
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunError(f"another run (pid {holder}) is writing {out}; wait for it to finish or stop it") from None
        try:  # a run that just finished may have removed the file we opened: hold the one at the path
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


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


def follow_umask(folder: Path) -> None:
    """Gives every file under ``folder`` the permissions the user's umask asks for (``0o666 & ~umask``).

    safetensors writes its files owner-only (0600) whatever the umask, so a run's weights could not be read by
    the group or a shared model cache while the rest of the folder could.
    """
    umask = os.umask(0)
    os.umask(umask)  # reading the umask means setting it; put it straight back
    mode = 0o666 & ~umask
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)


def finalize(partial: Path, out: Path) -> None:
    """Drops the checkpoint and moves ``partial`` to ``out``, replacing an old ``out`` only at the last moment."""
    partial, out = Path(partial), Path(out)
    shutil.rmtree(partial / CHECKPOINT_DIR, ignore_errors=True)
    follow_umask(partial)
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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_COMPONENT_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")


def check_pipeline_folder(folder: str | Path, fix: str) -> None:
    """Checks that a diffusers pipeline folder holds every component its ``model_index.json`` names, each model
    with ``.safetensors`` weights, before diffusers reads it (its own errors name the wrong cause, and a pickle
    in place of the weights would be handed to ``torch.load``).

    Args:
        fix: what the user should do, e.g. "extract the scene again".
    Raises:
        RunError: naming the missing folder or file, or the pickle that stands where weights should be.
    """
    folder = Path(folder)
    index_file = folder / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except FileNotFoundError:
        raise RunError(f"{folder} is not a diffusers pipeline folder (no model_index.json); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{index_file} is damaged ({error}); {fix}") from None
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue  # metadata, or an absent optional component (safety_checker: [null, null])
        part = folder / name
        if not part.is_dir():
            raise RunError(f"{folder} is damaged: its {name}/ folder is missing; {fix}")
        if not any((part / f).is_file() for f in _COMPONENT_FILES) and not (part / "vocab.json").is_file():
            raise RunError(f"{folder} is damaged: {name}/ holds no config file; {fix}")
        if (part / "config.json").is_file() and not any(part.glob("*.safetensors")):
            pickles = sorted(p for p in part.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                raise RunError(f"{pickles[0]} is a pickle, which can run code when loaded; break-a-scene loads only "
                               f".safetensors weights: convert it, or {fix}")
            raise RunError(f"{folder} is damaged: {name}/ holds no .safetensors weights; {fix}")


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
