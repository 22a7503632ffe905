"""Tests for breakascene.scene (photo + masks input) and breakascene.examples (synthetic scene)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from breakascene.errors import ConfigError, SceneError, SceneWarning
from breakascene.examples import make_shapes_scene, write_shapes_example
from breakascene.images import read_mask
from breakascene.scene import Scene, load_scene, load_scene_folder

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# helpers


def _base_mask(size: int = 48) -> np.ndarray:
    """Boolean (size, size): a disc plus a bar, clear of the borders."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (xx - 0.35 * size) ** 2 + (yy - 0.4 * size) ** 2 <= (0.2 * size) ** 2
    bar = (xx >= 0.55 * size) & (xx < 0.85 * size) & (yy >= 0.6 * size) & (yy < 0.8 * size)
    return disc | bar


def _photo(path: Path, size: tuple[int, int], colour=(128, 128, 128)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _mask_png(path: Path, inside: np.ndarray) -> Path:
    Image.fromarray((inside * 255).astype(np.uint8), mode="L").save(path)
    return path


def _rect(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    w, h = size
    m = np.zeros((h, w), dtype=bool)
    left, top, right, bottom = box
    m[top:bottom, left:right] = True
    return m


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SceneWarning)
        yield


# ------------------------------------------------------------------------------------------
# mask modes


def _mask_in_mode(mode: str, inside: np.ndarray) -> Image.Image:
    l8 = Image.fromarray((inside * 255).astype(np.uint8), mode="L")
    if mode == "L":
        return l8
    if mode == "1":
        return l8.convert("1", dither=Image.Dither.NONE)
    if mode == "P":
        p = Image.fromarray(inside.astype(np.uint8), mode="P")
        p.putpalette([0, 0, 0, 255, 255, 255])
        return p
    if mode == "RGB":
        return Image.merge("RGB", [l8, l8, l8])
    if mode == "RGBA-alpha":
        # Colour channels say "nothing" on purpose: the varying alpha must win.
        black = Image.new("L", l8.size, 0)
        return Image.merge("RGBA", [black, black, black, l8])
    if mode == "RGBA-opaque":
        opaque = Image.new("L", l8.size, 255)
        return Image.merge("RGBA", [l8, l8, l8, opaque])
    if mode == "LA":
        grey = Image.new("L", l8.size, 200)
        return Image.merge("LA", [grey, l8])
    if mode == "I;16":
        # 20000/65535 ~ 0.31 (outside) and 50000/65535 ~ 0.76 (inside): needs the full 16-bit range.
        arr = np.where(inside, 50000, 20000).astype(np.uint16)
        return Image.fromarray(arr)
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "mode", ["L", "1", "P", "RGB", "RGBA-alpha", "RGBA-opaque", "LA", "I;16"]
)
def test_mask_modes_binarise_identically(tmp_path, mode, no_warnings):
    inside = _base_mask(48)
    path = tmp_path / "mask0.png"
    _mask_in_mode(mode, inside).save(path)
    if mode == "I;16":
        assert Image.open(path).mode.startswith("I")
    cov = read_mask(path)
    assert cov.shape == (48, 48) and cov.dtype == np.float32
    assert 0.0 <= cov.min() and cov.max() <= 1.0
    np.testing.assert_array_equal(cov >= 0.5, inside)

    img = _photo(tmp_path / "img.png", (48, 48))
    scene = load_scene(img, [path], 48)
    np.testing.assert_array_equal(scene.masks[0].numpy().astype(bool), inside)


def test_read_mask_accepts_pil_image_and_float_modes():
    inside = _base_mask(32)
    np.testing.assert_array_equal(read_mask(_mask_in_mode("L", inside)) >= 0.5, inside)
    as_f = Image.fromarray(inside.astype(np.float32), mode="F")
    np.testing.assert_array_equal(read_mask(as_f) >= 0.5, inside)
    as_i = Image.fromarray(inside.astype(np.int32) * 255, mode="I")
    np.testing.assert_array_equal(read_mask(as_i) >= 0.5, inside)


