"""Small shared pieces of the evaluation suite: atomic JSON files, folder fingerprints, config hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data) -> None:
    """Writes ``data`` as JSON to ``path`` through a temporary sibling and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def config_hash(data: dict, length: int = 10) -> str:
    """A short, stable hash of a JSON-able dict (keys sorted): the same settings always give the same hash."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def files_fingerprint(paths: list[Path]) -> str:
    """sha256 over the names and bytes of ``paths`` (in the given order): changes when any file changes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]
