"""``break-a-scene bench``: what one training step costs, for several configurations measured in one process.

Every configuration builds its model afresh (by default the full-size Stable Diffusion 2.1-base architecture
with random weights: it costs exactly what the real model costs, and nothing is downloaded), then runs a few
steps of phase 1 and of phase 2 through the library's own :meth:`Trainer.run_phase` loop. It reports the
median seconds per step (after warm-up steps), the peak memory of each phase, and the projected time of a
full default run (400 + 400 steps). Ratios are each configuration over the first one, so numbers taken on a
noisy machine are still comparable.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` (reset before each phase); on the CPU, the
process's peak resident set (``VmHWM``, reset before each phase through ``/proc/self/clear_refs``), weights
included.

Configurations (``--compare``; join with ``+``, e.g. ``lora+bf16``), each on top of the command's own flags:

* ``default``: the flags as given (no flags: the paper's settings, fp32).
* ``explicit-everywhere``: the authors' research code's attention handling, reproduced for measurement
  only in :mod:`.research_attention`: every attention layer computes explicit softmax probabilities and every map with <= 32x32 queries is
  kept with its graph (their ``AttentionStore``), and the VAE encodes the image every step.
* ``research-defaults``: ``explicit-everywhere`` plus the research code's default run (``--preset official``:
  prior preservation, so batch 2, and AdamW).
* ``official``: ours with ``--preset official``: ``research-defaults``' work with the library's code.
* ``prior-unpruned``: prior preservation's class row runs, and its prompt is encoded, in every step of every phase
  (``Trainer.prune_class_branch = False``, as the research code does), e.g. ``official+prior-unpruned``.
* ``checkpointing``, ``bf16``, ``fp16``, ``lora`` (rank 4), ``lora16`` (rank 16, FLUX's default), ``lora-te`` (rank 4, text encoder too),
  ``8bit-adam``, ``compile``, ``frozen-text-encoder``, ``low-vram``, ``nf4`` (with a LoRA one, e.g. ``lora16+nf4``):
  one option each.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.metadata
import os
import platform
import resource
import statistics
import contextlib
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from ..config import ExtractConfig, PhaseConfig
from ..errors import BreakASceneError, ConfigError
from .models import build_components, is_random_model, random_model_family

OPTIONS = {
    "default": {},
    "explicit-everywhere": {},
    "research-defaults": {},
    "checkpointing": {"gradient_checkpointing": True},
    "bf16": {"mixed_precision": "bf16"},
    "fp16": {"mixed_precision": "fp16"},
    "lora": {"lora_rank": 4},
    "lora16": {"lora_rank": 16},  # FLUX.1's phase 2 unless told otherwise
    "nf4": {"quantize_base": "nf4"},  # with a LoRA configuration: the denoiser frozen in 4 bits (CUDA)
    "lora-te": {"lora_rank": 4, "lora_text_encoder": True},
    "8bit-adam": {"use_8bit_adam": True},
    "optim-in-backward": {"optimizer_in_backward": True},
    "compile": {"compile": True},
    "frozen-text-encoder": {"train_text_encoder": False},
    "low-vram": {"low_vram": True},
    "official": {},
    "prior-unpruned": {},
}
RESEARCH = ("explicit-everywhere", "research-defaults")
OFFICIAL = ("research-defaults", "official")
GIB = 1024**3


class Configuration(NamedTuple):
    """What a ``--compare`` name sets up (:func:`parse_configuration`)."""
    overrides: dict  # ExtractConfig fields
    research: str | None  # the research baseline it runs, or None: the library's trainer
    preset: str  # "paper" or "official"
    prune_class_branch: bool = True  # Trainer.prune_class_branch


def parse_configuration(name: str) -> Configuration:
    """``"lora+bf16"`` -> its :class:`Configuration`.

    Raises:
        ConfigError: an unknown name.
    """
    overrides, research, preset = {}, None, "paper"
    for part in name.split("+"):
        if part not in OPTIONS:
            raise ConfigError(f"--compare {name}: unknown configuration {part!r}; choose from {', '.join(OPTIONS)}")
        overrides.update(OPTIONS[part])
        research = part if part in RESEARCH else research
        preset = "official" if part in OFFICIAL else preset
    return Configuration(overrides, research, preset, "prior-unpruned" not in name.split("+"))


# ----------------------------------------------------------------------------------------------------------
# Memory


class PeakMemory:
    """Peak memory of a region: CUDA allocator peak, or the process's resident-set high-water mark on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _malloc_trim()  # hand freed heap back to the OS so the next region starts from what is really live
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.method = "peak RSS of the whole process (could not reset it between phases)"

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        return _proc_status_kib("VmHWM", fallback=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 / GIB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_status_kib(field: str, fallback: int) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return fallback


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------------------
# One configuration


def measure(name: str, base: dict, *, model: str, device: torch.device, resolution: int, steps: int, warmup: int,
            phases: list[int], profile: bool = False, progress=print) -> dict:
    """Runs ``warmup + steps`` steps of each phase in ``phases`` for configuration ``name``; returns its numbers.

    On CUDA it also counts the implicit host-device synchronisations inside the loop (PyTorch's sync debug
    mode); with ``profile`` it keeps a table of the ops that took the most time.
    """
    from ..examples import make_shapes_scene
    from ..handles import make_handles
    from ..scene import load_scene
    from ..training.memory import with_low_vram
    from ..training.preflight import resolve_device
    from .measured import MeasuredTrainer
    from .research_attention import ExplicitEverywhereTrainer

    overrides, research, preset, prune_class_branch = parse_configuration(name)
    given = with_low_vram({**base, **overrides, "model": model, "resolution": resolution, "device": str(device)},
                          family=random_model_family(model))
    config = ExtractConfig.from_preset(preset, **given)
    resolve_device(config)  # the same checks as extract: fp16 on CPU, 8-bit Adam without CUDA, ...
    image, masks, _ = make_shapes_scene(resolution)
    scene = load_scene(image, masks, resolution)
    memory = PeakMemory(device)
    memory.reset()
    started = time.perf_counter()
    components = build_components(model)
    if config.quantize_base:  # diffusers quantizes while loading only: a saved copy comes back in NF4
        from ..models.quantization import quantized_copy

        components.unet = quantized_copy(components.unet)
    trainer_class = ExplicitEverywhereTrainer if research else MeasuredTrainer
    trainer = trainer_class(scene, config, components, make_handles(scene.num_concepts), device)
    trainer.prune_class_branch = prune_class_branch and trainer.prune_class_branch  # the research code never does
    # One class image costs per step what the research code's 100 do (one is drawn each step).
    class_images = torch.rand(1, 3, resolution, resolution) if config.prior_preservation else None
    trainer.setup(class_images)
    result = {"name": name, "ok": True, "config": {k: getattr(config, k) for k in sorted(set(given) - {"model", "resolution", "device"})
                                                if hasattr(config, k)},
              "preset": preset, "prior_preservation": config.prior_preservation,
              "prune_class_branch": trainer.prune_class_branch,
              "setup_s": time.perf_counter() - started, "memory": memory.method, "phases": {}}
    for phase in phases:
        phase_config = PhaseConfig(f"phase{phase}", warmup + steps, config.phase2_lr if phase == 2 else config.phase1_lr,
                                   trains=config.phase2_trains if phase == 2 else "handles")
        progress(f"[bench] {name}: {phase_config.name}, {warmup} warm-up + {steps} steps ...")
        numbers = _measure_phase(trainer, phase - 1, phase_config, memory, warmup=warmup, profile=profile)
        result["phases"][phase_config.name] = numbers
        progress(f"[bench]   {numbers['median_s_per_step']:.3f} s/step, peak {numbers['peak_gb']:.2f} GB")
    steps_of = {"phase1": config.phase1_steps, "phase2": config.phase2_steps}
    if len(result["phases"]) == 2:
        result["projected_full_run_s"] = sum(steps_of[k] * v["median_s_per_step"] for k, v in result["phases"].items())
    del trainer, components
    gc.collect()
    return result


def _measure_phase(trainer, index: int, phase: PhaseConfig, memory: PeakMemory, *, warmup: int, profile: bool) -> dict:
    """Times ``phase.steps`` steps of one phase through ``Trainer.run_phase``; the first ``warmup`` are not counted."""
    device = trainer.device
    marks: list[float] = []
    cpu_marks: list[float] = []  # process CPU seconds: less disturbed than wall time by other jobs on a CPU
    profiler = _profiler(device, warmup, phase.steps - warmup) if profile else contextlib.nullcontext()

    def on_step(_progress) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # per-step wall time needs the GPU done; the library never syncs here
        marks.append(time.perf_counter())
        cpu_marks.append(_cpu_seconds())
        if profile:
            profiler.step()

    trainer.start_measuring()
    memory.reset()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    with tempfile.TemporaryDirectory() as folder, _count_syncs(device) as syncs, profiler as prof:
        trainer.run_phase(
            index, phase, start_step=0, global_offset=0,
            # (laid out as a run folder: the training log goes beside the checkpoint, inside the temporary one)
            checkpoint_folder=Path(folder) / "checkpoint", optimizer_state=None, callback=on_step, bar=None,
            started=time.time(),
        )
    times = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    measured = times[warmup:]
    cpu_times = [b - a for a, b in zip([c0] + cpu_marks[:-1], cpu_marks)][warmup:]
    trained = trainer.trainable_parameters(phase.trains).values()  # run_phase froze them again; only counted
    trainable = sum(p.numel() for p in trained)
    for p in trained:
        p.requires_grad_(False)
    numbers = {
        "median_s_per_step": statistics.median(measured),
        "step_s": measured,
        "cpu_s_per_step": statistics.median(cpu_times),  # all threads together; the wall clock's share of it
        "load_average": os.getloadavg()[0],  # other processes slow the wall clock: see it here
        "warmup_s": times[:warmup],
        "peak_gb": memory.peak_gb(),
        "trainable_params": trainable,
        "losses_finite": bool(torch.isfinite(torch.stack(trainer.measured_losses)).all()),
        "research_maps_kept": len(getattr(trainer, "research_maps", [])),
        "batch_rows": trainer.measured_rows,  # per step, warm-up included: 2 with prior preservation's class row
        "implicit_syncs": syncs[0] if device.type == "cuda" else None,
    }
    if profile:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        numbers["profile"] = prof.key_averages().table(sort_by=sort, row_limit=15)
    return numbers


@contextlib.contextmanager
def _count_syncs(device: torch.device):
    """Counts implicit GPU synchronisations (``.item()``, ``nonzero``, ...) in the block: yields a 1-list."""
    count = [0]
    if device.type != "cuda":
        yield count
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode("default")
    count[0] = sum("synchroniz" in str(w.message) for w in caught)


def _profiler(device: torch.device, warmup: int, steps: int):
    """torch.profiler over the measured steps only: warm-up steps (optimiser state, compilation) are skipped."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1))


# ----------------------------------------------------------------------------------------------------------
# The report


def compare(names: list[str], base: dict, *, model: str, device: torch.device, resolution: int, steps: int,
            warmup: int, phases: list[int], profile: bool = False, progress=print) -> dict:
    """Measures each configuration in turn and adds ratios over the first. A configuration that cannot run
    here (8-bit Adam without CUDA, out of memory) is reported as skipped with the reason."""
    results = []
    for name in names:
        try:
            results.append(measure(name, base, model=model, device=device, resolution=resolution, steps=steps,
                                   warmup=warmup, phases=phases, profile=profile, progress=progress))
        except BreakASceneError as error:
            results.append({"name": name, "ok": False, "error": str(error)})
        except torch.OutOfMemoryError:
            results.append({"name": name, "ok": False, "error": "out of memory"})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if not results[-1]["ok"]:
            progress(f"[bench] {name}: skipped ({results[-1]['error']})")
    reference = results[0]
    for r in results:
        r["ratio"] = {}
        if not (r["ok"] and reference["ok"]):
            continue
        for phase, numbers in r["phases"].items():
            ref = reference["phases"][phase]
            r["ratio"][phase] = {
                "s_per_step": numbers["median_s_per_step"] / ref["median_s_per_step"],
                "peak": numbers["peak_gb"] / ref["peak_gb"],
            }
    return {
        "machine": machine_info(device),
        "model": model + (" (random weights)" if is_random_model(model) else ""),
        "resolution": resolution,
        "steps": steps,
        "warmup": warmup,
        "phases": [f"phase{p}" for p in phases],
        "results": results,
        "reference": reference["name"],
    }


def machine_info(device: torch.device) -> dict:
    info = {"device": str(device), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "torch_threads": torch.get_num_threads(), "cores": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
    else:
        info["cpu"] = platform.processor() or _cpu_model()
    for name in ("torch", "diffusers", "transformers", "peft", "bitsandbytes"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def format_report(report: dict) -> str:
    """A side-by-side table: per configuration, s/step and peak per phase, projected run, ratios to the first."""
    phases = report["phases"]
    header = ["configuration"]
    for phase in phases:
        header += [f"{phase} s/step", f"{phase} peak GB"]
    header += ["full run (400+400)"] if len(phases) == 2 else []
    header += [f"{phase} time/mem vs {report['reference']}" for phase in phases]
    rows = []
    for r in report["results"]:
        if not r["ok"]:
            rows.append([r["name"], f"skipped: {r['error']}"])
            continue
        row = [r["name"]]
        for phase in phases:
            numbers = r["phases"][phase]
            row += [f"{numbers['median_s_per_step']:.3f}", f"{numbers['peak_gb']:.2f}"]
        if "projected_full_run_s" in r:
            row.append(_duration(r["projected_full_run_s"]))
        for phase in phases:
            ratio = r["ratio"].get(phase)
            row.append(f"{ratio['s_per_step']:.2f} / {ratio['peak']:.2f}" if ratio else "-")
        rows.append(row)
    measured = [header] + [row for row in rows if len(row) == len(header)]
    widths = [max(len(row[i]) for row in measured) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in rows:  # a skipped configuration is its name and the reason
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    machine = report["machine"]
    where = machine.get("gpu") or machine.get("cpu")
    lines.append(f"{report['model']}, {report['resolution']} px, median of {report['steps']} steps after "
                 f"{report['warmup']} warm-up; {where}; memory: {report['results'][0].get('memory', '-')}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
