"""The training log: every step's losses, learning rate and phase in ``RUN/logs/train.jsonl``, and optionally a
TensorBoard or Weights & Biases run through accelerate's trackers.

Each step's loss terms stay on the device until :meth:`TrainingLog.flush`, which reads all of them back with one
synchronisation and writes one JSON line per step::

    {"phase": "phase1", "step": 3, "global_step": 3, "lr": 0.0005, "total": 0.41, "rec": 0.39, "attention": 1.8}

A term the settings ask for but the step did not compute is ``null``: with prior preservation, ``"prior": null``
in a phase that trains nothing the class prompt reaches (phase 1; :mod:`.class_branch`), where the term could not
change the weights and ``total`` leaves it out. Trackers and :func:`loss_terms` (the numbers the progress bar,
the progress callback and ``scene.json`` get) leave such a term out.

The trainer flushes every ``LOG_EVERY`` steps, before each checkpoint and at the end of each phase, so what the file
holds is always a prefix of the run, and a resumed run first cuts it back to its checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

LOG_FILE = "train.jsonl"
REPORT_TO = ("tensorboard", "wandb")


@dataclass
class _Pending:
    phase: str
    step: int
    global_step: int
    lr: float
    terms: dict[str, torch.Tensor]  # scalar tensors, detached, still on the device
    not_computed: tuple[str, ...]  # terms the settings ask for that this step did not compute


def check_tracker(report_to: str | None) -> None:
    """Fails before any model is loaded when ``report_to``'s package is not installed (nothing is imported)."""
    import importlib.util

    if report_to is not None and importlib.util.find_spec(report_to) is None:
        raise ConfigError(f"--report-to {report_to} needs {report_to}: pip install {report_to}")


def make_tracker(report_to: str, folder: Path, run_name: str):
    """accelerate's tracker for ``report_to``, started; a ConfigError naming the package to install if it is missing."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    try:
        if report_to == "tensorboard":
            tracker = TensorBoardTracker(run_name, folder / "tensorboard")
        elif report_to == "wandb":
            tracker = WandBTracker(run_name)
        else:
            raise ConfigError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
        tracker.start()
    except ImportError as error:
        package = "tensorboard" if report_to == "tensorboard" else "wandb"
        raise ConfigError(f"--report-to {report_to} needs {package}: pip install {package}") from error
    return tracker


def loss_terms(record: dict) -> dict[str, float]:
    """The loss terms a step computed, from one of :meth:`TrainingLog.flush`'s records (not the phase, steps,
    learning rate, nor a term logged as not computed)."""
    return {k: v for k, v in record.items() if k not in ("phase", "step", "global_step", "lr") and v is not None}


class TrainingLog:
    """Collects each step's loss terms and writes them (see the module docstring).

    Args:
        folder: ``RUN.partial/logs``; created.
        resume_from: the global step a resumed run continues from: lines after it (written by the interrupted
            run past its last checkpoint) are dropped. None: a new run, the file starts empty.
        tracker: an accelerate tracker (:func:`make_tracker`) that gets the same numbers, or None.
    """

    def __init__(self, folder: Path, resume_from: int | None = None, tracker=None):
        self.path = Path(folder) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_from is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut off by the kill: everything before it is whole
                if record.get("global_step", math.inf) > resume_from:
                    break
                kept.append(line + "\n")
        self.path.write_text("".join(kept))
        self.tracker = tracker
        self.pending: list[_Pending] = []

    def record(self, phase: str, step: int, global_step: int, lr: float, terms: dict[str, torch.Tensor],
               not_computed: tuple[str, ...] = ()) -> None:
        """Keeps one step's loss terms, scalar tensors (no device synchronisation); ``not_computed`` names terms
        the settings ask for that the step skipped (written as null)."""
        self.pending.append(_Pending(phase, step, global_step, lr, {k: v.detach() for k, v in terms.items()},
                                     tuple(not_computed)))

    def flush(self) -> list[dict]:
        """Reads the pending steps back (one synchronisation), appends them to the file and the tracker, and
        returns their records in order (empty if nothing was pending)."""
        if not self.pending:
            return []
        names = sorted({name for p in self.pending for name in p.terms})
        values = torch.stack([torch.stack([p.terms.get(n, torch.full_like(p.terms["total"], math.nan)).float()
                                           for n in names]) for p in self.pending]).tolist()
        records = []
        for p, row in zip(self.pending, values):
            losses = {n: v for n, v in zip(names, row) if n in p.terms}
            losses.update({n: None for n in p.not_computed})
            records.append({"phase": p.phase, "step": p.step, "global_step": p.global_step, "lr": p.lr, **losses})
        self.pending = []
        with self.path.open("a") as file:
            file.writelines(json.dumps(r, allow_nan=True) + "\n" for r in records)
        if self.tracker is not None:
            for r in records:
                self.tracker.log({"lr": r["lr"], **{f"loss/{k}": v for k, v in loss_terms(r).items()}},
                                 step=r["global_step"])
        return records

    def close(self) -> None:
        """Ends the tracker's run. Steps still pending are dropped: the trainer flushes every step it keeps."""
        self.pending = []
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
