"""CPU cost of one Break-A-Scene training step: ours vs the research code's "explicit attention everywhere".

Measures the median seconds per training step and the peak resident memory of phase 1 (handles only) and
phase 2 (handles + UNet + text encoder, fp32 Adam) on the full-size Stable Diffusion 2.1-base architecture
with RANDOM weights (built from configs, nothing is downloaded; a random model costs exactly what the real
one costs), fp32, on the CPU. Two configurations are compared in one invocation:

* ``ours``: :class:`breakascene.recipe.Trainer` as is: the scene's latents are cached once, explicit
  attention probabilities only in the 16x16 cross-attention layers, PyTorch SDPA everywhere else.
* ``explicit-everywhere``: the authors' research code's approach, reproduced here (not in the library):
  every UNet attention processor (self and cross, mid block included) computes explicit probabilities
  (diffusers ``AttnProcessor`` style, ``attn.get_attention_scores``) and keeps every map with <= 32*32
  queries, with gradients, in a list (their ``AttentionStore``); the VAE stays on the device and encodes
  the image every step. The losses are the same (the library's loss_step runs unchanged on top).
* ``research-defaults``: ``explicit-everywhere`` plus the rest of the research code's *default* run: prior
  preservation (a class image batched with the scene, so batch 2, and encoded by the VAE every step too)
  and AdamW -- ``--preset official``. This is what its users pay per step.

Every (configuration, phase) runs in its own subprocess (``--worker``) so that the peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that configuration alone; they run one at a time. The
parent watches the free memory and stops a worker before the machine runs out (``--min-free-gb``); a
worker that is stopped or dies is reported as "did not fit in N GB", not as a crash.

    PYTHONPATH=src python benchmarks/cpu_step.py                       # phases 1 and 2, both configs
    PYTHONPATH=src python benchmarks/cpu_step.py --gradient-checkpointing 2 --json results.json
    PYTHONPATH=src python benchmarks/cpu_step.py --tiny --steps 1 --resolution 256 --json   # self-test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("ours", "explicit-everywhere", "research-defaults")
BASELINES = CONFIGS[1:]
RESEARCH_STORE_MAX_QUERIES = 32 * 32  # the research code's AttentionStore keeps maps with <= 32*32 queries
GIB = 1024**3


# ----------------------------------------------------------------------------------------------------------
# Memory helpers (Linux /proc)


def _meminfo_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kib(pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------------------------------
# The worker: one configuration, one phase, in its own process


def build_full_size_components():
    """SD 2.1-base's architecture with random weights, fp32, on the CPU (nothing is downloaded)."""
    from breakascene.tiny import SD21_BASE_SHAPE, build_random_components

    return build_random_components(SD21_BASE_SHAPE)


