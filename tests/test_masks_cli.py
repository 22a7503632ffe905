"""Tests for ``break-a-scene masks`` and extract's --text-masks/--points/--boxes, with tiny random SAM and OWLv2
models saved to folders (so the --sam-model/--detector-model loading path runs for real)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breakascene.cli import main
from helpers.cli import TINY, assert_nothing_written, assert_one_error
from helpers.segmentation import build_tiny_owl, build_tiny_sam

FAST = ["--resolution", "128", "--phase1-steps", "1", "--phase2-steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    build_tiny_sam(folder / "sam")
    build_tiny_owl(folder / "owl")
    return ["--sam-model", str(folder / "sam"), "--detector-model", str(folder / "owl")]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8)).save(path)
    return path


def _masks(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("mask*.png"))]


def test_lazy_import_of_segmenters():
    code = (
        "import breakascene, breakascene.cli, sys; "
        "bad = [m for m in sys.modules if m.startswith(('transformers.models.sam', 'transformers.models.owl'))"
        " or m.split('.')[-1].lower() in ('segment', 'mask_tools') or m.startswith('breakascene.segmentation.')];"
        " assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_points_and_boxes(photo, models, tmp_path, capsys):
    out = tmp_path / "scene"
    code = main(["masks", str(photo), "--point", "10,20", "--point", "50,30+70,40-5,5", "--box", "0,0,50,30",
                 *models, "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    masks = _masks(out)
    assert len(masks) == 3
    assert all(m.shape == (60, 100) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255} for m in masks)
    assert (out / "img.jpg").read_bytes() == photo.read_bytes()
    assert Image.open(out / "preview.png").size == (100, 60)
    assert "mask0: " in stdout and "% of the image" in stdout


def test_text_masks_and_options(photo, models, tmp_path, capsys):
    out = tmp_path / "scene"
    code = main(["masks", str(photo), "--text", "dog, red shirt", "--detection-threshold", "0", "--fill-holes",
                 "--largest-component", "--dilate", "1", *models, "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "dog: score " in stdout and "red shirt: score " in stdout
    assert len(_masks(out)) == 2
    assert "mask1.png\tred shirt" in (out / "mask_names.txt").read_text()


def test_auto(photo, models, tmp_path, capsys):
    out = tmp_path / "scene"
    code = main(["masks", str(photo), "--auto", "--max-masks", "2", "--min-area", "0", "--points-per-side", "4",
                 *models, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    masks = _masks(out)
    assert 1 <= len(masks) <= 2
    assert (np.sum([m > 0 for m in masks], axis=0) <= 1).all()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--point", "100,10"], ["point 100,10 is outside the 100x60 photo"]),
        (["--point", "10;20"], ["expected x,y"]),
        (["--box", "0,0,50"], ["expected x0,y0,x1,y1"]),
        (["--box", "0,0,50,61"], ["outside"]),
        (["--text", " "], ["text is empty"]),
        (["--text", "dog", "--detection-threshold", "1.01"], ["no 'dog' found"]),
        (["--point", "1,1"] * 9, ["at most 8"]),
        ([], ["nothing to segment"]),
        (["--auto", "--text", "dog"], ["not several kinds"]),
    ],
)
def test_masks_bad_input(photo, models, tmp_path, capsys, args, fragments):
    out = tmp_path / "scene"
    code = main(["masks", str(photo), *args, *models, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, *fragments)
    assert not out.exists()


def test_model_not_available_offline(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "scene"
    code = main(["masks", str(photo), "--point", "1,1", "--sam-model", "nobody-here/sam", "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "could not be downloaded (HF_HUB_OFFLINE is set)",
                     "hf download nobody-here/sam", "give --sam-model a local folder")
    assert not out.exists()


def test_existing_masks_need_overwrite(photo, models, tmp_path, capsys):
    out = tmp_path / "scene"
    assert main(["masks", str(photo), "--point", "10,20", *models, "--out", str(out)]) == 0
    code = main(["masks", str(photo), "--point", "10,20", *models, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, "--overwrite")
    assert main(["masks", str(photo), "--box", "0,0,50,30", "--box", "1,1,9,9", *models, "--out", str(out),
                 "--overwrite"]) == 0
    assert len(_masks(out)) == 2


def test_extract_with_points(photo, models, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["extract", str(photo), "--points", "10,20", "70,40+80,50", *models, *TINY, *FAST, "--out", str(run)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "<asset0> <asset1>" in captured.out
    assert len(_masks(run / "masks")) == 2
    assert (run / "masks" / "img.jpg").exists() and (run / "masks" / "preview.png").exists()


def test_extract_with_text_masks_names_handles(photo, models, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["extract", str(photo), "--text-masks", "dog, red shirt", "--detection-threshold", "0", *models,
                 *TINY, *FAST, "--out", str(run)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "<dog> <red_shirt> <bg>" in captured.out
    assert "dog: score" in captured.out
    assert len(_masks(run / "masks")) == 2


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--points", "500,20"], ["outside"]),
        (["--boxes", "1,2,3"], ["expected x0,y0,x1,y1"]),
        (["--text-masks", "dog", "--detection-threshold", "1.01"], ["no 'dog' found"]),
        (["--text-masks", ""], ["text is empty"]),
        (["--points", "1,1", "--mask", "m.png"], ["not both"]),
    ],
)
def test_extract_bad_mask_prompts(photo, models, tmp_path, capsys, args, fragments):
    run = tmp_path / "run"
    code = main(["extract", str(photo), *args, *models, *TINY, *FAST, "--out", str(run)])
    assert_one_error(code, capsys.readouterr().err, *fragments)
    assert_nothing_written(run)
