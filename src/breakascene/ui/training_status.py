"""What the page shows about the current (or last) training: its status, and that status as one line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainingStatus:
    """What the page shows about the current (or last) training. A copy is handed out, never the live one."""

    run: str = ""
    state: str = "idle"  # idle, loading, training, finished, cancelled, failed
    phase: str = ""
    step: int = 0  # steps done in this phase
    phase_steps: int = 0
    global_step: int = 0
    total_steps: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # the last ones reported
    elapsed: float = 0.0
    eta: float | None = None  # seconds left, from this process's speed
    message: str = ""
    attention_dir: str = ""  # where the end-of-phase attention maps of this run appear
    first_step: int | None = None  # global step this process started from (resume), for the speed

    @property
    def active(self) -> bool:
        return self.state in ("loading", "training")

    @property
    def fraction(self) -> float:
        if self.state == "finished":
            return 1.0
        return self.global_step / self.total_steps if self.total_steps else 0.0


def eta_seconds(elapsed: float, steps_here: int, remaining: int) -> float | None:
    """Seconds left at this process's average speed; None before the first step."""
    if steps_here <= 0:
        return None
    return elapsed / steps_here * remaining


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(status: TrainingStatus) -> str:
    """One line for the page: ``phase2 · step 3/3 · 6/6 steps · 100 % · rec 0.0123 attention 0.456 · ETA 0:00``."""
    if status.state == "idle":
        return "no training yet"
    percent = int(round(100 * status.fraction))
    parts = [f"{status.run}: {status.state}"]
    if status.phase:
        parts.append(f"{status.phase} step {status.step}/{status.phase_steps}")
    parts.append(f"{status.global_step}/{status.total_steps} steps")
    parts.append(f"{percent} %")
    if status.losses:
        parts.append("losses " + ", ".join(f"{k} {v:.4g}" for k, v in status.losses.items()))
    if status.active:
        parts.append(f"ETA {format_duration(status.eta)}")
    else:
        parts.append(f"took {format_duration(status.elapsed)}")
    line = " · ".join(parts)
    return f"{line} — {status.message}" if status.message else line
