"""The metric arithmetic against hand-computed values, the class matching, and one batch scored with stand-in models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from breakascene.errors import ConfigError
from breakascene.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_means,
    cosine,
    masked_image,
    mean_by_key,
    pareto_front,
    per_concept_identity,
    percentile,
    summarize,
)
from breakascene.evaluation.scorers import label_ids_for_class, normalize_label, segments_mask


def test_cosine_by_hand():
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [6.0, 8.0], [-1.0, 0.0], [1.0, 0.0]])
    assert cosine(a, b).tolist() == pytest.approx([0.0, 1.0, -1 / math.sqrt(2), 0.0])


def test_masked_image_is_black_outside():
    image = torch.full((3, 2, 2), 0.5)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert masked_image(image, mask)[0].tolist() == [[0.5, 0.0], [0.0, 0.5]]
    with pytest.raises(ValueError):
        masked_image(image, torch.ones(3, 3))


def test_means_and_percentiles_by_hand():
    assert mean_by_key(["a", "b", "a"], [1.0, 2.0, 4.0]) == {"a": 2.5, "b": 2.0}
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 5.0
    assert percentile(values, 0.5) == 3.0 and percentile(values, 0.1) == pytest.approx(1.4)  # numpy's linear rule


def test_bootstrap_by_hand():
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))
    # [0, 1]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4; the 95 % interval is [0, 1].
    means = bootstrap_means([0.0, 1.0], 4000, seed=0)
    assert set(means.tolist()) == {0.0, 0.5, 1.0}
    assert (means == 0.5).double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert bootstrap_ci([0.0, 1.0], num_resamples=4000) == (0.0, 1.0)
    values = [0.1, 0.4, 0.35, 0.8, 0.5, 0.45]
    low, high = bootstrap_ci(values, seed=1)
    assert low < sum(values) / len(values) < high and (low, high) == bootstrap_ci(values, seed=1)
    s = summarize(values)
    assert s.mean == pytest.approx(0.43333333) and s.n == 6
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_identity_is_averaged_per_concept_first():
    records = [
        {"scene": "s", "identity": {"0": 0.2}},
        {"scene": "s", "identity": {"0": 0.4, "1": 0.9}},
        {"scene": "t", "identity": {"0": 0.6}},
    ]
    assert per_concept_identity(records) == {("s", 0): pytest.approx(0.3), ("s", 1): 0.9, ("t", 0): 0.6}
    # method value = mean over concepts = (0.3 + 0.9 + 0.6) / 3 = 0.6, not the mean over pairs (0.525)
    assert summarize(list(per_concept_identity(records).values())).mean == pytest.approx(0.6)


def test_missing_concept_policy():
    from breakascene.evaluation.metrics import identity_score

    assert identity_score(0.4, found=False) == 0.4 == identity_score(0.4, found=True, missing="zero")
    assert identity_score(0.4, found=False, missing="zero") == 0.0
    with pytest.raises(ValueError):
        identity_score(0.4, True, missing="skip")


def test_pareto_front():
    points = [(0.30, 0.50), (0.25, 0.60), (0.20, 0.40), (0.32, 0.45), (0.30, 0.50)]
    assert pareto_front(points) == [1, 0, 4, 3]  # (0.20, 0.40) is dominated; ties are both kept
    assert pareto_front([(0.1, 0.1), (0.2, 0.2)]) == [1]


def test_class_matching_is_explicit():
    id2label = {0: "person", 1: "tv", 2: "dining table", 3: "wall-other-merged", 4: "potted_plant"}
    assert label_ids_for_class("person", id2label) == [0]
    assert label_ids_for_class("tvmonitor", id2label) == [1]
    assert label_ids_for_class("Dining-Table", id2label) == [2]
    assert label_ids_for_class("potted plant", id2label) == [4]
    assert normalize_label("hair_dryer") == "hair drier"
    with pytest.raises(ConfigError, match="no label for the COCO class 'giraffe'"):
        label_ids_for_class("giraffe", id2label)


def test_segments_mask_unites_the_class_segments():
    segmentation = torch.tensor([[1, 1, 2], [3, 0, 2]], dtype=torch.int32)
    segments = [{"id": 1, "label_id": 7}, {"id": 2, "label_id": 5}, {"id": 3, "label_id": 7}]
    assert segments_mask(segmentation, segments, [7]).tolist() == [[1, 1, 0], [1, 0, 0]]
    assert segments_mask(segmentation, segments, [9]).sum() == 0


class _Clip:
    """Image embedding = mean colour; text embedding fixed by the text: the cosine is then known."""

    def image_embeddings(self, images):
        return torch.stack([i.mean(dim=(1, 2)) for i in images])

    def text_embeddings(self, texts):
        return torch.tensor([[1.0, 0.0, 0.0] if "dog" in t else [0.0, 1.0, 0.0] for t in texts])


class _Dino:
    def embed(self, images):  # sum of each channel: masking changes it predictably
        return torch.stack([i.sum(dim=(1, 2)) for i in images])


class _Segmenter:
    """Finds a 'dog' (label 2) in the left half of every image, nothing else."""

    id2label = {0: "person", 1: "cat", 2: "dog"}

    def segment(self, image):
        h, w = image.shape[-2:]
        segmentation = torch.zeros(h, w, dtype=torch.int32)
        segmentation[:, : w // 2] = 1
        return segmentation, [{"id": 1, "label_id": 2}]


def test_score_batch_with_stand_in_models(tmp_path):
    from PIL import Image

    from breakascene.evaluation.score import Scorers, SceneInputs, score_batch
    from breakascene.scene_folder import write_scene_folder

    scene = tmp_path / "coco-1"
    (scene / "images").mkdir(parents=True)
    (scene / "batches").mkdir()
    red = torch.zeros(8, 8, 3, dtype=torch.uint8)
    red[..., 0] = 255  # the input: all red
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    # the run's scene/ copy, as extract writes it: dog (mask0) the left half, cat (mask1) the right half
    write_scene_folder(scene / "run" / "scene", Image.fromarray(red.numpy()), [left.numpy(), (~left).numpy()])
    (scene / "run" / "scene.json").write_text(json.dumps({"resolution": 8, "handles": [
        {"name": "asset0", "token": "<asset0>"}, {"name": "asset1", "token": "<asset1>"},
        {"name": "bg", "token": "<bg>", "background": True}]}))
    (scene / "scene.json").write_text(json.dumps({"classes": ["dog", "cat"]}))
    generated = torch.zeros(4, 4, 3, dtype=torch.uint8)
    generated[:, :2, 0] = 255  # red on the left (where the segmenter sees the dog), green on the right
    generated[:, 2:, 1] = 255
    Image.fromarray(generated.numpy()).save(scene / "images" / "0000-seed0.png")
    record = {"file": "images/0000-seed0.png", "seed": 0, "prompt_index": 4, "template": 0, "subset": [0, 1],
              "prompt": "a photo of <asset0> and <asset1> at the beach",
              "class_prompt": "a photo of a dog and a cat at the beach"}
    batch = scene / "batches" / "0000.json"
    batch.write_text(json.dumps({"batch": 0, "images": [record]}))

    scorers = Scorers(_Clip(), _Dino(), _Segmenter())
    inputs = SceneInputs(scene, scorers)
    assert inputs.label_ids == [[2], [1]]
    assert inputs.embeddings.tolist() == [[32.0, 0.0, 0.0], [32.0, 0.0, 0.0]]  # red pixels inside each input mask
    [out] = score_batch(batch, inputs, scorers)
    # CLIP stand-in: mean colour (0.5, 0.5, 0) against the "dog" text (1, 0, 0): cos = 1/sqrt(2)
    assert out["prompt_similarity"] == pytest.approx(1 / math.sqrt(2))
    # dog: the generated left half is red (8, 0, 0) -> cos 1; cat: not found -> black image (0, 0, 0) -> 0
    assert out["identity"] == {"0": pytest.approx(1.0), "1": 0.0}
    assert out["found"] == {"0": True, "1": False}
    assert out["scene"] == "coco-1" and out["subset"] == [0, 1]
