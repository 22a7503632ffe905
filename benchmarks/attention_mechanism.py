"""Does the cross-attention loss tie each handle to its own mask? Measured over seeds on the tiny model.

Trains the built-in tiny random model on the shapes example (ball, box and <bg>) for each seed and setting, and
prints, per handle, the share of its 16x16-style attention mass inside its own mask and inside the best other
mask (``ExtractResult.attention_scores``). With the attention loss switched off the own-mask share is about the
mask's area (chance). This is the measurement behind ``tests/test_mechanism.py`` and docs/method.md.

    python benchmarks/attention_mechanism.py --seeds 0 1 2 3 4 --reduction sum mean
    python benchmarks/attention_mechanism.py --seeds 0 1 2 --lambda-attn 0.01 --phase2-lr 1e-3 --flip 0.5
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

from breakascene.config import ExtractConfig  # noqa: E402
from breakascene.examples import make_shapes_scene  # noqa: E402
from breakascene.models.loading import Components  # noqa: E402
from breakascene.training.recipe import extract  # noqa: E402
from breakascene.scene import load_scene  # noqa: E402
from breakascene.models.tiny import build_tiny_components  # noqa: E402


def measure(resolution: int, seed: int, **overrides) -> torch.Tensor:
    """The (N, N) handle-by-mask attention mass matrix at the end of the run."""
    image, masks, _ = make_shapes_scene(512)
    scene = load_scene(image, masks, resolution)
    config = ExtractConfig(model="builtin:tiny", resolution=resolution, names=["ball", "box"], seed=seed, **overrides)
    components = Components(**build_tiny_components(sample_size=resolution // 8))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = extract(scene, config, Path(tmp) / "run", components=components, progress=False)
    return torch.tensor(result.attention_scores[config.phases[-1][0]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--reduction", nargs="+", default=["sum"], choices=["sum", "mean"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--phase1-steps", type=int, default=0, help="0: phase 2 only (default)")
    p.add_argument("--phase2-steps", type=int, default=200)
    p.add_argument("--phase2-lr", type=float, default=3e-3)
    p.add_argument("--lambda-attn", type=float, nargs="+", default=[1.0])
    p.add_argument("--flip", type=float, default=0.0, help="flip probability (default: 0)")
    p.add_argument("--baseline", action="store_true", help="also run each seed without the attention loss")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()

    print(f"tiny model, {args.resolution} px, phase 1 {args.phase1_steps} steps, phase 2 {args.phase2_steps} steps "
          f"at {args.phase2_lr}, flip {args.flip}; cells: mass inside own mask / best other mask")
    print(f"{'setting':<28} {'seed':>4}  {'ball':>11}  {'box':>11}  {'bg':>11}  separated  s")
    settings = [(r, lam, True) for r, lam in itertools.product(args.reduction, args.lambda_attn)]
    if args.baseline:
        settings.append(("-", 0.0, False))
    for reduction, lam, attention in settings:
        wins = 0
        for seed in args.seeds:
            started = time.time()
            matrix = measure(
                args.resolution, seed, phase1=args.phase1_steps > 0, phase1_steps=args.phase1_steps,
                phase2_steps=args.phase2_steps, phase2_lr=args.phase2_lr, lambda_attn=lam,
                attention_reduction=reduction, attention_loss=attention, flip_probability=args.flip,
            )
            own = matrix.diagonal()
            other = (matrix - torch.diag(torch.full((len(own),), float("inf")))).amax(dim=1)
            separated = bool((own > other).all())
            wins += separated
            cells = "  ".join(f"{o:.2f} / {x:.2f}" for o, x in zip(own.tolist(), other.tolist()))
            name = f"{reduction} lambda {lam:g}" if attention else "no attention loss"
            print(f"{name:<28} {seed:>4}  {cells}  {'yes' if separated else 'no':>9}  {time.time() - started:.0f}",
                  flush=True)
        print(f"  -> {wins}/{len(args.seeds)} seeds separate all handles", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