def make_explicit_trainer_class():
    """The research code's approach as a :class:`Trainer` subclass (kept out of the library on purpose)."""
    import torch
    from diffusers.models.attention_processor import Attention

    from breakascene.attention import capture_layer_names
    from breakascene.recipe import Trainer, encode_images

    class ExplicitAttnProcessor:
        """diffusers' ``AttnProcessor`` (explicit softmax) that also keeps maps like the research code does.

        * every map with <= 32*32 queries (self and cross) goes, with its graph, into ``trainer.research_maps``;
        * the down/up cross-attention layers also feed the library's ``AttentionStore`` (head-averaged), so the
          library's ``loss_step`` computes exactly the same attention loss as in ``ours``.
        """

        def __init__(self, trainer, name: str, feeds_store: bool):
            self.trainer, self.name, self.feeds_store = trainer, name, feeds_store

        def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
            residual = hidden_states
            if attn.spatial_norm is not None:
                hidden_states = attn.spatial_norm(hidden_states, temb)
            input_ndim = hidden_states.ndim
            if input_ndim == 4:
                b, c, h, w = hidden_states.shape
                hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
            batch, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            query = attn.to_q(hidden_states)
            is_cross = encoder_hidden_states is not None
            if encoder_hidden_states is None:
                encoder_hidden_states = hidden_states
            elif attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
            query = attn.head_to_batch_dim(query)

            probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, Q, K), explicit softmax
            queries = probs.shape[1]
            trainer = self.trainer
            if trainer.research_recording and queries <= RESEARCH_STORE_MAX_QUERIES:
                trainer.research_maps.append(probs)  # kept with gradients, all heads, like their AttentionStore
            if self.feeds_store and is_cross and trainer.store.wants(queries):
                trainer.store.record(self.name, probs.reshape(batch, attn.heads, *probs.shape[1:]).mean(dim=1))

            hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
            if input_ndim == 4:
                hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
            if attn.residual_connection:
                hidden_states = hidden_states + residual
            return hidden_states / attn.rescale_output_factor

    class ExplicitEverywhereTrainer(Trainer):
        def setup(self, class_images=None):
            super().setup(class_images)
            unet = self.components.unet
            capture = set(capture_layer_names(unet))
            self.research_maps: list[torch.Tensor] = []
            self.research_recording = False
            unet.set_attn_processor({name: ExplicitAttnProcessor(self, name, name in capture) for name in unet.attn_processors})
            self.components.vae.to(self.device)  # the research code keeps the VAE on the device

        def loss_step(self):
            # The research code encodes the (possibly flipped) image every step: one VAE encoder pass at
            # batch 1, no gradients. The flipped copy is the flipped latent here (same cost, and the
            # library's loss_step picks which one to use).
            mean, std = encode_images(self.components.vae, self.scene.image[None])
            self.latent_mean = torch.cat([mean, mean.flip(-1)]).to(self.device)
            self.latent_std = torch.cat([std, std.flip(-1)]).to(self.device)
            if self.config.prior_preservation:  # the class image goes through the VAE every step as well
                self.class_mean, self.class_std = encode_images(self.components.vae, self.class_pixels)
            self.research_maps = []  # their store is reset between steps; kept maps live through backward
            self.research_recording = True  # off again before backward, so checkpoint recomputation adds none
            try:
                return super().loss_step()
            finally:
                self.research_recording = False

    return ExplicitEverywhereTrainer


def run_worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from breakascene.config import ExtractConfig
    from breakascene.examples import make_shapes_scene
    from breakascene.handles import make_handles
    from breakascene.models import Components
    from breakascene.recipe import Trainer
    from breakascene.scene import load_scene
    from breakascene.tiny import build_tiny_components

    started = time.perf_counter()
    image, masks, names = make_shapes_scene(args.resolution)
    scene = load_scene(image, masks, args.resolution)
    if args.tiny:
        parts = build_tiny_components(sample_size=args.resolution // 8)
    else:
        parts = build_full_size_components()
    components = Components(**parts)
    built = time.perf_counter()

    trains_model = args.phase == 2
    config = ExtractConfig.from_preset(
        "official" if args.config == "research-defaults" else "paper",
        model="builtin:tiny",  # not loaded: the components are passed in
        resolution=args.resolution,
        names=names,
        device="cpu",
        gradient_checkpointing=args.checkpointing,
    )
    handles = make_handles(scene.num_concepts, config.names, config.init_words, config.background)
    trainer_class = Trainer if args.config == "ours" else make_explicit_trainer_class()
    trainer = trainer_class(scene, config, components, handles, "cpu")
    # One class image is enough to cost what their 100 do per step (one is drawn each step).
    class_pixels = torch.rand(1, 3, args.resolution, args.resolution) if config.prior_preservation else None
    trainer.class_pixels = class_pixels
    trainer.setup(class_pixels)
    rss_after_setup = _rss_kib()

    name, _, lr, _ = config.phases[0 if args.phase == 1 else 1]
    step_ends: list[float] = []
    losses: list[float] = []

    cpu_ends: list[float] = []

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def on_step(progress) -> None:
        step_ends.append(time.perf_counter())
        cpu_ends.append(cpu_seconds())

    # Record the total loss without an extra sync inside the timed region: wrap loss_step.
    original_loss_step = trainer.loss_step

    def loss_step():
        terms = original_loss_step()
        losses.append(terms["total"])
        return terms

    trainer.loss_step = loss_step
    total = 1 + args.steps  # one warm-up step, not counted
    t0, c0 = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as folder:
        trainer.run_phase(
            args.phase - 1, name, total, lr, trains_model,
            start_step=0, global_offset=0, checkpoint_folder=Path(folder), optimizer_state=None,
            callback=on_step, bar=None, started=time.time(),
        )
    times = [b - a for a, b in zip([t0] + step_ends[:-1], step_ends)]
    cpu_times = [b - a for a, b in zip([c0] + cpu_ends[:-1], cpu_ends)]
    loss_values = [float(v.detach()) for v in losses]
    trainable = sum(p.numel() for p in trainer.trainable_parameters(trains_model).values())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "config": args.config,
        "phase": args.phase,
        "ok": True,
        "gradient_checkpointing": args.checkpointing,
        "warmup_s": times[0],
        "step_s": times[1:],
        "median_s_per_step": statistics.median(times[1:]),
        "cpu_s": cpu_times[1:],  # process CPU seconds (user + sys) per measured step: all threads together
        "median_cpu_s_per_step": statistics.median(cpu_times[1:]),
        "load_average": os.getloadavg(),  # other processes on the machine slow the wall clock
        "peak_rss_gb": peak_kib * 1024 / GIB,
        "rss_after_setup_gb": (rss_after_setup or 0) * 1024 / GIB,
        "build_s": built - started,
        "trainable_params": trainable,
        "losses_finite": all(v == v and abs(v) != float("inf") for v in loss_values),
        "research_maps_kept": len(getattr(trainer, "research_maps", [])),
    }


