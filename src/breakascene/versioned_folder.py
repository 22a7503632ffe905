"""A folder whose files are replaced as one set: a process killed at any instant of a save leaves either the
previous set or the new one, complete. Checkpoints are written this way (``training/checkpoint.py``,
``world/checkpoint.py``).

    FOLDER/RECORD.json   a JSON record (a checkpoint's state), naming under "files" the folder of its files
    FOLDER/files-N/      the files of that version

A save writes the new version's files into a fresh ``files-N+1/`` and flushes them to the disk (fsync); then it
writes the record to ``RECORD.json.tmp``, flushes it, and renames it over ``RECORD.json``. That one
``os.replace`` is atomic, and it is the instant the new version replaces the old one: a reader that follows
``RECORD.json`` finds the old version, complete, before it and the new one, complete, after it. Only then are
the old version's files deleted. What a save cut short leaves behind (a half-written ``files-N+1/``, a ``.tmp``
record, an old version not yet deleted) is never referenced, and the next save deletes it before it writes, so
the disk never holds more than two versions.

A folder is complete exactly when ``RECORD.json`` exists: that is what "has a checkpoint" checks elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

FILES_KEY = "files"
FILES_PREFIX = "files-"


def read_record(folder: Path, record_name: str) -> dict | None:
    """The folder's record, or None when no version was completed.

    Raises:
        ValueError: the record is not JSON (json.JSONDecodeError) or not an object.
    """
    path = Path(folder) / record_name
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds no JSON object")
    return record


def files_folder(folder: Path, record: dict) -> Path:
    """Where the files of the version ``record`` describes are: ``folder/files-N``, or ``folder`` itself for a
    record written before versions existed (its files sat beside it)."""
    return Path(folder) / record.get(FILES_KEY, ".")


def write_version(folder: Path, record_name: str, record: dict, write_files: Callable[[Path], None]) -> None:
    """Replaces the folder's files and record with a new version, atomically (see the module's docstring).

    Args:
        folder: the versioned folder (made if missing). Everything in it belongs to it: what the new record does
            not reference is deleted once it is in place.
        record_name: the record's file name, e.g. ``state.json``.
        record: JSON-able; saved with the new files folder's name added under ``"files"``.
        write_files: writes the version's files into the empty folder it is given.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        current = read_record(folder, record_name)
    except ValueError:
        current = None  # unreadable, so nothing to keep: its files are deleted below like any leftover
    keep = {record_name} | ({files_folder(folder, current).name} if current is not None else set())
    if current is not None and FILES_KEY not in current:
        keep |= {p.name for p in folder.iterdir() if not p.name.startswith(FILES_PREFIX)}  # an unversioned one
    _remove_all_but(folder, keep)  # the leftovers of a save cut short, before this one needs the space

    numbers = [int(p.name[len(FILES_PREFIX):]) for p in folder.iterdir()
               if p.name.startswith(FILES_PREFIX) and p.name[len(FILES_PREFIX):].isdigit()]
    files = folder / f"{FILES_PREFIX}{max(numbers, default=0) + 1}"
    files.mkdir()
    write_files(files)
    for path in sorted(files.rglob("*")):
        if path.is_file():
            _flush_to_disk(path)
    _flush_to_disk(files)

    pending = folder / (record_name + ".tmp")
    with open(pending, "w") as handle:
        handle.write(json.dumps({**record, FILES_KEY: files.name}, indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pending, folder / record_name)  # the switch: before it the old version is read, after it the new
    _flush_to_disk(folder)
    _remove_all_but(folder, {record_name, files.name})


def _remove_all_but(folder: Path, keep: set[str]) -> None:
    for path in sorted(folder.iterdir()):
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _flush_to_disk(path: Path) -> None:
    """fsync for a file, or for a folder's entries (so that a power cut after a rename keeps the rename)."""
    if path.is_dir() and os.name != "posix":
        return  # os.open cannot open a folder on Windows
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
