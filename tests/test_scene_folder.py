"""The scene-folder layout: one writer, one reader, and every folder the project writes reads back in ``extract``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breakascene.errors import SceneError
from breakascene.images import read_mask
from breakascene.scene import load_scene_folder
from breakascene.scene_folder import find_scene_files, write_scene_folder

from helpers.cli import run_cli


def _box(h: int, w: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    inside = np.zeros((h, w), dtype=bool)
    inside[top:bottom, left:right] = True
    return inside


def test_round_trip_names_and_refusal_to_overwrite(tmp_path):
    a, b = _box(12, 16, 1, 2, 6, 9), _box(12, 16, 5, 8, 11, 15)
    folder = tmp_path / "scene"
    files = write_scene_folder(folder, Image.new("RGB", (16, 12), "red"), [a, b], ["dog", "cat"])
    assert [p.name for p in files.masks] == ["mask0.png", "mask1.png"] and files.photo.name == "img.png"
    for path, mask in zip(files.masks, [a, b]):
        with Image.open(path) as image:
            assert image.mode == "L" and set(np.unique(np.asarray(image))) <= {0, 255}
        assert ((read_mask(path) >= 0.5) == mask).all()
    assert find_scene_files(folder).names == ["dog", "cat"]

    with pytest.raises(SceneError, match="overwrite"):
        write_scene_folder(folder, Image.new("RGB", (16, 12)), [b])
    assert ((read_mask(files.masks[0]) >= 0.5) == a).all()  # untouched by the refusal
    # With overwrite the folder holds exactly the new scene: no stale mask1.png or names read along with it.
    (folder / "notes.txt").write_text("mine")
    write_scene_folder(folder, Image.new("RGB", (16, 12)), [b], overwrite=True)
    found = find_scene_files(folder)
    assert [p.name for p in found.masks] == ["mask0.png"] and found.names is None
    assert (folder / "notes.txt").read_text() == "mine"  # not part of the layout: kept


def test_a_photo_given_by_path_is_copied_byte_for_byte(tmp_path):
    photo = tmp_path / "holiday.JPG"
    Image.new("RGB", (16, 12), "blue").save(photo, format="JPEG")
    files = write_scene_folder(tmp_path / "scene", photo, [_box(12, 16, 0, 0, 6, 6)])
    assert files.photo.name == "img.jpg" and files.photo.read_bytes() == photo.read_bytes()


def test_the_background_mask_is_kept_but_never_read_as_a_concept(tmp_path):
    concept = _box(16, 16, 2, 2, 8, 8)
    write_scene_folder(tmp_path, Image.new("RGB", (16, 16)), [concept], ["ball"], background=~concept)
    assert (tmp_path / "background.png").is_file()
    assert [p.name for p in find_scene_files(tmp_path).masks] == ["mask0.png"]


def test_a_runs_scene_folder_is_given_back_to_extract(tmp_path):
    from breakascene.examples import write_shapes_example

    scene = write_shapes_example(tmp_path / "shapes")
    run = tmp_path / "run"
    args = ["--model", "builtin:tiny", "--resolution", "64", "--phase1-steps", "1", "--phase2-steps", "0", "--quiet"]
    code, _, err = run_cli(["extract", str(scene), *args, "--names", "ball", "box", "--out", str(run)])
    assert code == 0, err
    used = load_scene_folder(run / "scene", 64)
    original = load_scene_folder(scene, 64)
    assert torch.equal(used.masks, original.masks)  # the masks exactly as trained on
    assert float((used.image - original.image).abs().max()) <= 0.5 / 255 + 1e-6
    assert find_scene_files(run / "scene").names == ["ball", "box"]
    code, _, err = run_cli(["extract", str(run / "scene"), *args, "--out", str(tmp_path / "again")])
    assert code == 0, err


@pytest.mark.parametrize("layout, fragment", [
    ({}, "no img.*"),
    ({"img.png": "photo", "img.jpg": "photo"}, "several photos"),
    ({"img.png": "photo"}, "no mask files"),
    ({"img.png": "photo", "mask1.png": "mask", "mask01.png": "mask"}, "same number"),
    ({"img.png": "photo", "mask0.png": "mask", "mask_names.txt": "mask0.png dog\n"}, "mask_names.txt line 1"),
])
def test_broken_scene_folders_say_what_to_fix(tmp_path, layout, fragment):
    for name, kind in layout.items():
        if kind == "photo":
            Image.new("RGB", (8, 8)).save(tmp_path / name)
        elif kind == "mask":
            Image.fromarray(_box(8, 8, 0, 0, 4, 4).astype(np.uint8) * 255).save(tmp_path / name)
        else:
            (tmp_path / name).write_text(kind)
    with pytest.raises(SceneError, match=fragment):
        find_scene_files(tmp_path)
