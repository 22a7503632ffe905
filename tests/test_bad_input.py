"""A table of bad inputs over every command that writes: extract, masks, generate, variations, edit, export, eval.

Each row is a command line with one thing wrong. The contract for all of them: exit status 2, one ``error:``
line that names the problem, no traceback, nothing written where the command would write, and every input file
exactly as it was. The inputs are a scene folder, a finished tiny run and a tiny COCO set, made once per module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from breakascene.examples import write_shapes_example

from helpers.cli import assert_one_error, run_cli

TINY = ["--model", "builtin:tiny", "--resolution", "64", "--phase1-steps", "1", "--phase2-steps", "1", "--quiet"]
GEN = ["--steps", "1", "--height", "64", "--width", "64", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """{scene, photo, mask, run, coco, images, scenes, new}: the inputs, and ``new``, a place nothing exists yet."""
    from helpers.evaluation import make_coco

    root = tmp_path_factory.mktemp("world")
    scene = write_shapes_example(root / "scene")
    run = root / "run"
    code, _, err = run_cli(["extract", str(scene), *TINY, "--out", str(run)])
    assert code == 0, err
    annotations, images = make_coco(root / "coco")
    scenes = root / "scenes"
    code, _, err = run_cli(["eval", "build-scenes", "--coco-annotations", str(annotations), "--coco-images",
                            str(images), "--out", str(scenes), "--num", "1"])
    assert code == 0, err
    return {"root": root, "scene": scene, "photo": scene / "img.png", "mask": scene / "mask0.png", "run": run,
            "coco": annotations, "images": images, "scenes": scenes, "new": root / "new"}


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


S, P, M, R, N = "{scene}", "{photo}", "{mask}", "{run}", "{new}"

# (command line, fragments of the one error line). {name} is a path of the world fixture.
CASES = [
    # --- extract: numbers
    (["extract", S, *TINY, "--lambda-attn", "nan", "--out", N], ["--lambda-attn", "finite"]),
    (["extract", S, *TINY, "--phase1-lr", "inf", "--out", N], ["--phase1-lr", "finite"]),
    (["extract", S, *TINY, "--phase2-lr=-inf", "--out", N], ["--phase2-lr", "finite"]),
    (["extract", S, *TINY, "--lora-rank", "4", "--lora-alpha", "nan", "--out", N], ["--lora-alpha", "finite"]),
    (["extract", S, *TINY, "--detection-threshold", "NaN", "--out", N], ["--detection-threshold", "finite"]),
    (["extract", S, *TINY, "--phase1-lr", "fast", "--out", N], ["--phase1-lr", "not a number"]),
    (["extract", S, *TINY, "--no-union-sampling", "--subset-sampling", "all", "--out", N], ["not allowed with"]),
    (["extract", S, *TINY, "--attention-reduction", "max", "--out", N], ["--attention-reduction", "invalid choice"]),
    (["extract", S, *TINY, "--prediction-type", "x", "--out", N], ["--prediction-type", "invalid choice"]),
    # --- extract: a --vae that can be nothing, or the wrong model's (rejected before the base model loads)
    (["extract", S, *TINY, "--vae", N + "/vae.ckpt", "--out", N], ["--vae", "pickled"]),
    (["extract", S, *TINY, "--vae", "no-such-vae", "--out", N], ["--vae no-such-vae", "not a Hub id"]),
    (["extract", S, *TINY, "--vae", S, "--out", N], ["--vae", "without config.json"]),
    (["extract", S, *TINY, "--vae", M, "--out", N], ["--vae", "not .safetensors"]),
    (["extract", S, *TINY, "--overwrite", "--vae", S, "--out", S], ["--out", "is the scene folder"]),
    # --- extract: an --out that is, contains or lies inside an input (with --overwrite too)
    (["extract", S, *TINY, "--overwrite", "--out", S], ["--out", "is the scene folder"]),
    (["extract", S, *TINY, "--out", S + "/run"], ["lies inside the scene folder"]),
    (["extract", P, "--mask", M, *TINY, "--overwrite", "--out", S], ["contains the photo"]),
    (["extract", P, "--mask", M, *TINY, "--out", M], ["is the mask"]),
    (["extract", S, *TINY, "--class-images", S, "--prior-preservation", "--overwrite", "--out", S + "/.."],
     ["contains the scene folder"]),
    (["extract", S, "--model", R, "--resolution", "64", "--quiet", "--overwrite", "--out", R + "/unet"],
     ["lies inside the model"]),
    # --- masks
    (["masks", P, "--auto", "--min-area", "nan", "--out", N], ["--min-area", "finite"]),
    (["masks", P, "--text", "dog", "--detection-threshold", "inf", "--out", N], ["--detection-threshold", "finite"]),
    (["masks", P, "--box", "0,0,10,10", "--overwrite", "--out", S], ["contains the photo"]),
    # --- generate and variations
    (["generate", R, "a photo of <asset0>", *GEN, "--guidance", "nan", "--out", N], ["--guidance", "finite"]),
    (["generate", R, "a photo of <asset0>", *GEN, "--overwrite", "--out", R], ["is the run folder"]),
    (["generate", R, "a photo of <asset0>", *GEN, "--out", R + "/unet"], ["is the unet/ folder of the run"]),
    (["generate", R, "a photo of <asset0>", *GEN, "--out", R + "/.."], ["contains the run folder"]),
    (["variations", R, *GEN, "--guidance", "inf", "--out", N], ["--guidance", "finite"]),
    (["variations", R, *GEN, "--out", R + "/scene"], ["is the scene/ folder of the run"]),
    # --- edit
    (["edit", R, P, "--region", M, "a photo of <asset0>", "--blend-start", "nan", "--out", N], ["--blend-start", "finite"]),
    (["edit", R, P, "--region", M, "a photo of <asset0>", "--guidance=-inf", "--out", N], ["--guidance", "finite"]),
    (["edit", R, P, "--region", M, "a photo of <asset0>", "--overwrite", "--out", S], ["contains the photo"]),
    (["edit", R, P, "--region", M, "a photo of <asset0>", "--out", R], ["is the run folder"]),
    # --- export
    (["export", R, "--format", "diffusers", "--overwrite", "--out", R], ["is the run folder"]),
    (["export", R, "--overwrite", "--out", R + "/ti"], ["lies inside the run folder"]),
    (["export", R, "--overwrite", "--out", R + "/.."], ["contains the run folder"]),
    # --- eval
    (["eval", "build-scenes", "--coco-annotations", "{coco}", "--coco-images", "{images}", "--min-fraction", "nan",
      "--out", N], ["--min-fraction", "finite"]),
    (["eval", "build-scenes", "--coco-annotations", "{coco}", "--coco-images", "{images}", "--overwrite",
      "--out", "{images}"], ["is the COCO image folder"]),
    (["eval", "run", "--scenes", "{scenes}", "--method", "ours", *TINY, "--phase1-lr", "nan", "--out", N],
     ["--phase1-lr", "finite"]),
    (["eval", "run", "--scenes", "{scenes}", "--method", "ours", *TINY, "--guidance", "inf", "--out", N],
     ["--guidance", "finite"]),
    (["eval", "run", "--scenes", "{scenes}", "--method", "ours", *TINY, "--overwrite", "--out", "{scenes}"],
     ["is the scenes folder"]),
    # (without --resolution the model's native size is looked up first: a bad --model is still one line)
    (["eval", "run", "--scenes", "{scenes}", "--method", "ours", "--model", N + "/model", "--out", N],
     ["--model", "no such file or folder"]),
    (["eval", "report", R, "--overwrite", "--out", R + "/.."], ["contains the results folder"]),
]


@pytest.mark.parametrize("argv, fragments", CASES, ids=[f"{i:02d}-{a[0]}-{f[0]}" for i, (a, f) in enumerate(CASES)])
def test_bad_input_is_one_line_and_writes_nothing(world, argv, fragments):
    paths = {k: str(v) for k, v in world.items()}
    argv = [arg.format(**paths) for arg in argv]
    before = _digest(world["root"])
    code, _, err = run_cli(argv)
    assert_one_error(code, err, *fragments)
    assert _digest(world["root"]) == before  # nothing written, nothing replaced, no input touched
    assert not world["new"].exists()