# ----------------------------------------------------------------------------------------------------------
# The parent: runs the workers one by one, watches memory, prints the table


def run_one(args, config: str, phase: int) -> dict:
    checkpointing = args.gradient_checkpointing is not None and (not args.gradient_checkpointing or phase in args.gradient_checkpointing)
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder, "result.json")
        command = [
            sys.executable, os.path.abspath(__file__), "--worker",
            "--config", config, "--phase", str(phase), "--steps", str(args.steps),
            "--resolution", str(args.resolution), "--threads", str(args.threads), "--result-file", str(result_file),
        ]
        if args.tiny:
            command.append("--tiny")
        if checkpointing:
            command.append("--checkpointing")
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        print(f"[cpu_step] {config} phase {phase}{' (gradient checkpointing)' if checkpointing else ''} ...", file=sys.stderr, flush=True)
        started = time.time()
        child = subprocess.Popen(command, env=env, stdout=sys.stderr, stderr=sys.stderr)
        stopped_for_memory = False
        max_rss_kib = 0
        while child.poll() is None:
            max_rss_kib = max(max_rss_kib, _rss_kib(child.pid) or 0)
            available = _meminfo_kib("MemAvailable")
            if available is not None and available * 1024 < args.min_free_gb * GIB:
                stopped_for_memory = True
                child.send_signal(signal.SIGKILL)
                child.wait()
                break
            time.sleep(0.25)
        wall = time.time() - started
        total_gb = (_meminfo_kib("MemTotal") or 0) * 1024 / GIB
        if child.returncode == 0 and result_file.is_file():
            result = json.loads(result_file.read_text())
            result["wall_s"] = wall
            print(f"[cpu_step]   {result['median_s_per_step']:.2f} s/step, peak RSS {result['peak_rss_gb']:.2f} GB ({wall:.0f} s)", file=sys.stderr, flush=True)
            return result
        if stopped_for_memory:
            why = f"stopped: free memory fell below {args.min_free_gb:g} GB at {max_rss_kib * 1024 / GIB:.1f} GB RSS"
        elif child.returncode is not None and child.returncode < 0:
            why = f"killed by signal {-child.returncode} at {max_rss_kib * 1024 / GIB:.1f} GB RSS (out of memory?)"
        else:
            why = f"exit code {child.returncode} at {max_rss_kib * 1024 / GIB:.1f} GB RSS (MemoryError?)"
        print(f"[cpu_step]   did not fit in {total_gb:.0f} GB: {why}", file=sys.stderr, flush=True)
        return {
            "config": config, "phase": phase, "ok": False, "gradient_checkpointing": checkpointing,
            "error": f"did not fit in {total_gb:.0f} GB ({why})", "max_rss_seen_gb": max_rss_kib * 1024 / GIB,
            "wall_s": wall,
        }


