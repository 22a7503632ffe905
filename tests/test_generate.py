"""Generation, variations and background prompts through the CLI (offline tiny run, 128 px, 2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breakascene.cli import main
from breakascene.errors import ConfigError
from helpers.cli import assert_cuda_refused_before_loading, assert_one_error, lines, run_cli
from helpers.tiny import make_tiny_run

GEN = ["--steps", "2", "--height", "128", "--width", "128", "--quiet"]
FIELDS = {"prompt", "negative", "seed", "steps", "guidance", "scheduler", "size", "file", "path", "height", "width"}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def batched(run, tmp_path_factory):
    """Two prompts (one with <bg>) x two seeds, both images of a prompt in one pipeline call."""
    out = tmp_path_factory.mktemp("gen") / "batched"
    code, stdout, err = run_cli(["generate", str(run), "a photo of <asset0>", "a photo of a car at <bg>",
                                       "--num-images", "2", "--seed", "3", "--batch-size", "2",
                                       "--negative", "blurry", *GEN, "--out", str(out)])
    assert code == 0, err
    return out, stdout


NAMES = ["00-a-photo-of-asset0-seed3.png", "00-a-photo-of-asset0-seed4.png",
         "01-a-photo-of-a-car-at-bg-seed3.png", "01-a-photo-of-a-car-at-bg-seed4.png"]


def test_files_metadata_and_grid(batched):
    out, stdout = batched
    assert sorted(p.name for p in out.glob("*.png")) == NAMES
    records = _records(out)
    assert [r["file"] for r in records] == NAMES
    for r in records:
        assert FIELDS <= set(r), r
        assert (r["negative"], r["steps"], r["guidance"], r["scheduler"], r["size"]) == ("blurry", 2, 7.5, "default", "128x128")
    assert [(r["prompt"], r["seed"]) for r in records] == [
        ("a photo of <asset0>", 3), ("a photo of <asset0>", 4), ("a photo of a car at <bg>", 3), ("a photo of a car at <bg>", 4)]
    grid = Image.open(out / "grids" / "grid.png")
    assert grid.width == 2 * 128  # one column per seed
    assert grid.height > 2 * 128  # one row per prompt, each with a text band under the images
    assert not any(line.startswith("note:") for line in lines(stdout))


def test_background_prompt_generates(batched):
    out, _ = batched
    image = Image.open(out / "01-a-photo-of-a-car-at-bg-seed3.png")
    assert image.size == (128, 128)


def test_deterministic_and_per_image_seeds(run, batched, tmp_path):
    out, _ = batched
    again = tmp_path / "again"
    code, _, err = run_cli(["generate", str(run), "a photo of <asset0>", "a photo of a car at <bg>",
                                  "--num-images", "2", "--seed", "3", "--batch-size", "2", "--negative", "blurry",
                                  *GEN, "--out", str(again)])
    assert code == 0, err
    for name in NAMES:
        assert np.array_equal(_pixels(out / name), _pixels(again / name)), name
    single = tmp_path / "single"
    code, _, err = run_cli(["generate", str(run), "a photo of <asset0>", "--seed", "4", "--negative", "blurry",
                                  *GEN, "--out", str(single)])
    assert code == 0, err
    # image 1 of the batched call is seed 3+1; batching may change float rounding by at most one level
    diff = np.abs(_pixels(single / "00-a-photo-of-asset0-seed4.png") - _pixels(out / "00-a-photo-of-asset0-seed4.png"))
    assert diff.max() <= 1


@pytest.mark.parametrize("scheduler", ["default", "ddim", "dpm"])
def test_every_scheduler_runs(run, tmp_path, scheduler):
    code, _, err = run_cli(["generate", str(run), "a photo of <asset1>", "--scheduler", scheduler, *GEN,
                                  "--out", str(tmp_path)])
    assert code == 0, err
    assert _records(tmp_path)[0]["scheduler"] == scheduler
    assert (tmp_path / "00-a-photo-of-asset1-seed0.png").is_file()


def test_prompts_file(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na photo of <asset0>\n\n  # indented comment\na photo of <asset1> at <bg>\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["generate", str(run), "--prompts-file", str(prompts), *GEN, "--out", str(out)])
    assert code == 0, err
    assert [r["prompt"] for r in _records(out)] == ["a photo of <asset0>", "a photo of <asset1> at <bg>"]
    assert (out / "01-a-photo-of-asset1-at-bg-seed0.png").is_file()


def test_variations_prompt(run, tmp_path):
    out = tmp_path / "v"
    code, stdout, err = run_cli(["variations", str(run), "--num-images", "2", "--seed", "7", *GEN,
                                       "--out", str(out)])
    assert code == 0, err
    records = _records(out)
    assert [(r["prompt"], r["seed"]) for r in records] == [("a photo of <asset0> and <asset1>", 7)] * 1 + [
        ("a photo of <asset0> and <asset1>", 8)]
    out2 = tmp_path / "vbg"
    code, _, err = run_cli(["variations", str(run), "--num-images", "1", "--with-background", *GEN,
                                  "--out", str(out2)])
    assert code == 0, err
    assert _records(out2)[0]["prompt"] == "a photo of <asset0> and <asset1> and <bg>"


def test_variations_python_default_folder(run):
    from breakascene.inference.generation import variations

    images = variations(run, num_images=1, steps=2, height=128, width=128, progress=False, overwrite=True)
    assert Path(images[0].path).parent == run / "variations"


def test_attention_maps(run, tmp_path):
    code, _, err = run_cli(["generate", str(run), "a photo of <asset0> at <bg>", "--attention-maps", *GEN,
                                  "--out", str(tmp_path)])
    assert code == 0, err
    view = Image.open(tmp_path / "00-a-photo-of-asset0-at-bg-seed0-attention.png")
    assert view.width > 128


def test_second_call_keeps_grid(run, batched, tmp_path):
    """Another seed into the same folder adds grid-2.png instead of replacing grid.png."""
    out = tmp_path / "g"
    for seed in ("0", "1"):
        code, _, err = run_cli(["generate", str(run), "a photo of <asset0>", "--seed", seed, *GEN,
                                      "--out", str(out)])
        assert code == 0, err
    assert (out / "grids" / "grid.png").is_file() and (out / "grids" / "grid-2.png").is_file()
    assert len(_records(out)) == 2


# ------------------------------------------------------------------------------------------
# progress: one bar over the denoising steps, silence with --quiet


QUIET_FREE = [arg for arg in GEN if arg != "--quiet"]


def test_progress_counts_steps_of_all_images(run, tmp_path):
    """2 prompts x 2 images x 2 steps, batched in twos: the bar ends at 8/8 steps (not 4/4 images) and says
    what it writes after the last step; --quiet prints nothing at all."""
    argv = ["generate", str(run), "a photo of <asset0>", "a photo of <asset1>", "--num-images", "2",
            "--batch-size", "2", *QUIET_FREE]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "loud")])
    assert code == 0, err
    assert "8/8" in err and "step" in err, err
    assert "writing metadata.jsonl" in err and "grids/grid.png" in err, err
    code, stdout, err = run_cli([*argv, "--quiet", "--out", str(tmp_path / "quiet")])
    assert code == 0 and err == "", err
    assert len(lines(stdout)) == 4  # the four paths, nothing else


def test_progress_with_attention_maps(run, tmp_path, capsys):
    from breakascene.inference.generation import generate

    generate(run, ["a photo of <asset0>"], num_images=2, steps=3, height=128, width=128, out=tmp_path / "a",
             attention_maps=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "attention view" in err, err
    generate(run, ["a photo of <asset0>"], steps=3, height=128, width=128, out=tmp_path / "b",
             attention_maps=True, progress=False)
    assert capsys.readouterr().err == ""


class _FakePipeline:
    def __init__(self, num_timesteps):
        self.num_timesteps = num_timesteps


@pytest.mark.parametrize("timesteps", [4, 5, 7], ids=["one-per-step", "pndm-steps+1", "second-order"])
def test_step_progress_ends_at_the_steps_asked_for(timesteps, capsys):
    """A scheduler that runs more timesteps than --steps (PNDM: steps + 1) still fills exactly the call's share."""
    from breakascene.inference.progress import StepProgress

    with StepProgress(8, "generate") as bar:
        for _ in range(2):  # two calls of 4 steps each
            advance = bar.callback(4)
            for step in range(timesteps):
                assert advance(_FakePipeline(timesteps), step, None, {}) == {}
                assert bar.bar.n <= 8
        assert bar.bar.n == 8
    assert "8/8" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# the contact sheet's captions