def test_jpeg_mask_with_soft_edges_and_noise(tmp_path):
    inside = _base_mask(96)
    soft = Image.fromarray((inside * 255).astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(1.5))
    path = tmp_path / "mask0.jpg"
    soft.save(path, quality=60)
    cov = read_mask(path)
    assert 0 < ((cov > 0.02) & (cov < 0.98)).sum()  # really soft / noisy
    disagree = (cov >= 0.5) != inside
    # Only boundary pixels may flip.
    assert disagree.mean() < 0.02
    interior = np.asarray(Image.fromarray(inside).filter(ImageFilter.MinFilter(5)), dtype=bool)
    exterior = ~np.asarray(Image.fromarray(inside).filter(ImageFilter.MaxFilter(5)), dtype=bool)
    assert not disagree[interior].any() and not disagree[exterior].any()
    scene = load_scene(_photo(tmp_path / "img.png", (96, 96)), [path], 96)
    assert set(torch.unique(scene.masks).tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------------------------------
# photo modes and geometry


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_photo_any_mode(tmp_path, mode, no_warnings):
    base = Image.new("RGB", (40, 30), (200, 60, 20))
    if mode == "I;16":
        photo = Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))
    elif mode == "RGBA":
        photo = base.convert("RGBA")
        photo.putalpha(0)  # fully transparent -> white
    else:
        photo = base.convert(mode)
    inside = _rect((40, 30), (15, 5, 25, 20))
    scene = load_scene(photo, [_mask_in_mode("L", inside)], 16)
    assert scene.image.shape == (3, 16, 16) and scene.image.dtype == torch.float32
    assert 0.0 <= float(scene.image.min()) and float(scene.image.max()) <= 1.0
    if mode in ("RGBA", "I;16"):
        assert torch.allclose(scene.image, torch.ones_like(scene.image), atol=1 / 255)
    assert scene.mask_names == ["mask0"]


def test_exif_orientation_keeps_image_and_mask_aligned(tmp_path, no_warnings):
    displayed = Image.new("RGB", (60, 40), (128, 128, 128))
    displayed.paste((220, 20, 20), (20, 8, 40, 28))
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 40x60
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "img.jpg"
    stored.save(path, exif=exif, quality=95)
    assert Image.open(path).size == (40, 60)

    inside = _rect((60, 40), (20, 8, 40, 28))
    mask = _mask_png(tmp_path / "mask0.png", inside)
    scene = load_scene(path, [mask], 40)
    assert scene.original_size == (60, 40)
    assert scene.crop_box == (10, 0, 50, 40)
    m = scene.masks[0].bool()
    np.testing.assert_array_equal(m.numpy(), _rect((40, 40), (10, 8, 30, 28)))
    red = scene.image[0][m].mean(), scene.image[1][m].mean()
    assert red[0] > 0.8 and red[1] < 0.2
    assert abs(float(scene.image[0][~m].mean()) - 128 / 255) < 0.05

    # A mask drawn on the stored (unrotated) pixels is caught, with a hint about EXIF.
    wrong = _mask_png(tmp_path / "mask1.png", _rect((40, 60), (5, 5, 20, 20)))
    with pytest.raises(SceneError, match="EXIF"):
        load_scene(path, [wrong], 40)


def test_non_square_resize_and_centre_crop_transform_mask_identically(tmp_path, no_warnings):
    photo = Image.new("RGB", (200, 100), (120, 120, 120))
    photo.paste((20, 200, 30), (80, 30, 120, 70))
    path = tmp_path / "img.png"
    photo.save(path)
    mask = _mask_png(tmp_path / "mask0.png", _rect((200, 100), (80, 30, 120, 70)))
    scene = load_scene(path, [mask], 50)
    assert scene.resolution == 50 and scene.num_concepts == 1
    assert scene.original_size == (200, 100)
    assert scene.crop_box == (50, 0, 150, 100)
    m = scene.masks[0].bool()
    np.testing.assert_array_equal(m.numpy(), _rect((50, 50), (15, 15, 35, 35)))
    green = scene.image[1] > 0.6
    # The green rectangle and the mask coincide (up to the resampled boundary row/column).
    assert green[m].float().mean() > 0.95
    assert green[~m].float().mean() < 0.01


