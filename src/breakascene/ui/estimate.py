"""How long a run will take, from measured step times, as the line next to *Start*."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import markdown_text


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per training step of one model on one kind of device, at one resolution."""

    resolution: int  # px, the size the steps were measured at
    phase1: float  # s/step, handles only
    phase2: float  # s/step, handles + UNet + text encoder
    fixed: float | None  # s of a run outside its steps (build/load, VAE, attention maps, save); None: not measured
    measured: str  # what was measured where, for the page


# Measured step times, only on a CPU: no GPU was available to measure (there the page says so, no number).
#
# builtin:tiny at 128 px: measured 2026-12-01 on this project's 2-core machine (AMD EPYC, 23 GiB, no GPU;
# torch 2.13.0+cpu, diffusers 0.42.1) by running breakascene.training.recipe.extract on the shapes scene, 30 + 30 steps,
# checkpoint_every=0, timing each step from the Progress callback's `elapsed` (the first step of each phase left
# out), median of 29 steps per phase. With torch's default 2 threads (what the app uses) and the machine quiet:
# phase 1 0.036 s, 0.027 s, 0.036 s, 0.037 s; phase 2 0.056 s, 0.040 s, 0.058 s, 0.054 s (four runs); with 1
# thread 0.027-0.031 s and 0.041-0.046 s. The rest of a run (build the model, encode the scene, attention maps,
# save) took 0.41-0.53 s. With other jobs on the 2 cores, 2 threads were up to 10x slower (0.28-0.32 s/step).
# At 256 px the steps took 0.070 s / 0.098 s (1 thread), less than the 4x area scaling says: the estimate errs
# long for this model above 128 px.
#
# builtin:shapes at 64 px: measured 2026-12-02 the same way (its scaled settings, 30 + 30 steps, a world scene),
# two runs, machine quiet: phase 1 0.101 s, 0.100 s; phase 2 0.182 s, 0.150 s; the rest 0.63-0.76 s.
#
# SD 2.1-base architecture (865 M UNet; SD 1.x is the same size) at 512 px, fp32: docs/performance.md, measured
# 2026-11-26 on the same kind of 2-core machine with `break-a-scene bench --threads 2`: phase 1 14.26 s, phase 2
# 26.78 s (with gradient checkpointing and before the fused-Adam change; the app's phase 2 runs without
# checkpointing and with fused Adam, so this errs long too). Loading and saving 5 GB of weights: not measured.
CPU_STEP_TIMES = {
    "tiny": StepTimes(128, phase1=0.036, phase2=0.055, fixed=0.5, measured="builtin:tiny on a 2-core CPU"),
    "shapes": StepTimes(64, phase1=0.10, phase2=0.17, fixed=0.7, measured="builtin:shapes on a 2-core CPU"),
    "sd": StepTimes(512, phase1=14.3, phase2=26.8, fixed=None, measured="SD 2.1-base (fp32) on a 2-core CPU"),
}


def step_times(model: str, device: str) -> StepTimes | None:
    """The measured step times that fit ``model`` on ``device`` (``cpu``, ``cuda``, ``mps``); None where nothing
    was measured. Every model but the built-in ones is a full-size SD 1.x/2.x UNet, so it gets SD 2.1-base's."""
    from ..models.shapes import SHAPES_MODEL_ID
    from ..models.tiny import TINY_MODEL_ID

    if str(device).split(":")[0] != "cpu":
        return None
    builtin = {TINY_MODEL_ID: "tiny", SHAPES_MODEL_ID: "shapes"}
    return CPU_STEP_TIMES[builtin.get((model or "").strip(), "sd")]


def estimate_seconds(times: StepTimes, resolution: int, phase1_steps: int, phase2_steps: int) -> float:
    """A run's wall time from measured step times: steps x s/step, scaled by image area (pixels), plus the fixed
    part where it was measured. The step's work (convolutions, attention) grows with the number of pixels."""
    area = (int(resolution) / times.resolution) ** 2
    steps = int(phase1_steps) * times.phase1 + int(phase2_steps) * times.phase2
    return steps * area + (times.fixed or 0.0)


def rough_duration(seconds: float) -> str:
    """An estimate's duration without false precision: ``4 s``, ``12 min``, ``4.6 hours``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} hours"


def estimate_text(model: str, resolution, phase1_steps, phase2_steps, device: str, preset: str = "paper") -> str:
    """The line next to *Start*: how long the run will take, as Markdown; says when there is no measured basis.

    Args:
        model: the model box (``builtin:tiny`` or anything else, taken for a full-size SD model).
        resolution, phase1_steps, phase2_steps: the number boxes (None when cleared).
        device: where training will run (``cpu``, ``cuda``, ...; the server's default device).
        preset: ``official`` adds prior preservation, which was not measured.
    """
    try:
        resolution, phase1_steps, phase2_steps = int(resolution), int(phase1_steps), int(phase2_steps)
    except (TypeError, ValueError):
        return "*Estimated time:* set the resolution and the steps of both phases."
    if resolution <= 0 or phase1_steps < 0 or phase2_steps < 0:
        return "*Estimated time:* set the resolution and the steps of both phases."
    times = step_times(model, device)
    if times is None:
        return (f"*Estimated time:* none on {markdown_text(device)}: step times were only measured on a CPU. "
                "Once training runs, the progress line shows the ETA from its own speed.")
    seconds = estimate_seconds(times, resolution, phase1_steps, phase2_steps)
    scaled = f", scaled by area to {resolution} px" if resolution != times.resolution else ""
    text = (f"*Estimated time:* about **{rough_duration(seconds)}** for {phase1_steps} + {phase2_steps} steps (an "
            f"estimate from the step times of {markdown_text(times.measured)} at {times.resolution} px{scaled}).")
    if times.fixed is None:
        text += " Loading and saving the model come on top (not measured)."
    if preset == "official":
        text += (" The official preset's prior preservation (100 class images generated first, batches of 2) "
                 "makes it slower: not measured, not counted.")
    return text
