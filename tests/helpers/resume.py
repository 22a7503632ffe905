"""Interrupting a run at a step and resuming it, for the families' resume tests."""

from __future__ import annotations

import pytest

from breakascene.training.recipe import extract


class Killed(Exception):
    """What :func:`stop_at`'s callback raises: the run stops there as a killed process would, mid-run."""


def stop_at(step: int):
    """An ``extract`` progress callback that stops the run at global step ``step``."""
    def kill(progress):
        if progress.global_step == step:
            raise Killed
    return kill


def interrupt_then_resume(scene, cfg, out, make_components, step: int) -> list[int]:
    """``extract`` into ``out`` stopped at ``step``, then ``--resume``d (fresh components from ``make_components()``
    each time); returns the global steps the resumed run reported."""
    with pytest.raises(Killed):
        extract(scene, cfg, out, components=make_components(), progress=False, callback=stop_at(step))
    steps_seen = []
    extract(scene, cfg, out, components=make_components(), progress=False, resume=True,
            callback=lambda p: steps_seen.append(p.global_step))
    return steps_seen
