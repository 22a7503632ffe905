"""``break-a-scene bench``: s/step and peak memory of both phases, for several configurations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ExtractConfig
from ..errors import BreakASceneError
from .shared import MEMORY_FIELDS, common_options, memory_options


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    from ..bench.models import DEFAULT_BENCH_MODEL
    from ..bench.timing import OPTIONS

    p = subparsers.add_parser(
        "bench",
        parents=[common_options()],
        help="measure s/step and peak memory of both phases, for several configurations side by side",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure what a training step costs: median s/step and peak memory (CUDA allocator peak, or "
        "peak RSS on the CPU) of phase 1 and phase 2, and the projected time of a full 400 + 400-step run. By "
        f"default the model is {DEFAULT_BENCH_MODEL}: the full-size architecture with random weights (nothing is "
        "downloaded; it costs what the real model costs). --compare measures several configurations in one "
        "process, one after the other, and prints ratios over the first.\n\nexamples:\n"
        "  break-a-scene bench                                  # the paper's settings, on cuda if there is one\n"
        "  break-a-scene bench --compare explicit-everywhere default lora low-vram --mixed-precision bf16\n"
        "  break-a-scene bench --model builtin:tiny --resolution 128 --steps 1 --json   # a quick self-test",
    )
    p.add_argument("--model", default=DEFAULT_BENCH_MODEL, metavar="ID_OR_DIR",
                   help="a model family's full-size architecture with random weights (ModelFamily.random_models: "
                   "random:sd2.1-base, random:sd2.1, random:sdxl-base, random:flux-dev; random:flux-dev-<D>d<S>s[<T>t] is FLUX.1-dev's "
                   "width with D dual-stream, S single-stream blocks and T T5 layers), builtin:tiny, "
                   "or a real model like extract's "
                   f"--model (default: {DEFAULT_BENCH_MODEL})")
    p.add_argument("--compare", nargs="+", default=["default"], metavar="CONFIG",
                   help=f"configurations to measure, in order; join options with '+' (e.g. lora+bf16). Known: "
                   f"{', '.join(OPTIONS)} (default: default)")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--resolution", type=int, default=512, help="square training size in px (default: 512)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per phase (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and not counted (default: 1; use more with --compile)")
    p.add_argument("--phases", type=int, nargs="+", choices=(1, 2), default=[1, 2], help="which phases (default: 1 2)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on the CPU (default: PyTorch's choice)")
    p.add_argument("--profile", action="store_true", help="print the ops that took the most time in each phase (torch.profiler)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the report as JSON to PATH, or to stdout without PATH (the table then goes to stderr)")
    memory_options(p)
    p.set_defaults(func=run_bench)
    return p


def run_bench(args) -> int:
    import json

    import torch

    from ..bench.timing import compare, format_report, parse_configuration
    from ..training.preflight import resolve_device

    if args.steps < 1 or args.warmup < 0:
        raise BreakASceneError("--steps must be >= 1 and --warmup >= 0")
    for name in args.compare:
        parse_configuration(name)  # unknown names fail before anything is built
    if args.threads:
        torch.set_num_threads(args.threads)
    base = {name: getattr(args, name) for name in MEMORY_FIELDS if getattr(args, name) is not None}
    device = resolve_device(ExtractConfig(device=args.device))
    log = (lambda line: print(line, file=sys.stderr, flush=True))
    report = compare(args.compare, base, model=args.model, device=device, resolution=args.resolution,
                     steps=args.steps, warmup=args.warmup, phases=sorted(set(args.phases)), profile=args.profile,
                     progress=log)
    table = format_report(report)
    for result in report["results"]:
        for phase, numbers in result.get("phases", {}).items():
            if "profile" in numbers:
                log(f"[bench] {result['name']} {phase}: where the time goes\n{numbers['profile']}")
    if args.json == "-":
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0