def test_crop_cutting_a_concept_warns(tmp_path):
    img = _photo(tmp_path / "img.png", (200, 100))
    mask = _mask_png(tmp_path / "mask0.png", _rect((200, 100), (20, 20, 80, 80)))
    with pytest.warns(SceneWarning, match=r"removes 50% of mask0\.png.*square yourself"):
        scene = load_scene(img, [mask], 50)
    assert scene.masks[0].sum() > 0


def test_upscaling_a_small_photo_works(tmp_path, no_warnings):
    img = _photo(tmp_path / "img.png", (32, 24))
    mask = _mask_png(tmp_path / "mask0.png", _rect((32, 24), (8, 4, 24, 20)))
    scene = load_scene(img, [mask], 64)
    assert scene.image.shape == (3, 64, 64)
    assert 0.2 < float(scene.masks[0].mean()) < 0.8


# ------------------------------------------------------------------------------------------
# several masks, background, folders, save


def test_overlapping_masks_and_background(tmp_path, no_warnings):
    size = (64, 64)
    img = _photo(tmp_path / "img.png", size)
    a = _mask_png(tmp_path / "a.png", _rect(size, (5, 5, 40, 40)))
    b = _mask_png(tmp_path / "b.png", _rect(size, (20, 20, 60, 60)))
    scene = load_scene(img, [a, b], 64)
    assert scene.num_concepts == 2 and scene.mask_names == ["a.png", "b.png"]
    assert (scene.masks.sum(0) == 2).any()  # they overlap
    bg = scene.background_mask()
    assert bg.shape == (64, 64) and bg.dtype == torch.float32
    assert torch.equal(bg, 1.0 - torch.clamp(scene.masks.sum(0), max=1.0))
    assert set(torch.unique(bg).tolist()) == {0.0, 1.0}


def test_folder_numeric_sort(tmp_path, no_warnings):
    size = (48, 48)
    _photo(tmp_path / "img.jpg", size)
    numbers = [10, 2, 0, 1]
    for n in numbers:
        suffix = ".jpg" if n == 1 else ".png"
        inside = _rect(size, (2 + 4 * (n % 11), 2, 6 + 4 * (n % 11), 40))
        if suffix == ".jpg":
            Image.fromarray((inside * 255).astype(np.uint8)).save(tmp_path / f"mask{n}{suffix}", quality=95)
        else:
            _mask_png(tmp_path / f"mask{n}{suffix}", inside)
    (tmp_path / "notes.txt").write_text("ignored")
    scene = load_scene_folder(tmp_path, 48)
    assert scene.mask_names == ["mask0.png", "mask1.jpg", "mask2.png", "mask10.png"]
    for k, n in enumerate([0, 1, 2, 10]):
        cols = torch.nonzero(scene.masks[k].sum(0)).flatten()
        assert int(cols.min()) == 2 + 4 * n


def test_save_round_trip(tmp_path, no_warnings):
    photo, masks, _ = make_shapes_scene(96, seed=3)
    scene = load_scene(photo, masks, 64)
    out = tmp_path / "out"
    scene.save(out)
    assert {p.name for p in out.iterdir()} == {"img.png", "mask0.png", "mask1.png"}
    for i in range(2):
        saved = Image.open(out / f"mask{i}.png")
        assert saved.mode == "L" and set(np.unique(np.asarray(saved)).tolist()) <= {0, 255}
    again = load_scene_folder(out, 64)  # the one reader of the layout reads what the one writer wrote
    assert torch.equal(again.masks, scene.masks)
    assert float((again.image - scene.image).abs().max()) <= 0.5 / 255 + 1e-6


# ------------------------------------------------------------------------------------------
# errors and warnings


def test_missing_files(tmp_path):
    img = _photo(tmp_path / "img.png", (32, 32))
    with pytest.raises(SceneError, match="not found"):
        load_scene(tmp_path / "nope.png", [tmp_path / "m.png"], 32)
    with pytest.raises(SceneError, match="mask file not found"):
        load_scene(img, [tmp_path / "missing.png"], 32)
    with pytest.raises(SceneError, match="not found"):
        load_scene_folder(tmp_path / "nofolder", 32)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "img.png"
    bad.write_text("this is not a picture")
    with pytest.raises(SceneError, match="not an image"):
        load_scene(bad, [bad], 32)
    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(SceneError, match="(could not be read|not an image)"):
        load_scene(truncated, [good], 32)