def test_wrap_caption_at_spaces():
    from breakascene.figures import wrap_caption

    text = "a photo of <asset0> at the beach\nseed 3"
    # measured in characters with a one-character gap: lines of at most 12 characters
    assert wrap_caption(text, 12, len, 1) == ["a photo of", "<asset0> at", "the beach", "seed 3"]
    assert wrap_caption("a  photo   of", 40, len, 1) == ["a photo of"]  # runs of spaces are one gap
    assert wrap_caption("abcdefghijklmnop x", 6, len, 1) == ["abcdef", "ghijkl", "mnop x"]
    assert wrap_caption("\nseed 0", 12, len, 1) == ["", "seed 0"]


def test_caption_lines_fit_the_image_and_keep_every_word():
    from breakascene.figures import caption_font, caption_lines, word_gap

    font = caption_font()
    caption = "a photo of <asset0> and <asset1> at the beach, in the style of a watercolour painting"
    wrapped = caption_lines(caption, 120, font)
    assert len(wrapped) > 1
    assert " ".join(wrapped).split() == caption.split()
    for line in wrapped:
        words = line.split()
        assert sum(font.getlength(w) for w in words) + word_gap(font) * (len(words) - 1) <= 120, line


def _blank_runs(band: np.ndarray) -> list[int]:
    """Widths of the ink-free column runs between the first and the last inked column of a (H, W) bool array."""
    inked = np.flatnonzero(band.any(axis=0))
    runs, width = [], 0
    for has_ink in band.any(axis=0)[inked[0]:inked[-1] + 1]:
        if has_ink:
            if width:
                runs.append(width)
            width = 0
        else:
            width += 1
    return runs


