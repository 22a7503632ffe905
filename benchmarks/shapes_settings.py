"""Choosing builtin:shapes' scaled settings apart from the benchmark (issue 32).

Runs Ours through ``world bench``'s machinery on scenes of a seed the benchmark never uses (``world scenes --seed
TUNING_SEED``), once per candidate, and prints the bench's columns for each: identity, whole concept (colour,
shape and texture all right in a single-handle picture), leakage and own-mask attention.

    python benchmarks/shapes_settings.py --out /tmp/tuning                   # every candidate, 4 scenes each
    python benchmarks/shapes_settings.py --out /tmp/tuning --candidates scaled grid-16

A candidate is a set of ``ExtractConfig`` fields laid over ``SCALED_SETTINGS``; each has its own folder, and a
re-run skips what is done, as ``world bench`` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TUNING_SEED = 1000  # world bench uses --scene-seed 0 (its default); the study's scenes must not be the bench's
CANDIDATES = {
    # name: ExtractConfig fields over the scaled settings
    "scaled": {},
    "lambda-0.03": {"lambda_attn": 0.03},
    "grid-16": {"attention_divisor": 2},  # the loss's maps one level above the UNet's innermost, as in SD 2.1
    "phase2-lr-3e-4": {"phase2_lr": 3e-4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--num", type=int, default=4, help="scenes (default: 4)")
    parser.add_argument("--model", default=None, help="a pipeline folder (default: builtin:shapes)")
    args = parser.parse_args()

    from breakascene.world.bench import WorldBenchSettings, run_world_bench
    from breakascene.world.scenes import write_world_scenes

    scenes = args.out / "scenes"
    if not scenes.is_dir():
        write_world_scenes(scenes, args.num, TUNING_SEED)
    table = {}
    for name in args.candidates:
        settings = WorldBenchSettings(methods=("ours",), overrides=CANDIDATES[name],
                                      **({"model": args.model} if args.model else {}))
        row = run_world_bench(args.out / name, settings, scenes=scenes, progress=False)[0]
        table[name] = {k: row[k] for k in ("identity_similarity", "identity_low", "identity_high", "whole_concept",
                                           "leakage", "all_concepts", "attention_own_min", "attention_own_mean")}
        print(name, json.dumps(table[name]), flush=True)
    (args.out / "tuning.json").write_text(json.dumps({"seed": TUNING_SEED, "num": args.num, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
