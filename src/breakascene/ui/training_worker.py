"""Training in a worker thread: :class:`TrainingWorker` runs one ``extract`` at a time, publishes a
:class:`~breakascene.ui.training_status.TrainingStatus` after every step, and stops at the next step when cancelled."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import RunError
from .training_status import TrainingStatus, eta_seconds


class Cancelled(Exception):
    """Raised inside extract's progress callback to stop the run at the end of a step."""


class Busy(RunError):
    """A training is already running; the app trains one at a time."""


class TrainingWorker:
    """Runs one :func:`breakascene.training.recipe.extract` at a time in a background thread.

    ``start`` refuses (:class:`Busy`) while a training runs; ``cancel`` makes the progress callback raise
    :class:`Cancelled` after the current step, so ``extract`` stops cleanly and, if the run has reached a
    checkpoint, leaves ``OUT.partial`` resumable. ``status`` returns a snapshot, safe to read from any thread.
    """

    def __init__(self, extract_fn: Callable | None = None):
        self._extract = extract_fn  # for tests; default: breakascene.training.recipe.extract, imported when first used
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._status = TrainingStatus()
        self._thread: threading.Thread | None = None

    def status(self) -> TrainingStatus:
        with self._lock:
            return dataclasses.replace(self._status, losses=dict(self._status.losses))

    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self, scene, config, out: Path, *, resume: bool = False, overwrite: bool = False,
              on_finished: Callable[[], None] | None = None) -> None:
        """Starts training ``scene`` with ``config`` into ``out`` in a new thread and returns at once.

        Raises:
            Busy: a training is running.
        """
        out = Path(out)
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                s = self._status
                raise Busy(
                    f"busy: the run {s.run!r} is training (step {s.global_step}/{s.total_steps}); one training "
                    "runs at a time, so wait for it to finish or cancel it"
                )
            self._cancel.clear()
            self._status = TrainingStatus(
                run=out.name, state="loading", total_steps=config.total_steps, message="loading the model",
                attention_dir=str(Path(str(out) + ".partial") / "attention"),
            )
            self._thread = threading.Thread(
                target=self._run, args=(scene, config, out, resume, overwrite, on_finished),
                name=f"extract-{out.name}", daemon=True,
            )
            self._thread.start()

    def cancel(self) -> bool:
        """Asks the running training to stop after its current step; False if none runs."""
        if not self.busy():
            return False
        self._cancel.set()
        with self._lock:
            self._status.message = "cancelling after this step"
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the training thread (tests, shutdown); True if none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy()

    # -- the thread -------------------------------------------------------------------------------------
    def _callback(self, progress) -> None:
        with self._lock:
            s = self._status
            if s.first_step is None:
                s.first_step = progress.global_step - 1
            s.state, s.message = "training", ("cancelling after this step" if self._cancel.is_set() else "")
            s.phase, s.step, s.phase_steps = progress.phase, progress.step, progress.phase_steps
            s.global_step, s.total_steps, s.elapsed = progress.global_step, progress.total_steps, progress.elapsed
            if progress.losses:
                s.losses = dict(progress.losses)
            s.eta = eta_seconds(progress.elapsed, progress.global_step - s.first_step, s.total_steps - s.global_step)
        if self._cancel.is_set():
            raise Cancelled()

    def _run(self, scene, config, out: Path, resume: bool, overwrite: bool, on_finished) -> None:
        from ..errors import BreakASceneError

        extract = self._extract
        if extract is None:
            from ..training.recipe import extract
        started = time.time()
        state, message = "finished", f"saved to {out}"
        try:
            extract(scene, config, out, overwrite=overwrite, resume=resume, callback=self._callback, progress=False)
            if on_finished is not None:
                on_finished()
        except Cancelled:
            state, message = "cancelled", cancel_message(out)
        except BreakASceneError as error:
            state, message = "failed", str(error)
        except Exception as error:  # noqa: BLE001 - the page shows one line; the server log has the traceback
            import traceback

            from ..failures import describe_failure

            traceback.print_exc()
            state, message = "failed", describe_failure(error, resumable=True, traceback_hint="")[0]
        with self._lock:
            s = self._status
            s.state, s.message, s.eta = state, message, None
            s.elapsed = s.elapsed or time.time() - started
            if state == "finished":
                s.global_step = s.total_steps
                s.attention_dir = str(out / "attention")


def cancel_message(out: Path) -> str:
    """What a cancel left behind: the last checkpoint (resumable) or nothing."""
    from ..run_folder import CHECKPOINT_DIR, partial_path

    state_file = partial_path(out) / CHECKPOINT_DIR / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        return (f"cancelled; the checkpoint at step {state.get('step')} of phase {state.get('phase_index', 0) + 1} "
                "is kept: resume it from 'Interrupted runs'")
    return "cancelled before the first checkpoint, so nothing was kept (set 'checkpoint every' to keep one)"
