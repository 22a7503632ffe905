"""The models the web app keeps loaded between clicks: one generation pipeline (the last run used) and the
segmentation models (SAM, OWLv2), each with a lock so one request uses them at a time."""

from __future__ import annotations

import threading
from pathlib import Path


class PipelineCache:
    """One loaded pipeline (the last run used), and a lock so one generation or edit runs at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self._key = None
        self._pipe = None

    def get(self, run: Path):
        """The run's pipeline; call with :attr:`lock` held."""
        from ..inference.pipeline import load_pipeline

        key = (str(run.resolve()), (run / "scene.json").stat().st_mtime_ns)
        if key != self._key:
            self._pipe, self._key = None, None  # free the old one before loading the next
            self._pipe = load_pipeline(run)[0]
            self._key = key
        return self._pipe


class SegmenterCache:
    """The loaded SAM and OWLv2 models, kept for the next click, and a lock so one segmentation runs at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self._loaded: dict[tuple[str, str], object] = {}

    def get(self, kind: str, model: str):
        """A loaded SAM (``kind="sam"``) or OWLv2 (``"detector"``) model; call with :attr:`lock` held."""
        from ..segmentation.loading import load_detector, load_sam

        key = (kind, model)
        if key not in self._loaded:
            self._loaded[key] = (load_sam if kind == "sam" else load_detector)(model)
        return self._loaded[key]
