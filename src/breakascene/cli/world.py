"""``break-a-scene world``: the shapes world, where the method can be measured offline (docs/evaluation.md).

    break-a-scene world scenes --out scenes --num 8 --seed 0     benchmark scenes (img + masks + world.json)
    break-a-scene world train --out shapes-model                 train builtin:shapes from scratch (77 min on 2 CPU cores)
    break-a-scene world check                                    does the model know its world? (the judge's figures)
    break-a-scene world bench --out bench                        every method on the scenes, scored by the judge (Fig. 5)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import finite_float
from .shared import common_options


def add_world_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "world", parents=[common_options()], help="the shapes world: scenes, the builtin:shapes model, its check and the benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__.split("\n", 1)[1],
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="world_command", metavar="STEP")

    s = sub.add_parser("scenes", parents=[common_options()], help="write benchmark scenes in the folder layout extract reads",
                       description="Scenes of 64 px with objects that carry a texture builtin:shapes never saw (novel "
                       "concepts). Each folder: img.png, mask0.png ..., world.json (the ground truth).")
    s.add_argument("--out", required=True, metavar="DIR", help="the folder to write (appears only when complete)")
    s.add_argument("--num", type=int, default=8, help="number of scenes (default: 8)")
    s.add_argument("--seed", type=int, default=0, help="which scenes (default: 0)")
    s.add_argument("--objects", type=int, default=2, help="objects per scene, 1-3 (default: 2)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.set_defaults(func=run_scenes)

    add_train_parser(sub)

    c = sub.add_parser("check", parents=[common_options()], help="does the model know its world? the judge's figures",
                       description="Judges the judge on fresh scenes (drawn, and through the model's VAE), then "
                       "generates the held-out prompts (colour, shape and background never drawn together in training).")
    c.add_argument("--model", default=None, metavar="DIR", help="a pipeline folder (default: builtin:shapes)")
    c.add_argument("--images-per-prompt", type=int, default=8, help="(default: 8)")
    c.add_argument("--steps", type=int, default=25, help="sampling steps (default: 25)")
    c.add_argument("--guidance", type=finite_float, default=4.0, help="(default: 4)")
    c.add_argument("--seed", type=int, default=0, help="(default: 0)")
    c.add_argument("--judge-scenes", type=int, default=400, help="fresh scenes the judge is measured on (default: 400)")
    c.set_defaults(func=run_check)

    b = sub.add_parser("bench", parents=[common_options()], help="every method on the scenes, scored by the judge (Fig. 5)",
                       description="Trains ours, TI-m, DB-m, CD-m and the four ablations on each scene through extract "
                       "(builtin:shapes' scaled settings), generates every subset of the handles on the other "
                       "backgrounds, and writes OUT/report (summary.md, summary.csv, fig5.png). A re-run skips what is done.")
    b.add_argument("--out", required=True, metavar="DIR", help="the benchmark folder")
    b.add_argument("--scenes", metavar="DIR", help="scenes from world scenes (default: --num scenes written to OUT/scenes)")
    b.add_argument("--num", type=int, default=4, help="scenes to write when --scenes is not given (default: 4)")
    b.add_argument("--scene-seed", type=int, default=0, help="which scenes (default: 0)")
    b.add_argument("--methods", nargs="+", metavar="METHOD", help="default: all eight")
    b.add_argument("--model", metavar="DIR", help="a retrained world model's pipeline folder (default: builtin:shapes)")
    b.add_argument("--phase1-steps", type=int, help="(default: builtin:shapes' scaled settings)")
    b.add_argument("--phase2-steps", type=int)
    b.add_argument("--phase1-lr", type=finite_float)
    b.add_argument("--phase2-lr", type=finite_float)
    b.add_argument("--images-per-prompt", type=int, default=4, help="(default: 4)")
    b.add_argument("--steps", type=int, default=25, help="sampling steps (default: 25)")
    b.add_argument("--guidance", type=finite_float, default=4.0, help="classifier-free guidance (default: 4)")
    b.add_argument("--seed", type=int, default=0, help="training seed; image i of a prompt uses seed+i (default: 0)")
    b.add_argument("--device", help="default: cuda if available, else cpu")
    b.add_argument("--overwrite", action="store_true", help="train and score everything again")
    b.add_argument("--rescore", action="store_true",
                   help="judge the saved pictures of finished runs again (after a change of the judge); "
                        "nothing finished is trained or generated again")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=run_bench)
    return p


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", parents=[common_options()], help="train builtin:shapes from scratch on the generator",
                       description="Trains the VAE, then the text encoder and UNet (then, with --one-object-steps, "
                       "both on one-object scenes), and writes a stock diffusers StableDiffusionPipeline folder to "
                       "OUT/pipeline. The defaults made the shipped weights. Checkpoints (OUT/checkpoint) every 500 "
                       "steps; --resume continues from the last one.")
    t.add_argument("--out", required=True, metavar="DIR", help="training folder (OUT/pipeline is the model)")
    t.add_argument("--seed", type=int, default=0, help="(default: 0, the shipped model's)")
    t.add_argument("--steps", type=int, help="UNet + text-encoder steps (default: 4000)")
    t.add_argument("--vae-steps", type=int, help="VAE steps (default: 1500)")
    t.add_argument("--batch", type=int, help="scenes per step (default: 16)")
    t.add_argument("--lr", type=finite_float, help="UNet + text-encoder peak learning rate (default: 1e-3)")
    t.add_argument("--one-object-steps", type=int, help="steps of an extra stage on one-object scenes (default: 0, "
                   "as the shipped model: docs/evaluation.md)")
    t.add_argument("--one-object-lr", type=finite_float, help="its peak learning rate (default: 3e-4)")
    t.add_argument("--init", metavar="PIPELINE", help="run only the one-object stage, from this pipeline folder "
                   "(OUT/pipeline or builtin:shapes)")
    t.add_argument("--object-weight", type=finite_float, help="loss weight of the pixels in and around the objects, "
                   "against 1 for the background (default: 1, the shipped model's; 5 draws better shapes and more "
                   "stray objects: docs/evaluation.md)")
    t.add_argument("--threads", type=int, help="CPU threads (default: 2)")
    t.add_argument("--workers", type=int, help="processes that draw the scenes (default: 0, the training process; "
                   "on a GPU use several, as one drawer cannot keep up)")
    t.add_argument("--device", help="cpu (default: what made the shipped weights) or cuda: a few minutes on a GPU")
    t.add_argument("--no-sample-grids", dest="sample_grids", action="store_false", default=None,
                   help="skip the grid of held-out prompts drawn at every checkpoint (about 2 %% of a CPU run)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start over in an existing OUT")
    t.set_defaults(func=run_train)


def run_scenes(args) -> int:
    from ..shapes_world import read_ground_truth
    from ..world.scenes import write_world_scenes

    folders = write_world_scenes(Path(args.out), args.num, args.seed, objects=args.objects, overwrite=args.overwrite)
    for folder in folders:
        print(f"{folder.name}: {read_ground_truth(folder).caption()}")
    print(f"{len(folders)} scenes written to {args.out}; next: break-a-scene extract {folders[0]} --model builtin:shapes --out runs/world")
    return 0


def run_train(args) -> int:
    import dataclasses

    from ..errors import ConfigError, RunError
    from ..models.loading import check_device, shapes_folder
    from ..models.shapes import SHAPES_MODEL_ID
    from ..world.checkpoint import has_checkpoint
    from ..world.train import WorldTrainConfig, train_world_model

    chosen = {"seed": args.seed, "steps": args.steps, "vae_steps": args.vae_steps, "batch": args.batch, "lr": args.lr,
              "threads": args.threads, "workers": args.workers, "sample_grids": args.sample_grids,
              "object_weight": args.object_weight, "one_object_steps": args.one_object_steps,
              "one_object_lr": args.one_object_lr}
    for name in ("steps", "vae_steps", "batch", "threads"):
        if chosen[name] is not None and chosen[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {chosen[name]}")
    for name in ("workers", "one_object_steps"):
        if chosen[name] is not None and chosen[name] < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {chosen[name]}")
    for name in ("lr", "object_weight", "one_object_lr"):
        if chosen[name] is not None and chosen[name] <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {chosen[name]}")
    chosen["device"] = str(check_device(args.device)) if args.device else None
    config = dataclasses.replace(WorldTrainConfig(), **{k: v for k, v in chosen.items() if v is not None})
    out = Path(args.out)
    init = None
    if args.init is not None:
        if args.resume:
            raise ConfigError("--resume continues from the checkpoint's own weights; drop --init")
        if not args.one_object_steps:
            raise ConfigError("--init runs only the one-object stage: give it steps, e.g. --one-object-steps 500")
        init = shapes_folder() if args.init == SHAPES_MODEL_ID else Path(args.init)
        if not init.is_dir():
            raise ConfigError(f"--init {args.init}: no such folder; pass a world train OUT/pipeline or "
                              f"{SHAPES_MODEL_ID}")
        if out.resolve() in (init.resolve(), *init.resolve().parents):
            raise ConfigError(f"--init {args.init} is inside --out {out}; choose another --out")
    if out.exists() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise RunError(f"{out} already exists; pass --resume to continue it, --overwrite to start over, or choose another --out")
    if args.resume and not has_checkpoint(out / "checkpoint"):
        raise RunError(f"{out} has no checkpoint to resume from; run without --resume")
    if args.overwrite and not args.resume and out.exists():
        import shutil

        shutil.rmtree(out)
    pipeline = train_world_model(out, config, init=init)
    print(f"use it: break-a-scene extract SCENE --model {pipeline} --out runs/x  (or copy it over builtin:shapes: docs/evaluation.md)")
    return 0


def run_check(args) -> int:
    import torch
    from diffusers import StableDiffusionPipeline

    from ..models.loading import shapes_folder
    from ..world.check import judge_accuracy, knowledge_check, two_object_check

    if args.judge_scenes < 1 or args.images_per_prompt < 1 or args.steps < 1:
        from ..errors import ConfigError

        raise ConfigError("--judge-scenes, --images-per-prompt and --steps must be >= 1")
    folder = Path(args.model) if args.model else shapes_folder()
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    print("judge on drawn scenes: " + judge_accuracy(args.judge_scenes).lines()[0])
    print("judge through the VAE: " + judge_accuracy(args.judge_scenes, vae=pipe.vae).lines()[0])
    result = knowledge_check(pipe, images_per_prompt=args.images_per_prompt, steps=args.steps,
                             guidance=args.guidance, seed=args.seed)
    print("model on held-out prompts: " + result.lines()[0])
    pairs = two_object_check(pipe, images_per_prompt=args.images_per_prompt, steps=args.steps,
                             guidance=args.guidance, seed=args.seed)
    print("model on two-object prompts: " + pairs.lines()[0])
    return 0


def run_bench(args) -> int:
    from ..world.bench import WorldBenchSettings, run_world_bench

    chosen = {"phase1_steps": args.phase1_steps, "phase2_steps": args.phase2_steps, "phase1_lr": args.phase1_lr,
              "phase2_lr": args.phase2_lr, "model": args.model, "methods": tuple(args.methods) if args.methods else None}
    settings = WorldBenchSettings(images_per_prompt=args.images_per_prompt, steps=args.steps, guidance=args.guidance,
                                  seed=args.seed, device=args.device, **{k: v for k, v in chosen.items() if v is not None})
    rows = run_world_bench(Path(args.out), settings, scenes=Path(args.scenes) if args.scenes else None, num=args.num,
                           scene_seed=args.scene_seed, overwrite=args.overwrite, rescore_done=args.rescore,
                           progress=not args.quiet)
    report = Path(args.out) / "report"
    sys.stdout.write((report / "summary.md").read_text())
    print(f"written: {report / 'summary.md'}, {report / 'summary.csv'}, {report / 'fig5.png'} ({len(rows)} methods)")
    return 0
