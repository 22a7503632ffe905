"""Tests for the ``break-a-scene`` command line: one-line errors, exit codes, nothing half written.

The contract: every bad input ends with ONE line on stderr starting with ``error:``, exit status 2, no
traceback, and neither ``--out`` nor ``--out.partial`` left behind (an existing folder is left untouched).
All runs use the offline ``builtin:tiny`` model; one finished run is built per module and reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breakascene.cli import main
from breakascene.config import ExtractConfig
from breakascene.examples import write_shapes_example

from helpers.cli import TINY, assert_nothing_written, assert_one_error, lines, run_cli

FAST = ["--resolution", "128", "--phase1-steps", "1", "--phase2-steps", "1", "--quiet"]
GEN = ["--steps", "2", "--height", "128", "--width", "128", "--quiet"]


# ------------------------------------------------------------------------------------------
# helpers and shared fixtures


def _mask(path: Path, inside: np.ndarray) -> Path:
    Image.fromarray((inside * 255).astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture(scope="module")
def finished_run(scene_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    code, _, err = run_cli(
        ["extract", str(scene_dir), *TINY, "--resolution", "128", "--phase1-steps", "2", "--phase2-steps", "2",
         "--out", str(run), "--quiet"]
    )
    assert code == 0, err
    return run


@pytest.fixture(scope="module")
def strips_dir(tmp_path_factory) -> Path:
    """Five non-overlapping vertical strips whose union is the whole 128 x 128 photo."""
    folder = tmp_path_factory.mktemp("strips")
    Image.new("RGB", (128, 128), (100, 150, 200)).save(folder / "img.png")
    edges = [0, 26, 52, 77, 103, 128]
    for i in range(5):
        inside = np.zeros((128, 128), dtype=bool)
        inside[:, edges[i] : edges[i + 1]] = True
        _mask(folder / f"mask{i}.png", inside)
    return folder


@pytest.fixture(scope="module")
def strips_run(strips_dir, tmp_path_factory):
    """One successful run covering three cases at once (to keep the module fast): more than 4 concepts,
    masks covering the whole image with --no-background, and --overwrite of an existing --out folder."""
    out = tmp_path_factory.mktemp("strips_runs") / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, stdout, err = run_cli(
        ["extract", str(strips_dir), *TINY, "--resolution", "128", "--phase1-steps", "1", "--phase2-steps", "0",
         "--no-background", "--overwrite", "--out", str(out), "--quiet"]
    )
    return out, code, stdout, err


@pytest.fixture(scope="module")
def samples(finished_run, tmp_path_factory):
    """Two images of one handle prompt from seed 5 (small, to keep the module fast)."""
    out = tmp_path_factory.mktemp("samples") / "out"
    code, stdout, err = run_cli(
        ["generate", str(finished_run), "a photo of <asset0>", "--num-images", "2", "--seed", "5", *GEN,
         "--out", str(out)]
    )
    assert code == 0, err
    return out, stdout, err


# ------------------------------------------------------------------------------------------
# extract: bad scene input


def test_mask_of_other_size(scene_dir, tmp_path, capsys):
    small = _mask(tmp_path / "small.png", np.ones((100, 100), dtype=bool))
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir / "img.png"), "--mask", str(small), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "small.png", "100x100", "512x512")
    assert_nothing_written(out)


def test_empty_mask(scene_dir, tmp_path, capsys):
    empty = _mask(tmp_path / "empty.png", np.zeros((512, 512), dtype=bool))
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir / "img.png"), "--mask", str(empty), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "empty.png", "empty")
    assert_nothing_written(out)


def test_mask_covering_whole_image(scene_dir, tmp_path, capsys):
    full = _mask(tmp_path / "full.png", np.ones((512, 512), dtype=bool))
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir / "img.png"), "--mask", str(full), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "full.png", "whole image")
    assert_nothing_written(out)


def test_unreadable_photo(scene_dir, tmp_path, capsys):
    bad = tmp_path / "photo.png"
    bad.write_text("this is not a picture")
    out = tmp_path / "run"
    code = main(["extract", str(bad), "--mask", str(scene_dir / "mask0.png"), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "photo.png", "not an image")
    assert_nothing_written(out)


def test_unreadable_mask(scene_dir, tmp_path, capsys):
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir / "img.png"), "--mask", str(bad), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "mask.png")
    assert_nothing_written(out)


def test_missing_photo(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(tmp_path / "nothere.png"), "--mask", str(scene_dir / "mask0.png"), *TINY, *FAST,
                 "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "nothere.png", "not found")
    assert_nothing_written(out)


def test_missing_input_without_mask_says_not_found(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(tmp_path / "my_scene"), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "not found")
    assert_nothing_written(out)


def test_missing_mask(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir / "img.png"), "--mask", str(tmp_path / "nomask.png"), *TINY, *FAST,
                 "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "nomask.png", "not found")
    assert_nothing_written(out)


def test_photo_without_mask(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir / "img.png"), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "--mask")
    assert_nothing_written(out)


def test_folder_with_mask(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), "--mask", str(scene_dir / "mask0.png"), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "folder", "--mask")
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------
# extract: names and init words


@pytest.mark.parametrize(
    "names, fragment",
    [
        (["a", "b", "c"], "3 names"),  # more names than masks
        (["a"], "1 names"),  # fewer
        (["dog", "dog"], "duplicate"),
        (["my dog", "x"], "'my dog'"),
        (["<a>", "b"], "'<a>'"),
        (["bg", "x"], "'bg'"),  # taken by the background handle
    ],
    ids=["too-many", "too-few", "duplicate", "space", "brackets", "bg"],
)
def test_bad_names(scene_dir, tmp_path, capsys, names, fragment):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out), "--names", *names])
    assert_one_error(code, capsys.readouterr().err, fragment)
    assert_nothing_written(out)


def test_more_masks_than_names_says_counts(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out), "--names", "ball"])
    assert_one_error(code, capsys.readouterr().err, "2 masks", "--names")


def test_init_words_count_mismatch(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out), "--init-words", "ball"])
    assert_one_error(code, capsys.readouterr().err, "init words", "--init-words")
    assert_nothing_written(out)


def test_init_word_outside_vocabulary(scene_dir, tmp_path, capsys):
    # The tiny vocabulary has every ASCII letter, so only a non-ASCII word is out of vocabulary.
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out), "--init-words", "café", "box"])
    assert_one_error(code, capsys.readouterr().err, "café", "vocabulary")
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------
# extract: output folder, model, settings


def test_existing_out_without_overwrite_is_untouched(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, str(out), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "run.partial").exists()


def test_stale_partial_without_resume_or_overwrite(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    partial.mkdir()
    (partial / "note.txt").write_text("interrupted")
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "--resume", "--overwrite")
    assert not out.exists()
    assert sorted(p.name for p in partial.iterdir()) == ["note.txt"]


def test_resume_with_nothing_to_resume(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--out", str(out), "--resume"])
    assert_one_error(code, capsys.readouterr().err, "nothing to resume")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "model, fragment",
    [("./no/such/folder", "no such file"), ("model.ckpt", ".safetensors")],
    ids=["missing-folder", "ckpt"],
)
def test_unknown_model(scene_dir, tmp_path, capsys, model, fragment):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *FAST, "--model", model, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, model, fragment)
    assert_nothing_written(out)


def test_union_covering_whole_image_needs_no_background(strips_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(strips_dir), *TINY, "--resolution", "128", "--phase1-steps", "1",
                 "--phase2-steps", "1", "--quiet", "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "--no-background")
    assert_nothing_written(out)


def test_fp16_on_cpu(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--device", "cpu", "--mixed-precision", "fp16",
                 "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "fp16")
    assert_nothing_written(out)


def test_missing_class_images_folder(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, *FAST, "--prior-preservation", "--class-images",
                 str(tmp_path / "nodir"), "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "--class-images")
    assert_nothing_written(out)


def test_both_phases_zero_steps(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, "--resolution", "128", "--phase1-steps", "0",
                 "--phase2-steps", "0", "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "0 steps")
    assert_nothing_written(out)


def test_resolution_not_multiple_of_64(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", str(scene_dir), *TINY, "--resolution", "100", "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "--resolution 100", "64")
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------
# extract: runs that succeed


def test_finished_run_layout(finished_run):
    info = json.loads((finished_run / "scene.json").read_text())
    assert [h["token"] for h in info["handles"]] == ["<asset0>", "<asset1>", "<bg>"]
    assert (finished_run / "model_index.json").is_file()
    assert (finished_run / "handles.safetensors").is_file()
    assert not finished_run.with_name("run.partial").exists()


def test_more_than_four_concepts_warns_and_succeeds(strips_run):
    out, code, stdout, err = strips_run
    assert code == 0, err
    assert "Traceback" not in err and not any(line.startswith("error:") for line in lines(err))
    warnings = [line for line in lines(err) if line.startswith("warning:")]
    assert any("5 concepts" in line for line in warnings), err
    info = json.loads((out / "scene.json").read_text())
    assert [h["token"] for h in info["handles"]] == [f"<asset{i}>" for i in range(5)]  # --no-background: no <bg>


def test_existing_out_with_overwrite_is_replaced(strips_run):
    out, code, stdout, err = strips_run
    assert code == 0, err
    assert not (out / "old.txt").exists()
    assert (out / "scene.json").is_file()
    assert not out.with_name("run.partial").exists()
    assert not out.with_name("run.replaced").exists()
    assert str(out) in stdout


# ------------------------------------------------------------------------------------------
# generate


def test_generate_unknown_handle(finished_run, tmp_path, capsys):
    out = tmp_path / "samples"
    code = main(["generate", str(finished_run), "a photo of <dog>", *GEN, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "<dog>", "<asset0>", "<asset1>", "<bg>")
    assert not out.exists()


def test_generate_missing_run(tmp_path, capsys):
    code = main(["generate", str(tmp_path / "nope"), "a photo", *GEN])
    assert_one_error(code, capsys.readouterr().err, "does not exist")
    assert not (tmp_path / "nope").exists()


def test_generate_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "notrun"
    folder.mkdir()
    (folder / "x.txt").write_text("x")
    code = main(["generate", str(folder), "a photo", *GEN])
    assert_one_error(code, capsys.readouterr().err, "not a break-a-scene run")
    assert sorted(p.name for p in folder.iterdir()) == ["x.txt"]


def test_generate_unfinished_run_says_resume(tmp_path, capsys):
    (tmp_path / "run.partial").mkdir()
    code = main(["generate", str(tmp_path / "run"), "a photo", *GEN])
    assert_one_error(code, capsys.readouterr().err, "not finished", "--resume")
    assert not (tmp_path / "run").exists()


def test_generate_seeds_and_metadata(samples):
    out, stdout, err = samples
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["00-a-photo-of-asset0-seed5.png", "00-a-photo-of-asset0-seed6.png"]
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a photo of <asset0>", 5), ("a photo of <asset0>", 6)]
    assert all(r["steps"] == 2 and (r["height"], r["width"]) == (128, 128) for r in records)
    assert [Path(r["path"]).name for r in records] == names
    assert not any(line.startswith("note:") for line in lines(stdout))
    assert "error:" not in err and "Traceback" not in err


def test_generate_existing_image_without_overwrite(finished_run, samples, capsys):
    out, _, _ = samples
    image = out / "00-a-photo-of-asset0-seed5.png"
    before = image.read_bytes()
    metadata = (out / "metadata.jsonl").read_text()
    code = main(["generate", str(finished_run), "a photo of <asset0>", "--seed", "5", *GEN, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, image.name, "--overwrite")
    assert image.read_bytes() == before
    assert (out / "metadata.jsonl").read_text() == metadata


def test_generate_deterministic_and_note_for_plain_prompt(finished_run, samples, tmp_path, capsys):
    """Same prompt and seed into another --out gives the same pixels; a prompt without handle works with a note."""
    out, _, _ = samples
    again = tmp_path / "again"
    code = main(["generate", str(finished_run), "a photo of <asset0>", "a red ball", "--seed", "5", *GEN,
                 "--overwrite", "--out", str(again)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and "error:" not in captured.err
    notes = [line for line in lines(captured.out) if line.startswith("note:")]
    assert len(notes) == 1 and "a red ball" in notes[0], captured.out
    assert (again / "01-a-red-ball-seed5.png").is_file()
    records = [json.loads(line) for line in (again / "metadata.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a photo of <asset0>", 5), ("a red ball", 5)]
    name = "00-a-photo-of-asset0-seed5.png"
    first = np.asarray(Image.open(out / name))
    second = np.asarray(Image.open(again / name))
    assert first.shape == second.shape == (128, 128, 3)
    assert np.array_equal(first, second)


# ------------------------------------------------------------------------------------------
# help and presets


EXTRACT_FLAGS = (
    "--model --names --init-words --no-background --resolution --phase1-steps --phase2-steps --phase1-lr "
    "--phase2-lr --lambda-attn --seed --device --mixed-precision --prior-preservation --class-prompt "
    "--class-images --num-class-images --preset --no-phase1 --no-masked-loss --no-attention-loss "
    "--no-union-sampling --checkpoint-every --resume --overwrite"
).split()
GENERATE_FLAGS = "--num-images --seed --steps --guidance --negative --height --width --out".split()


@pytest.mark.parametrize(
    "argv, flags",
    [(["--help"], ["extract", "generate"]), (["extract", "--help"], EXTRACT_FLAGS),
     (["generate", "--help"], GENERATE_FLAGS)],
    ids=["top", "extract", "generate"],
)
def test_help(argv, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [flag for flag in flags if flag not in text]
    assert not missing, missing


def test_official_preset():
    config = ExtractConfig.from_preset("official")
    assert config.optimizer == "adamw"
    assert config.adam_beta2 == 0.999
    assert config.weight_decay == 1e-2
    assert config.max_grad_norm == 1.0
    assert config.prior_preservation is True
    paper = ExtractConfig.from_preset("paper")
    assert (paper.optimizer, paper.adam_beta2, paper.max_grad_norm, paper.prior_preservation) == ("adam", 0.99, None, False)


def test_explicit_setting_overrides_preset():
    config = ExtractConfig.from_preset("official", weight_decay=0.5, prior_preservation=False, max_grad_norm=2.0,
                                       phase1_lr=1e-3, seed=None)
    assert (config.weight_decay, config.prior_preservation, config.max_grad_norm) == (0.5, False, 2.0)
    assert config.phase1_lr == 1e-3
    assert config.optimizer == "adamw"  # untouched preset values stay
    assert config.seed == 0  # None means "not given", not "set to None"


# ------------------------------------------------------------------------------------------
# a real process


@pytest.mark.slow  # a real process (about 10 s): `make test-slow`
def test_real_process_prints_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "breakascene.cli", "generate", str(tmp_path / "missing"), "a photo of <asset0>"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert lines(result.stderr) == [f"error: run folder {tmp_path / 'missing'} does not exist"], result.stderr
    assert result.stdout == ""


@pytest.mark.slow  # real processes (about 15 s): `make test-slow`
def test_bitsandbytes_is_never_imported_unless_8bit_adam_is_asked_for(tmp_path):
    # A stand-in bitsandbytes, installed (a dist-info, as pip leaves) and loud on import like the real one on a CPU
    # machine: diffusers, transformers and peft import it at start-up whenever it is installed.
    site = tmp_path / "site"
    (site / "bitsandbytes").mkdir(parents=True)
    (site / "bitsandbytes" / "__init__.py").write_text(
        "import os, sys\nopen(os.environ['BNB_MARKER'], 'w').close()\n"
        "print('Failed to load CPU gemm_4bit_forward from kernels-community', file=sys.stderr)\n"
    )
    info = site / "bitsandbytes-0.50.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.0\n")
    (info / "top_level.txt").write_text("bitsandbytes\n")
    (info / "RECORD").write_text("bitsandbytes/__init__.py,,\n")
    marker, scene, run = tmp_path / "imported", tmp_path / "scene", tmp_path / "run"
    write_shapes_example(scene)
    script = (
        "import sys; from breakascene.cli import main\n"  # LoRA: peft's layer dispatch checks for bitsandbytes
        f"assert main(['extract', {str(scene)!r}, '--model', 'builtin:tiny', '--resolution', '64', '--quiet', "
        f"'--phase1-steps', '1', '--phase2-steps', '1', '--lora-rank', '2', '--out', {str(run)!r}]) == 0\n"
        f"assert main(['generate', {str(run)!r}, 'a photo of <asset0>', '--steps', '1', '--quiet']) == 0\n"
        "from breakascene.training.memory import machine_facts; assert machine_facts('cpu')[2]  # installed, all the same\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "BNB_MARKER": str(marker)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists() and "gemm_4bit" not in result.stderr, result.stderr
    assert all(line.startswith("warning:") for line in lines(result.stderr)), result.stderr


# ------------------------------------------------------------------------------------------
# the first hour: usage edges, suggestions, interrupts, permissions


@pytest.mark.parametrize("argv, fragments", [
    (["extract", "scene"], ["the following arguments are required: --out", "break-a-scene extract --help"]),
    (["extract", "scene", "--phase1_steps", "3", "--out", "x"], ["--phase1_steps", "did you mean --phase1-steps?"]),
    (["generate", "run", "--num_images", "2"], ["did you mean --num-images?"]),
    (["eval", "run", "--scenes", "s", "--method", "ours", "--out", "o", "--phase2_lr", "1"], ["did you mean --phase2-lr?"]),
])
def test_usage_errors_are_one_line_with_a_suggestion(argv, fragments):
    code, _, err = run_cli(argv)
    assert_one_error(code, err, *fragments)


def test_version_and_env(capsys):
    from breakascene import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"break-a-scene {__version__}"
    assert main(["env"]) == 0
    listed = {line.split(":")[0].lstrip("- ") for line in capsys.readouterr().out.splitlines()}
    assert {"peft", "gradio", "bitsandbytes", "torch", "diffusers"} <= listed


def test_the_tiny_model_trains_at_its_native_size_by_default(scene_dir, tmp_path):
    from breakascene.models.tiny import TINY_RESOLUTION

    out = tmp_path / "run"
    code, _, err = run_cli(["extract", str(scene_dir), *TINY, "--phase1-steps", "1", "--phase2-steps", "0", "--quiet",
                            "--out", str(out)])
    assert code == 0, err
    assert json.loads((out / "scene.json").read_text())["resolution"] == TINY_RESOLUTION == 128
    assert "native resolution" not in err  # nothing to warn about


def test_an_interrupt_says_what_was_kept(scene_dir, tmp_path, monkeypatch):
    import breakascene.training.recipe as recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe.Trainer, "run_phase", interrupted)
    argv = ["extract", str(scene_dir), *TINY, "--resolution", "64", "--quiet", "--out", str(tmp_path / "run")]
    code, _, err = run_cli(argv)
    assert code == 130 and lines(err)[-1] == ("interrupted; nothing was saved: a run keeps progress only with "
                                              "--checkpoint-every N (then --resume continues it)"), err
    code, _, err = run_cli(argv + ["--checkpoint-every", "5"])
    assert code == 130 and "stopped before its first checkpoint" in lines(err)[-1], err
    assert not (tmp_path / "run.partial").exists()


def test_a_prompt_naming_a_handle_without_brackets_gets_a_suggestion(finished_run, tmp_path):
    code, stdout, err = run_cli(["generate", str(finished_run), "a photo of asset0", *GEN, "--out", str(tmp_path / "s")])
    assert code == 0, err
    assert "did you mean <asset0>?" in stdout


def test_run_and_export_files_follow_the_umask(finished_run, scene_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "run"
        code, _, err = run_cli(["extract", str(scene_dir), *TINY, "--resolution", "64", "--phase1-steps", "1",
                                "--phase2-steps", "0", "--quiet", "--out", str(out)])
        assert code == 0, err
        code, _, err = run_cli(["export", str(out), "--format", "diffusers", "--out", str(tmp_path / "export")])
        assert code == 0, err
    finally:
        os.umask(previous)
    for folder in (out, tmp_path / "export"):
        modes = {p.relative_to(folder).as_posix(): p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}
        assert any(name.endswith(".safetensors") for name in modes)  # (safetensors itself writes 0600)
        assert set(modes.values()) == {0o644}, modes
