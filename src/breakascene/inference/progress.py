"""One progress bar over the denoising steps of several pipeline calls (generation and editing)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable


@contextlib.contextmanager
def own_bar_off(pipe):
    """The pipeline's own tqdm bar off for a while (:class:`StepProgress` counts the steps); restored after.

    diffusers keeps what ``set_progress_bar_config`` was given in ``pipe._progress_bar_config`` and has no
    getter, so that attribute is read and put back as it was.
    """
    saved = getattr(pipe, "_progress_bar_config", None)
    pipe.set_progress_bar_config(**{**(saved or {}), "disable": True})
    try:
        yield pipe
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


class StepProgress:
    """One tqdm bar (on stderr) over the denoising steps of several pipeline calls, or silence.

    :meth:`callback` gives each call a ``callback_on_step_end`` that advances the bar by the call's ``units``
    (its steps as the user asked for them, times the images it makes together) whatever its scheduler runs:
    PNDM runs steps + 1 timesteps, a second-order scheduler about twice as many, so the advance is scaled by
    ``pipeline.num_timesteps`` and the bar ends at exactly the sum of the calls' units.

    :meth:`say` replaces the description while something slow happens outside the steps (decoding, writing
    files); :meth:`resume` and :meth:`close` put the first one back. Disabled, it prints nothing at all.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.desc = desc
        # file=sys.stderr at call time (not tqdm's import-time default), so redirected stderr gets it too
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, file=sys.stderr, dynamic_ncols=True)

    def callback(self, units: int) -> Callable:
        """A ``callback_on_step_end`` for one pipeline call worth ``units`` on the bar."""
        done = [0]  # units of this call already on the bar

        def advance(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
            runs = getattr(pipeline, "num_timesteps", None) or units
            now = min(units, round((step + 1) * units / runs))
            self.bar.update(now - done[0])
            done[0] = now
            if step + 1 >= runs:
                self.say("decoding")  # the VAE runs after the last step, inside the same call
            return {}

        return advance

    def say(self, text: str) -> None:
        """Shows ``text`` as the bar's description (nothing when the bar is disabled)."""
        self.bar.set_description_str(text, refresh=True)

    def resume(self) -> None:
        """Back to the first description, for the next steps."""
        self.say(self.desc)

    def close(self) -> None:
        self.resume()
        self.bar.close()

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