def test_contact_sheet_draws_visible_spaces():
    """The default font's own space is 2 px ("a photoof"): every space must leave a gap of at least 3 px."""
    from breakascene.inference.outputs import contact_sheet

    white = Image.new("RGB", (128, 64), "white")
    sheet = contact_sheet([white], ["a photo of"], 1)
    band = np.asarray(sheet.convert("L"))[64:] < 128
    assert sum(run >= 3 for run in _blank_runs(band)) == 2, _blank_runs(band)


# ------------------------------------------------------------------------------------------
# bad input: one error line, exit 2, nothing written


def test_device_without_cuda_is_one_line_before_loading(run, tmp_path, monkeypatch):
    from breakascene.inference import generation

    assert_cuda_refused_before_loading(monkeypatch, generation, ["generate", str(run), "a photo of <asset0>", *GEN],
                                       tmp_path / "out")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        generation.resolve_dtype("fp32", "cuda")


@pytest.mark.parametrize(
    "extra, fragments",
    [(["a photo of <dog>"], ["<dog>", "<asset0>"]),
     (["a photo of <asset0>", "--scheduler", "euler"], ["scheduler", "ddim"]),
     (["a photo of <asset0>", "--dtype", "fp16", "--device", "cpu"], ["fp16", "GPU"]),
     (["a photo of <asset0>", "--dtype", "fp64"], ["fp64"]),
     (["a photo of <asset0>", "--batch-size", "0"], ["--batch-size"]),
     ([], ["no prompt"])],
    ids=["unknown-handle", "scheduler", "fp16-cpu", "dtype", "batch-size", "no-prompt"],
)
def test_bad_generate_input(run, tmp_path, capsys, extra, fragments):
    out = tmp_path / "out"
    code = main(["generate", str(run), *extra, *GEN, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, *fragments)
    assert not out.exists()


def test_empty_prompts_file(run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# only a comment\n\n")
    out = tmp_path / "out"
    code = main(["generate", str(run), "--prompts-file", str(prompts), *GEN, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "no prompt", str(prompts))
    assert not out.exists()


def test_variations_bad_run_and_existing_output(run, tmp_path, capsys):
    folder = tmp_path / "notrun"
    folder.mkdir()
    code = main(["variations", str(folder), *GEN])
    assert_one_error(code, capsys.readouterr().err, "not a break-a-scene run")
    assert list(folder.iterdir()) == []
    out = tmp_path / "v"
    assert main(["variations", str(run), "--num-images", "1", *GEN, "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "metadata.jsonl").read_text()
    code = main(["variations", str(run), "--num-images", "1", *GEN, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "already exists", "--overwrite")
    assert (out / "metadata.jsonl").read_text() == before