def test_no_masks(tmp_path):
    with pytest.raises(SceneError, match="no masks given"):
        load_scene(_photo(tmp_path / "img.png", (32, 32)), [], 32)


def test_bad_resolution(tmp_path):
    img = _photo(tmp_path / "img.png", (32, 32))
    with pytest.raises(ConfigError, match="resolution"):
        load_scene(img, [_mask_png(tmp_path / "m.png", _rect((32, 32), (4, 4, 20, 20)))], 0)


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SceneError, match=r"no img\.\*"):
        load_scene_folder(empty, 32)

    no_masks = tmp_path / "no_masks"
    no_masks.mkdir()
    _photo(no_masks / "img.png", (32, 32))
    with pytest.raises(SceneError, match="no mask files"):
        load_scene_folder(no_masks, 32)

    two = tmp_path / "two"
    two.mkdir()
    _photo(two / "img.png", (32, 32))
    _photo(two / "img.jpg", (32, 32))
    _mask_png(two / "mask0.png", _rect((32, 32), (4, 4, 20, 20)))
    with pytest.raises(SceneError, match="several photos"):
        load_scene_folder(two, 32)

    file_not_dir = _photo(tmp_path / "x.png", (8, 8))
    with pytest.raises(SceneError, match="not a folder"):
        load_scene_folder(file_not_dir, 32)


def test_mask_size_mismatch(tmp_path, no_warnings):
    img = _photo(tmp_path / "img.png", (48, 64))
    ok = _mask_png(tmp_path / "mask0.png", _rect((48, 64), (4, 0, 30, 30)))  # crop cut, no warning
    bad = _mask_png(tmp_path / "mask1.png", _rect((64, 48), (4, 4, 30, 30)))
    with pytest.raises(SceneError, match=r"mask1\.png is 64x48 but the image img\.png is 48x64; masks must be drawn on the same photo at the same size"):
        load_scene(img, [ok, bad], 32)


def test_empty_masks(tmp_path):
    img = _photo(tmp_path / "img.png", (200, 100))
    empty = _mask_png(tmp_path / "mask0.png", np.zeros((100, 200), dtype=bool))
    with pytest.raises(SceneError, match=r"mask0\.png is empty \(no pixel"):
        load_scene(img, [empty], 50)
    outside = _mask_png(tmp_path / "mask1.png", _rect((200, 100), (0, 10, 40, 90)))
    with pytest.raises(SceneError, match=r"mask1\.png is empty after the centre crop"):
        load_scene(img, [outside], 50)
    speck = np.zeros((100, 200), dtype=bool)
    speck[50, 100] = True  # one pixel, gone after downscaling by 8
    with pytest.raises(SceneError, match="empty after resizing"):
        load_scene(img, [_mask_png(tmp_path / "mask2.png", speck)], 12)


def test_full_masks(tmp_path):
    img = _photo(tmp_path / "img.png", (200, 100))
    full = _mask_png(tmp_path / "mask0.png", np.ones((100, 200), dtype=bool))
    with pytest.raises(SceneError, match=r"mask0\.png covers the whole image; a concept mask must leave some background"):
        load_scene(img, [full], 50)
    # Not full in the photo, but full after the crop: still nothing left for the background.
    crop_full = _mask_png(tmp_path / "mask1.png", _rect((200, 100), (40, 0, 160, 100)))
    with pytest.raises(SceneError, match="covers the whole image"):
        load_scene(img, [crop_full], 50)


def test_tiny_mask_warns(tmp_path):
    img = _photo(tmp_path / "img.png", (64, 64))
    tiny = _mask_png(tmp_path / "mask0.png", _rect((64, 64), (30, 30, 34, 34)))
    with pytest.warns(SceneWarning, match=r"mask0\.png covers only 0\.39%"):
        scene = load_scene(img, [tiny], 64)
    assert int(scene.masks[0].sum()) == 16


def test_scene_rejects_inconsistent_shapes():
    with pytest.raises(ValueError):
        Scene(torch.zeros(3, 8, 8), torch.zeros(1, 4, 4), ["a"], (8, 8), (0, 0, 8, 8))
    with pytest.raises(ValueError):
        Scene(torch.zeros(3, 8, 8), torch.zeros(2, 8, 8), ["a"], (8, 8), (0, 0, 8, 8))