def machine_info() -> dict:
    import importlib.metadata

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round((_meminfo_kib("MemTotal") or 0) * 1024 / GIB, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for name in ("torch", "diffusers", "transformers"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def format_table(report: dict) -> str:
    configs = report["configs"]
    lines = [
        f"{'phase':<7} {'metric':<15} " + " ".join(f"{c:>22}" for c in configs)
        + "".join(f" {'ours/' + b:>24}" for b in BASELINES if b in configs),
    ]
    for phase in report["phases"]:
        key = f"phase{phase}"
        row = {c: report["results"][c][key] for c in configs}
        ratio = report["ratios"].get(key, {})
        for metric, field, unit in (
            ("s/step (median)", "median_s_per_step", "s"),
            ("CPU s/step", "median_cpu_s_per_step", "s"),
            ("peak RSS", "peak_rss_gb", "GB"),
        ):
            cells = []
            for c in configs:
                r = row[c]
                cells.append(f"{r[field]:.2f} {unit}" if r["ok"] and field in r else ("did not fit" if not r["ok"] else "-"))
            ratio_cells = []
            for b in BASELINES:
                if b in configs:
                    value = ratio.get(b, {}).get(field)
                    ratio_cells.append(f" {(f'{value:.2f}' if value is not None else '-'):>24}")
            lines.append(f"{key:<7} {metric:<15} " + " ".join(f"{x:>22}" for x in cells) + "".join(ratio_cells))
        notes = [f"{c}: {row[c]['error']}" for c in configs if not row[c]["ok"]]
        checkpointing = {row[c]["gradient_checkpointing"] for c in configs}
        if True in checkpointing:
            notes.append("gradient checkpointing on")
        for note in notes:
            lines.append(f"{'':<7} note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per (config, phase), after 1 warm-up step")
    parser.add_argument("--phases", type=int, nargs="+", choices=(1, 2), default=[1, 2])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument(
        "--gradient-checkpointing", type=int, nargs="*", default=None, metavar="PHASE",
        help="turn on gradient checkpointing (UNet and text encoder) for both configs; alone: in every phase, "
        "with phase numbers: only in those phases (e.g. --gradient-checkpointing 2)",
    )
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model instead of full size (fast self-test)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    parser.add_argument("--min-free-gb", type=float, default=1.0, help="stop a worker when free memory falls below this")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH, or to stdout without PATH (the table then goes to stderr)")
    # worker-only options
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--phase", type=int, choices=(1, 2), help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    if args.worker:
        result = run_worker(args)
        Path(args.result_file).write_text(json.dumps(result))
        return 0

    results: dict[str, dict] = {c: {} for c in args.configs}
    for phase in args.phases:
        for config in args.configs:  # one at a time: never two big workers at once
            results[config][f"phase{phase}"] = run_one(args, config, phase)
    # ratios[phase][baseline][metric] = ours / baseline
    ratios: dict[str, dict] = {}
    for phase in args.phases:
        key = f"phase{phase}"
        for baseline in BASELINES:
            if "ours" in results and baseline in results:
                a, b = results["ours"][key], results[baseline][key]
                if a["ok"] and b["ok"]:
                    ratios.setdefault(key, {})[baseline] = {
                        f: a[f] / b[f] for f in ("median_s_per_step", "median_cpu_s_per_step", "peak_rss_gb") if f in a and f in b
                    }
    report = {
        "machine": machine_info(),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
        "model": "tiny (built-in)" if args.tiny else "SD 2.1-base architecture, random weights, fp32",
        "resolution": args.resolution,
        "steps": args.steps,
        "phases": args.phases,
        "configs": args.configs,
        "results": results,
        "ratios": ratios,
        "targets": {"median_s_per_step": 1 / 3, "peak_rss_gb": 1 / 2},
    }
    table = format_table(report)
    if args.json == "-":
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
