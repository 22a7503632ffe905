"""Local editing (Blended Latent Diffusion): background kept exactly, regions in sequence, one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import breakascene.inference.editing as edit_module
from breakascene.cli import main
from breakascene.inference.editing import edit
from breakascene.inference.pipeline import load_pipeline
from helpers.cli import assert_cuda_refused_before_loading, assert_one_error
from helpers.tiny import make_tiny_run

W, H = 128, 96  # not square: the edit image keeps its own size
FAST = ["--steps", "4"]
PROMPT = "a photo of <asset0>"


def _run_captured(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _mask(path: Path, box, size=(W, H)) -> Path:
    inside = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    inside[y0:y1, x0:x1] = 255
    Image.fromarray(inside, mode="L").save(path)
    return path


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def files(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit_inputs")
    rng = np.random.default_rng(0)
    pixels = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "photo.png")
    return {
        "photo": folder / "photo.png",
        "left": _mask(folder / "left.png", (8, 16, 56, 80)),
        "right": _mask(folder / "right.png", (64, 8, 120, 72)),
        "empty": _mask(folder / "empty.png", (0, 0, 0, 0)),
        "half": _mask(folder / "half.png", (4, 8, 28, 40), size=(W // 2, H // 2)),
        "square": _mask(folder / "square.png", (8, 8, 40, 40), size=(64, 64)),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def pipe(run):
    return load_pipeline(run, "cpu")[0]


@pytest.fixture(scope="module")
def two_regions(run, files, pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("edits") / "two"
    paths = edit(run, files["photo"], [(files["left"], PROMPT), (files["right"], "a photo of <bg>")], steps=4,
                 seed=7, out=out, pipeline=pipe)
    return out, paths


def test_outputs_in_order_and_metadata(two_regions):
    out, paths = two_regions
    assert [p.name for p in paths] == ["edit-1.png", "edit-2.png", "final.png"]
    assert all(Image.open(p).size == (W, H) for p in paths)
    np.testing.assert_array_equal(_pixels(out / "edit-2.png"), _pixels(out / "final.png"))
    meta = json.loads((out / "edit.json").read_text())
    assert [r["prompt"] for r in meta["regions"]] == [PROMPT, "a photo of <bg>"]
    assert [r["seed"] for r in meta["regions"]] == [7, 8]
    assert meta["steps"] == 4 and meta["guidance"] == 7.5 and meta["blend_start"] == 0.25


def test_outside_regions_exactly_kept_inside_changed(two_regions, files):
    out, _ = two_regions
    source = _pixels(files["photo"])
    left = np.asarray(Image.open(files["left"])) > 127
    right = np.asarray(Image.open(files["right"])) > 127
    one, final = _pixels(out / "edit-1.png"), _pixels(out / "edit-2.png")
    np.testing.assert_array_equal(one[~left], source[~left])
    assert np.abs(one[left] - source[left]).mean() > 1
    np.testing.assert_array_equal(final[~right], one[~right])  # region 2 is edited in the result of region 1
    assert np.abs(final[right] - one[right]).mean() > 1
    outside = ~(left | right)
    np.testing.assert_array_equal(final[outside], source[outside])


def test_second_region_gets_first_result(run, files, pipe, tmp_path, monkeypatch):
    inputs = []
    real = edit_module._edit_region

    def spy(pipeline, image, inside, prompt, **kwargs):
        inputs.append((np.asarray(image).copy(), prompt))
        return real(pipeline, image, inside, prompt, **kwargs)

    monkeypatch.setattr(edit_module, "_edit_region", spy)
    out = tmp_path / "spy"
    edit(run, files["photo"], [(files["left"], PROMPT), (files["right"], "a photo of <bg>")], steps=2, out=out,
         pipeline=pipe)
    assert [p for _, p in inputs] == [PROMPT, "a photo of <bg>"]
    np.testing.assert_array_equal(inputs[0][0], _pixels(files["photo"]).astype(np.uint8))
    np.testing.assert_array_equal(inputs[1][0], _pixels(out / "edit-1.png").astype(np.uint8))


def test_deterministic_for_a_seed(run, files, pipe, tmp_path):
    a = edit(run, files["photo"], [(files["left"], PROMPT)], steps=2, seed=3, out=tmp_path / "a", pipeline=pipe)
    b = edit(run, files["photo"], [(files["left"], PROMPT)], steps=2, seed=3, out=tmp_path / "b", pipeline=pipe)
    np.testing.assert_array_equal(_pixels(a[-1]), _pixels(b[-1]))


def test_size_rounded_to_multiple_of_8(run, files, pipe, tmp_path):
    odd = tmp_path / "odd.png"
    Image.open(files["photo"]).resize((W + 3, H - 2)).save(odd)
    mask = _mask(tmp_path / "odd_mask.png", (8, 16, 56, 80), size=(W + 3, H - 2))
    with pytest.warns(UserWarning, match="multiples of 8"):
        paths = edit(run, odd, [(mask, PROMPT)], steps=2, out=tmp_path / "o", pipeline=pipe)
    assert Image.open(paths[-1]).size == (W, H)


def test_cli_edit_and_mask_resized_with_warning(run, files):
    out = files["folder"] / "cli_out"
    code, stdout, err = _run_captured(["edit", str(run), str(files["photo"]), "--region", str(files["half"]), PROMPT,
                                       *FAST, "--device", "cpu", "--out", str(out)])
    assert code == 0, err
    assert "warning:" in err and "resizing the mask" in err
    assert (out / "final.png").is_file() and str(out / "final.png") in stdout
    # existing outputs without --overwrite: error, nothing changed
    before = (out / "final.png").read_bytes()
    code, _, err = _run_captured(["edit", str(run), str(files["photo"]), "--region", str(files["half"]), PROMPT,
                                  *FAST, "--out", str(out)])
    assert_one_error(code, err, "already exists", "--overwrite")
    assert (out / "final.png").read_bytes() == before


def _default_edit(run, photo: Path, mask: Path) -> Path:
    """One edit into the default folder through the CLI; returns that folder (where final.png went)."""
    code, stdout, err = _run_captured(["edit", str(run), str(photo), "--region", str(mask), PROMPT,
                                       "--steps", "1", "--blend-start", "0", "--device", "cpu", "--quiet"])
    assert code == 0, err
    final = Path(stdout.splitlines()[-1])
    assert final.name == "final.png" and final.is_file()
    return final.parent


def test_default_out_folders_are_numbered_and_never_refused(run, files, tmp_path):
    """Two photos both called img.png edited into one run: two folders, RUN/edits/NNN-img, numbered in order."""
    photos = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        photos.append(tmp_path / name / "img.png")
        Image.open(files["photo"]).save(photos[-1])
    one = _default_edit(run, photos[0], files["left"])
    two = _default_edit(run, photos[1], files["left"])
    assert one != two and one.parent == two.parent == run / "edits"
    assert one.name.endswith("-img") and two.name.endswith("-img")
    assert int(two.name.split("-")[0]) == int(one.name.split("-")[0]) + 1
    assert len(one.name.split("-")[0]) == 3
    assert json.loads((one / "edit.json").read_text())["image"] == str(photos[0])
    assert json.loads((two / "edit.json").read_text())["image"] == str(photos[1])


def test_next_edit_folder(tmp_path):
    from breakascene.inference.editing import next_edit_folder

    edits = tmp_path / "edits"
    assert next_edit_folder(edits, "photo") == edits / "001-photo"  # no edits folder yet
    (edits / "001-photo").mkdir(parents=True)
    (edits / "007-img").mkdir()
    (edits / "photo").mkdir()  # an older default name, not numbered
    assert next_edit_folder(edits, "photo") == edits / "008-photo"


def test_progress_by_denoising_step(run, files, pipe, tmp_path, capsys):
    """2 regions x 3 steps run (4 steps, the first quarter skipped): one bar to 6/6; progress=False is silent."""
    regions = [(files["left"], PROMPT), (files["right"], "a photo of <bg>")]
    edit(run, files["photo"], regions, steps=4, out=tmp_path / "loud", pipeline=pipe)
    err = capsys.readouterr().err
    assert "6/6" in err and "step" in err, err
    assert "final.png" in err and "edit.json" in err, err  # what is written after the last step
    edit(run, files["photo"], regions, steps=4, out=tmp_path / "quiet", pipeline=pipe, progress=False)
    assert capsys.readouterr().err == ""


def test_device_without_cuda_is_one_line_before_loading(run, files, tmp_path, monkeypatch):
    assert_cuda_refused_before_loading(
        monkeypatch, edit_module, ["edit", str(run), str(files["photo"]), "--region", str(files["left"]), PROMPT, *FAST],
        tmp_path / "out",
    )


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("wrong_aspect", ["64x64", f"{W}x{H}"]),
        ("empty_mask", ["empty"]),
        ("missing_image", ["not found"]),
        ("unreadable_image", ["not an image"]),
        ("missing_mask", ["not found"]),
        ("unknown_handle", ["unknown handle <nope>"]),
        ("missing_run", ["does not exist"]),
        ("incomplete_run", ["not a break-a-scene run folder"]),
        ("odd_region_args", ["--region", "expected 2"]),
        ("bad_blend_start", ["--blend-start"]),
    ],
)
def test_bad_input_one_line_nothing_written(case, fragments, run, files, tmp_path, capsys):
    out = tmp_path / "out"
    image, mask, prompt, run_arg = str(files["photo"]), str(files["left"]), PROMPT, str(run)
    extra = []
    if case == "wrong_aspect":
        mask = str(files["square"])
    elif case == "empty_mask":
        mask = str(files["empty"])
    elif case == "missing_image":
        image = str(tmp_path / "nope.png")
    elif case == "unreadable_image":
        image = str(tmp_path / "broken.png")
        Path(image).write_text("not a picture")
    elif case == "missing_mask":
        mask = str(tmp_path / "nomask.png")
    elif case == "unknown_handle":
        prompt = "a photo of <nope>"
    elif case == "missing_run":
        run_arg = str(tmp_path / "norun")
    elif case == "incomplete_run":
        run_arg = str(tmp_path / "half_run")
        Path(run_arg).mkdir()
        (Path(run_arg) / "scene.json").write_text("{}")
    elif case == "bad_blend_start":
        extra = ["--blend-start", "1.0"]
    argv = ["edit", run_arg, image, "--region", mask, prompt, *FAST, *extra, "--out", str(out)]
    if case == "odd_region_args":
        argv = ["edit", run_arg, image, "--out", str(out), "--region", mask]
        with pytest.raises(SystemExit) as info:
            main(argv)
        code, err = info.value.code, capsys.readouterr().err
    else:
        code, _, err = _run_captured(argv)
    assert_one_error(code, err, *fragments)
    assert not out.exists()