# ------------------------------------------------------------------------------------------
# synthetic example


def test_shapes_scene_deterministic_and_masks_cover_shapes():
    photo, masks, names = make_shapes_scene(128, seed=0)
    photo2, masks2, _ = make_shapes_scene(128, seed=0)
    other, _, _ = make_shapes_scene(128, seed=1)
    assert names == ["ball", "box"]
    assert photo.mode == "RGB" and photo.size == (128, 128)
    assert np.array_equal(np.asarray(photo), np.asarray(photo2))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(masks, masks2))
    assert not np.array_equal(np.asarray(photo), np.asarray(other))

    m = [np.asarray(x) for x in masks]
    for x in masks:
        assert x.mode == "L" and x.size == (128, 128)
    for x in m:
        assert set(np.unique(x).tolist()) == {0, 255}
        assert 0.08 <= (x > 0).mean() <= 0.25
    assert not ((m[0] > 0) & (m[1] > 0)).any()

    rgb = np.asarray(photo).astype(np.float32) / 255
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > 0.4) & (g < 0.25) & (b < 0.25)
    blue = (b > 0.4) & (g < 0.5) & (r < 0.4)
    assert red.mean() > 0.05 and blue.mean() > 0.05
    assert (m[0][red] > 0).all() and (m[1][blue] > 0).all()
    # Loose: each mask is bigger than its object.
    assert (m[0] > 0).sum() > red.sum() and (m[1] > 0).sum() > blue.sum()


def test_write_shapes_example_loads_cleanly(tmp_path, no_warnings):
    folder = write_shapes_example(tmp_path / "shapes")
    assert folder == tmp_path / "shapes"
    assert {p.name for p in folder.iterdir()} == {"img.png", "mask0.png", "mask1.png"}
    scene = load_scene_folder(folder, 64)
    assert scene.num_concepts == 2 and scene.mask_names == ["mask0.png", "mask1.png"]


def test_committed_example_is_present_and_small(no_warnings):
    folder = REPO / "examples" / "shapes"
    if not folder.is_dir():
        pytest.skip("examples/shapes not generated")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 600_000
    scene = load_scene_folder(folder, 128)
    assert scene.original_size == (512, 512)


# ------------------------------------------------------------------------------------------
# masks that are surely mistakes


def test_a_dark_coloured_mask_is_said_to_have_no_white_pixels(tmp_path):
    img = _photo(tmp_path / "img.png", (64, 64))
    red = np.zeros((64, 64, 3), np.uint8)
    red[10:40, 10:40, 0] = 255  # red on black: 30 % bright, below the 50 % that counts as inside
    Image.fromarray(red).save(tmp_path / "red.png")
    with pytest.raises(SceneError, match=r"red\.png has no white pixels \(its brightest is 30% grey"):
        load_scene(img, [tmp_path / "red.png"], 32)


def test_an_inverted_mask_warns(tmp_path):
    img = _photo(tmp_path / "img.png", (64, 64))
    inverted = _mask_png(tmp_path / "mask0.png", ~_rect((64, 64), (20, 20, 34, 34)))  # 95 % white
    with pytest.warns(SceneWarning, match=r"mask0\.png covers 95% of the 32x32 image: is it inverted"):
        load_scene(img, [inverted], 32)


def test_the_photo_given_as_a_mask_warns(tmp_path):
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    with pytest.warns(SceneWarning, match="is the photo itself"):
        load_scene(photo, [photo], 32)
    copy = tmp_path / "copy.jpg"
    Image.open(photo).save(copy, quality=90)  # another photo-like file: mostly grey, neither black nor white
    with pytest.warns(SceneWarning, match=r"copy\.jpg does not look like a mask"):
        load_scene(photo, [copy], 32)


def test_a_soft_edged_mask_is_not_taken_for_a_photo(tmp_path, no_warnings):
    img = _photo(tmp_path / "img.png", (96, 96))
    soft = Image.fromarray(_rect((96, 96), (20, 20, 70, 70)).astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(3))
    soft.save(tmp_path / "soft.png")
    load_scene(img, [tmp_path / "soft.png"], 48)
