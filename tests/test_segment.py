"""Tests for breakascene.segment with tiny random SAM and OWLv2 models built from configs (no weights).

Random models give random masks, so these tests check shapes, dtypes, order, coordinates, thresholds and
errors -- not segmentation quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breakascene import segment
from breakascene.errors import ConfigError, SceneError


def build_tiny_sam(folder=None):
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, window_size=2, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16),
    )
    model = SamModel(config).eval()
    processor = SamProcessor(image_processor=SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16}))
    if folder is not None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return model, processor


def build_tiny_owl(folder=None):
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    from breakascene.tiny import build_tiny_tokenizer

    torch.manual_seed(0)
    tok = build_tiny_tokenizer(16)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=16,
    )
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok)
    if folder is not None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def sam():
    return segment.Segmenter(*build_tiny_sam())


@pytest.fixture(scope="module")
def owl():
    return segment.Detector(*build_tiny_owl())


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))  # 100 x 60, not square


# ------------------------------------------------------------------------------------------
# parsing


def test_parse_point_group():
    assert segment.parse_point_group("120,80") == [(120, 80, 1)]
    assert segment.parse_point_group("120,80+200,90-50,60") == [(120, 80, 1), (200, 90, 1), (50, 60, 0)]


@pytest.mark.parametrize("text", ["", "120", "120,", "a,b", "-5,6", "1.5,2", "1,2+", "1,2,3", "1,2*3,4"])
def test_parse_point_group_malformed_says_the_form(text):
    with pytest.raises(SceneError, match=r"expected x,y"):
        segment.parse_point_group(text)


def test_parse_box():
    assert segment.parse_box("10,20,200,180") == (10, 20, 200, 180)
    for bad in ("10,20,200", "a,b,c,d", "10,20,5,180", "10,20,10,30"):
        with pytest.raises(SceneError, match="x0,y0,x1,y1"):
            segment.parse_box(bad)


def test_parse_phrases_and_names():
    assert segment.parse_phrases(" dog,  red shirt ") == ["dog", "red shirt"]
    for bad in ("", " , ", "dog,,shirt", "dog, Dog"):
        with pytest.raises(SceneError):
            segment.parse_phrases(bad)
    assert segment.phrase_name("Red shirt!") == "red_shirt"
    assert segment.phrase_name("3 cats") == "c_3_cats"


def test_check_prompts_bounds_and_count():
    segment.check_prompts((100, 60), [[(99, 59, 1)]], [(0, 0, 100, 60)])
    with pytest.raises(SceneError, match="outside the 100x60 photo"):
        segment.check_prompts((100, 60), [[(100, 10, 1)]])
    with pytest.raises(SceneError, match="outside the 100x60 photo"):
        segment.check_prompts((100, 60), boxes=[(0, 0, 50, 61)])
    with pytest.raises(SceneError, match="at most 8"):
        segment.check_prompts((100, 60), [[(1, 1, 1)]] * 9)


# ------------------------------------------------------------------------------------------
# SAM


def test_masks_from_points_shape_order_and_grouping(sam, photo):
    groups = [[(10, 20, 1)], [(50, 30, 1), (70, 40, 1), (5, 5, 0)], [(90, 50, 1)]]
    masks = segment.masks_from_points(photo, groups, sam)
    assert len(masks) == 3
    for m in masks:
        assert m.shape == (60, 100) and m.dtype == bool
    # Order follows the input: each group alone gives the same mask as in the batch.
    for group, mask in zip(groups, masks):
        np.testing.assert_array_equal(segment.masks_from_points(photo, [group], sam)[0], mask)


def test_masks_match_post_processed_logits(sam, photo):
    """The chosen mask is the thresholded (> 0) upscaled logit map of the output with the best predicted IoU."""
    model, processor = sam.model, sam.processor
    inputs = processor(images=photo, input_points=[[[[10, 20]]]], input_labels=[[[1]]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    best = int(out.iou_scores[0, 0].argmax())
    soft = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False)[0][0, best]
    mask = segment.masks_from_points(photo, [[(10, 20, 1)]], sam)[0]
    np.testing.assert_array_equal(mask, (soft > 0).numpy())


def test_masks_from_boxes(sam, photo):
    masks = segment.masks_from_boxes(photo, [(0, 0, 50, 30), (40, 20, 100, 60)], (sam.model, sam.processor))
    assert [m.shape for m in masks] == [(60, 100), (60, 100)]
    assert all(m.dtype == bool for m in masks)
    with pytest.raises(SceneError, match="outside"):
        segment.masks_from_boxes(photo, [(0, 0, 101, 30)], sam)


def test_automatic_masks_k_largest_non_overlapping(sam, photo):
    masks = segment.automatic_masks(photo, sam, max_masks=3, min_area=0.0, points_per_side=6)
    assert 1 <= len(masks) <= 3
    areas = [m.mean() for m in masks]
    assert all(m.shape == (60, 100) and m.dtype == bool for m in masks)
    assert all(a > 0 for a in areas)
    total = np.sum(masks, axis=0)
    assert total.max() <= 1  # disjoint
    with pytest.raises(SceneError, match="--max-masks"):
        segment.automatic_masks(photo, sam, max_masks=9)
    with pytest.raises(SceneError, match="no segment"):
        segment.automatic_masks(photo, sam, max_masks=2, min_area=0.99, points_per_side=2)


# ------------------------------------------------------------------------------------------
# OWLv2


def test_detect_threshold(owl, photo):
    found = segment.detect(photo, ["dog", "red shirt"], owl, threshold=0.0)
    assert [f[0] for f in found] == ["dog", "red shirt"]
    for _, score, (x0, y0, x1, y1) in found:
        assert 0 <= score <= 1
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 60
    with pytest.raises(SceneError, match="no 'shirt' found"):
        segment.detect(photo, ["shirt"], owl, threshold=1.01)


def test_masks_from_text(owl, sam, photo):
    masks, scores = segment.masks_from_text(photo, ["dog", "shirt"], owl, sam, threshold=0.0)
    assert len(masks) == len(scores) == 2
    assert all(m.shape == (60, 100) and m.dtype == bool for m in masks)


# ------------------------------------------------------------------------------------------
# loading and clean-up


def test_load_from_local_folder(tmp_path, photo):
    build_tiny_sam(tmp_path / "sam")
    build_tiny_owl(tmp_path / "owl")
    sam = segment.Segmenter.load(str(tmp_path / "sam"), "cpu")
    owl = segment.Detector.load(str(tmp_path / "owl"), "cpu")
    masks, _ = segment.masks_from_text(photo, ["dog"], owl, sam, threshold=0.0)
    assert masks[0].shape == (60, 100)


def test_load_missing_model_says_how_to_get_it(tmp_path):
    # (offline in the tests: HF_HUB_OFFLINE is set, so only the local cache is looked at)
    with pytest.raises(ConfigError, match=r"could not be downloaded.*hf download nobody-here/no-such-sam-model"
                                          r".*give --sam-model a local folder"):
        segment.load_sam("nobody-here/no-such-sam-model")
    with pytest.raises(ConfigError, match="give --detector-model a local folder"):
        segment.load_detector("nobody-here/no-such-owl")
    with pytest.raises(ConfigError, match="not a saved SAM model"):
        segment.load_sam(str(tmp_path))


def test_refine():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    mask[9, 9] = False  # a hole
    mask[0, 0] = True  # a speck
    out = segment.refine([mask], fill_holes=True, largest_component=True)[0]
    assert out[9, 9] and not out[0, 0]
    assert segment.refine([mask], dilate=1)[0].sum() > mask.sum()
    with pytest.raises(SceneError, match="empty after --erode"):
        segment.refine([mask], erode=10)
