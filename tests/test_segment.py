"""Tests for breakascene.segmentation (prompts, loading, SAM, OWLv2, make) with tiny random models built from
configs (no weights).

Random models give random masks, so these tests check shapes, dtypes, order, coordinates, thresholds and
errors -- not segmentation quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breakascene.errors import ConfigError, SceneError
from breakascene.segmentation.loading import LoadedModel, load_detector, load_sam
from breakascene.segmentation.make import refine
from breakascene.segmentation.owl import detect, masks_from_text
from breakascene.segmentation.prompts import check_prompts, parse_box, parse_phrases, parse_point_group, phrase_name
from breakascene.segmentation.sam import automatic_masks, masks_from_boxes, masks_from_points
from helpers.segmentation import build_tiny_owl, build_tiny_sam


@pytest.fixture(scope="module")
def sam():
    return LoadedModel(*build_tiny_sam())


@pytest.fixture(scope="module")
def owl():
    return LoadedModel(*build_tiny_owl())


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))  # 100 x 60, not square


# ------------------------------------------------------------------------------------------
# parsing


def test_parse_point_group():
    assert parse_point_group("120,80") == [(120, 80, 1)]
    assert parse_point_group("120,80+200,90-50,60") == [(120, 80, 1), (200, 90, 1), (50, 60, 0)]


@pytest.mark.parametrize("text", ["", "120", "120,", "a,b", "-5,6", "1.5,2", "1,2+", "1,2,3", "1,2*3,4"])
def test_parse_point_group_malformed_says_the_form(text):
    with pytest.raises(SceneError, match=r"expected x,y"):
        parse_point_group(text)


def test_parse_box():
    assert parse_box("10,20,200,180") == (10, 20, 200, 180)
    for bad in ("10,20,200", "a,b,c,d", "10,20,5,180", "10,20,10,30"):
        with pytest.raises(SceneError, match="x0,y0,x1,y1"):
            parse_box(bad)


def test_parse_phrases_and_names():
    assert parse_phrases(" dog,  red shirt ") == ["dog", "red shirt"]
    for bad in ("", " , ", "dog,,shirt", "dog, Dog"):
        with pytest.raises(SceneError):
            parse_phrases(bad)
    assert phrase_name("Red shirt!") == "red_shirt"
    assert phrase_name("3 cats") == "c_3_cats"


def test_check_prompts_bounds_and_count():
    check_prompts((100, 60), [[(99, 59, 1)]], [(0, 0, 100, 60)])
    with pytest.raises(SceneError, match="outside the 100x60 photo"):
        check_prompts((100, 60), [[(100, 10, 1)]])
    with pytest.raises(SceneError, match="outside the 100x60 photo"):
        check_prompts((100, 60), boxes=[(0, 0, 50, 61)])
    with pytest.raises(SceneError, match="at most 8"):
        check_prompts((100, 60), [[(1, 1, 1)]] * 9)


# ------------------------------------------------------------------------------------------
# SAM


def test_masks_from_points_shape_order_and_grouping(sam, photo):
    groups = [[(10, 20, 1)], [(50, 30, 1), (70, 40, 1), (5, 5, 0)], [(90, 50, 1)]]
    masks = masks_from_points(photo, groups, sam)
    assert len(masks) == 3
    for m in masks:
        assert m.shape == (60, 100) and m.dtype == bool
    # Order follows the input: each group alone gives the same mask as in the batch.
    for group, mask in zip(groups, masks):
        np.testing.assert_array_equal(masks_from_points(photo, [group], sam)[0], mask)


def test_masks_match_post_processed_logits(sam, photo):
    """The chosen mask is the thresholded (> 0) upscaled logit map of the output with the best predicted IoU."""
    model, processor = sam.model, sam.processor
    inputs = processor(images=photo, input_points=[[[[10, 20]]]], input_labels=[[[1]]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    best = int(out.iou_scores[0, 0].argmax())
    soft = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False)[0][0, best]
    mask = masks_from_points(photo, [[(10, 20, 1)]], sam)[0]
    np.testing.assert_array_equal(mask, (soft > 0).numpy())


def test_masks_from_boxes(sam, photo):
    masks = masks_from_boxes(photo, [(0, 0, 50, 30), (40, 20, 100, 60)], (sam.model, sam.processor))
    assert [m.shape for m in masks] == [(60, 100), (60, 100)]
    assert all(m.dtype == bool for m in masks)
    with pytest.raises(SceneError, match="outside"):
        masks_from_boxes(photo, [(0, 0, 101, 30)], sam)


def test_automatic_masks_k_largest_non_overlapping(sam, photo):
    masks = automatic_masks(photo, sam, max_masks=3, min_area=0.0, points_per_side=6)
    assert 1 <= len(masks) <= 3
    areas = [m.mean() for m in masks]
    assert all(m.shape == (60, 100) and m.dtype == bool for m in masks)
    assert all(a > 0 for a in areas)
    total = np.sum(masks, axis=0)
    assert total.max() <= 1  # disjoint
    with pytest.raises(SceneError, match="--max-masks"):
        automatic_masks(photo, sam, max_masks=9)
    with pytest.raises(SceneError, match="no segment"):
        automatic_masks(photo, sam, max_masks=2, min_area=0.99, points_per_side=2)


# ------------------------------------------------------------------------------------------
# OWLv2


def test_detect_threshold(owl, photo):
    found = detect(photo, ["dog", "red shirt"], owl, threshold=0.0)
    assert [f[0] for f in found] == ["dog", "red shirt"]
    for _, score, (x0, y0, x1, y1) in found:
        assert 0 <= score <= 1
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 60
    with pytest.raises(SceneError, match="no 'shirt' found"):
        detect(photo, ["shirt"], owl, threshold=1.01)


def test_masks_from_text(owl, sam, photo):
    masks, scores = masks_from_text(photo, ["dog", "shirt"], owl, sam, threshold=0.0)
    assert len(masks) == len(scores) == 2
    assert all(m.shape == (60, 100) and m.dtype == bool for m in masks)


# ------------------------------------------------------------------------------------------
# loading and clean-up


def test_load_from_local_folder(tmp_path, photo):
    build_tiny_sam(tmp_path / "sam")
    build_tiny_owl(tmp_path / "owl")
    sam = load_sam(str(tmp_path / "sam"), "cpu")
    owl = load_detector(str(tmp_path / "owl"), "cpu")
    masks, _ = masks_from_text(photo, ["dog"], owl, sam, threshold=0.0)
    assert masks[0].shape == (60, 100)


def test_load_missing_model_says_how_to_get_it(tmp_path):
    # (offline in the tests: HF_HUB_OFFLINE is set, so only the local cache is looked at)
    with pytest.raises(ConfigError, match=r"could not be downloaded.*hf download nobody-here/no-such-sam-model"
                                          r".*give --sam-model a local folder"):
        load_sam("nobody-here/no-such-sam-model")
    with pytest.raises(ConfigError, match="give --detector-model a local folder"):
        load_detector("nobody-here/no-such-owl")
    with pytest.raises(ConfigError, match="not a saved SAM model"):
        load_sam(str(tmp_path))


def test_refine():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    mask[9, 9] = False  # a hole
    mask[0, 0] = True  # a speck
    out = refine([mask], fill_holes=True, largest_component=True)[0]
    assert out[9, 9] and not out[0, 0]
    assert refine([mask], dilate=1)[0].sum() > mask.sum()
    with pytest.raises(SceneError, match="empty after --erode"):
        refine([mask], erode=10)
