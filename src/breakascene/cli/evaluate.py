"""``break-a-scene eval``: build-scenes, run, score, report (the paper's Sec. 4.1 protocol, docs/evaluation.md).

Only argparse is imported here; each command imports its module (pycocotools, accelerate, the metric models,
matplotlib) when it runs, so ``import breakascene.cli`` stays light.
"""

from __future__ import annotations

import argparse
import sys

from ..inference.options import SD_GUIDANCE, SD_STEPS
from .arguments import finite_float
from .shared import common_options

RUN_METHODS = (
    "ours", "ti-m", "db-m", "cd-m",
    "ours-no-phase1", "ours-no-masked-loss", "ours-no-attention-loss", "ours-no-union-sampling",
)


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``eval`` and its four sub-commands on the ``break-a-scene`` sub-parsers."""
    p = subparsers.add_parser(
        "eval", parents=[common_options()], help="the paper's quantitative evaluation: COCO scenes, run, score, report (Fig. 5)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The paper's quantitative evaluation (Sec. 4.1, App. B.2), one command per step:\n\n"
        "  break-a-scene eval build-scenes --coco-annotations instances_val2017.json --coco-images val2017 --out scenes\n"
        "  break-a-scene eval run --scenes scenes --method ours --out results      (accelerate launch ... for many GPUs)\n"
        "  break-a-scene eval score results\n"
        "  break-a-scene eval report results\n\nSee docs/evaluation.md.",
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="eval_command", metavar="STEP")
    add_build_scenes_parser(sub)
    add_run_parser(sub)
    add_score_parser(sub)
    add_report_parser(sub)
    return p


def add_build_scenes_parser(sub) -> None:
    b = sub.add_parser("build-scenes", parents=[common_options()], help="COCO images + instance masks -> scene folders",
                       description="Square crops of COCO images with >= 2 'thing' segments of distinct classes each "
                       "covering >= 15 %% of the crop (crowd annotations ignored; orange, banana, broccoli, carrot, zebra, "
                       "giraffe dropped); --num scenes chosen by --seed. Each scene: img.png, mask0.png, ..., classes.json.")
    b.add_argument("--coco-annotations", required=True, metavar="JSON", help="a COCO instances file, e.g. instances_val2017.json")
    b.add_argument("--coco-images", required=True, metavar="DIR", help="the folder of its images (e.g. val2017/)")
    b.add_argument("--out", required=True, metavar="DIR", help="the scenes folder to write (appears only when complete)")
    b.add_argument("--num", type=int, default=50, help="number of scenes (default: 50, the paper's)")
    b.add_argument("--seed", type=int, default=0, help="which eligible images are chosen (default: 0)")
    b.add_argument("--min-fraction", type=finite_float, default=0.15, help="smallest concept, fraction of the crop (default: 0.15)")
    b.add_argument("--max-concepts", type=int, default=4, help="at most this many concepts per scene, largest first (default: 4)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    b.set_defaults(func=run_build_scenes)


def add_run_parser(sub) -> None:
    r = sub.add_parser("run", parents=[common_options()], help="train every scene with one method and generate its prompt set",
                       description="Trains each scene with --method and generates the paper's 10 templates x every "
                       "non-empty subset of the scene's handles. Results go to OUT/<method>-<hash>/ (hash: the settings); "
                       "a re-run skips finished work. Shard over GPUs with `accelerate launch -m breakascene.cli eval run ...`.")
    r.add_argument("--scenes", required=True, metavar="DIR", help="the folder eval build-scenes wrote")
    r.add_argument("--method", required=True, metavar="{" + ",".join(RUN_METHODS) + "}",
                   help="the method to train (checked by the run, so a wrong name is a one-line error)")
    r.add_argument("--out", required=True, metavar="DIR", help="the results folder (shared by all methods)")
    r.add_argument("--model", help="base model: Hub id, diffusers folder, .safetensors or builtin:tiny (default: SD 2.1-base)")
    r.add_argument("--resolution", type=int, help="training and image size (default: the model's native size, as "
                   "for extract: 512 for SD 2.1-base, 1024 for SDXL)")
    r.add_argument("--phase1-steps", type=int, default=400, help="(default: 400; every method uses the same steps)")
    r.add_argument("--phase2-steps", type=int, default=400, help="(default: 400)")
    r.add_argument("--phase1-lr", type=finite_float, default=5e-4, help="(default: 5e-4; every method uses the same rates)")
    r.add_argument("--phase2-lr", type=finite_float, default=2e-6, help="(default: 2e-6)")
    r.add_argument("--seed", type=int, default=0, help="training seed; image i of a prompt uses seed+i (default: 0)")
    r.add_argument("--templates", type=int, help="use only the first N of the 10 templates (default: all)")
    r.add_argument("--images-per-prompt", type=int, default=1, help="(default: 1)")
    r.add_argument("--steps", type=int, help=f"sampling steps (default: the model family's, as for generate: "
                   f"{SD_STEPS} for SD and SDXL, the paper's protocol; 28 for FLUX.1-dev, 4 for schnell)")
    r.add_argument("--guidance", type=finite_float, help=f"classifier-free guidance (default: the model family's: "
                   f"{SD_GUIDANCE} for SD and SDXL; 3.5 for FLUX.1-dev, 0 for schnell)")
    r.add_argument("--scheduler", default="default", metavar="{default,ddim,dpm}", help="sampler (default: the run's)")
    r.add_argument("--prompts-per-batch", type=int, default=10, help="prompts per generation work item (default: 10)")
    r.add_argument("--collection-size", type=int, default=10, help="baselines: images in the Fig. 6 collection (default: 10)")
    r.add_argument("--device", help="default: the process's GPU under accelerate, else cuda/mps/cpu")
    r.add_argument("--mixed-precision", default="no", metavar="{no,fp16,bf16}", help="training precision (default: no)")
    r.add_argument("--overwrite", action="store_true", help="delete this method's results with these settings and start over")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=run_run)


def add_score_parser(sub) -> None:
    s = sub.add_parser("score", parents=[common_options()], help="prompt and identity similarity of every generated image",
                       description="CLIP prompt similarity and DINO identity similarity (generated image masked by a "
                       "COCO-panoptic segmenter) for every generated image under RESULTS; a re-run skips scored batches.")
    s.add_argument("results", help="the results folder of eval run")
    s.add_argument("--clip-model", default=None, metavar="ID_OR_DIR", help="default: openai/clip-vit-large-patch14")
    s.add_argument("--dino-model", default=None, metavar="ID_OR_DIR", help="default: facebook/dino-vitb16")
    s.add_argument("--segmenter-model", default=None, metavar="ID_OR_DIR",
                   help="a COCO-panoptic Mask2Former (default: facebook/mask2former-swin-base-coco-panoptic)")
    s.add_argument("--segmenter-threshold", type=finite_float, default=0.5, help="segment score threshold (default: 0.5)")
    s.add_argument("--missing-concept", default="black", metavar="{black,zero}",
                   help="identity of a prompted class the segmenter does not find: the all-black masked image's "
                   "similarity (black, the literal rule) or 0 (zero) (default: black)")
    s.add_argument("--device", help="default: the process's GPU under accelerate, else cpu")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=run_score)


def add_report_parser(sub) -> None:
    t = sub.add_parser("report", parents=[common_options()], help="summary.csv, summary.md and the Fig. 5 plot",
                       description="One row per method folder of RESULTS: means and bootstrap 95 %% intervals; the "
                       "Fig. 5 scatter with the Pareto front.")
    t.add_argument("results", help="the results folder of eval run and eval score")
    t.add_argument("--out", help="report folder (default: RESULTS/report)")
    t.add_argument("--scores", metavar="HASH", help="which scores-HASH to report when several model sets were scored")
    t.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    t.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    t.set_defaults(func=run_report)


def run_build_scenes(args) -> int:
    from ..evaluation.coco import build_scenes

    infos = build_scenes(args.coco_annotations, args.coco_images, args.out, num=args.num, seed=args.seed,
                         min_fraction=args.min_fraction, max_concepts=args.max_concepts, overwrite=args.overwrite)
    for info in infos:
        print(f"{info['scene']}: {', '.join(info['classes'])}")
    print(f"{len(infos)} scenes written to {args.out}; next: break-a-scene eval run --scenes {args.out} --method ours --out results")
    return 0


def run_run(args) -> int:
    from ..config import DEFAULT_MODEL
    from ..evaluation.run import run_eval
    from ..evaluation.settings import EvalSettings
    from ..models.loading import check_model_reference, default_resolution

    model = args.model or DEFAULT_MODEL
    if args.resolution is None:
        check_model_reference(model)
        args.resolution = default_resolution(model)
    settings = EvalSettings(
        method=args.method, model=model, resolution=args.resolution,
        phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps, phase1_lr=args.phase1_lr,
        phase2_lr=args.phase2_lr, seed=args.seed, templates=args.templates, images_per_prompt=args.images_per_prompt,
        steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, prompts_per_batch=args.prompts_per_batch,
        collection_size=args.collection_size, device=args.device, mixed_precision=args.mixed_precision,
    )
    summary = run_eval(args.scenes, args.out, settings, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{summary.folder}: trained {summary.trained} scenes ({summary.trained_skipped} already done), "
          f"generated {summary.batches} batches ({summary.batches_skipped} already done)")
    return 0


def run_score(args) -> int:
    from ..evaluation.score import ScoreSettings, score_results
    from ..evaluation.scorers import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, DEFAULT_SEGMENTER_MODEL

    settings = ScoreSettings(
        clip_model=args.clip_model or DEFAULT_CLIP_MODEL, dino_model=args.dino_model or DEFAULT_DINO_MODEL,
        segmenter_model=args.segmenter_model or DEFAULT_SEGMENTER_MODEL,
        segmenter_threshold=args.segmenter_threshold, missing=args.missing_concept, device=args.device,
    )
    summary = score_results(args.results, settings, progress=not args.quiet)
    print(f"scored {summary.scored} batches ({summary.skipped} already done) with models {settings.key()}")
    return 0


def run_report(args) -> int:
    from ..evaluation.report import write_report

    out = write_report(args.results, args.out, scores=args.scores, overwrite=args.overwrite,
                       num_resamples=args.bootstrap, seed=args.seed)
    sys.stdout.write((out / "summary.md").read_text())
    print(f"written: {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'fig5.png'}")
    return 0
