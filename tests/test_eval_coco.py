"""``eval build-scenes``: COCO formats, the filtering rules, determinism, and the folder ``extract`` reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from helpers.evaluation import box_mask, compressed_rle, make_coco, polygon, uncompressed_rle

from breakascene.cli import main
from breakascene.errors import ConfigError, RunError
from breakascene.evaluation.coco import (
    annotation_mask,
    build_scenes,
    centre_square,
    choose,
    eligible_candidates,
    load_annotations,
    select_concepts,
)
from breakascene.scene import load_scene_folder

# pycocotools 2.0.x decodes through a numpy-2 deprecated path; the masks are right, the warning is theirs.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


def test_annotation_mask_reads_polygons_and_both_rles():
    expected = box_mask(20, 30, 5, 4, 15, 12)
    assert np.array_equal(annotation_mask(polygon(5, 4, 15, 12), 20, 30), expected)
    assert np.array_equal(annotation_mask(compressed_rle(expected), 20, 30), expected)
    assert np.array_equal(annotation_mask(uncompressed_rle(expected), 20, 30), expected)
    assert not annotation_mask([[1, 2, 3, 4]], 20, 30).any()  # a degenerate polygon is empty


def test_centre_square_is_the_scene_crop():
    assert centre_square(128, 96) == (16, 0, 112, 96)
    assert centre_square(96, 130) == (0, 17, 96, 113)


def test_rules_on_each_image(coco):
    data = load_annotations(coco[0])
    names = {c["id"]: c["name"] for c in data["categories"]}

    def concepts(image_id):
        info = next(i for i in data["images"] if i["id"] == image_id)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        return select_concepts(anns, names, info["width"], info["height"])[1]

    one = concepts(1)  # crowd person and banana ignored; largest first
    assert [c.class_name for c in one] == ["dog", "cat"]
    assert one[0].fraction == pytest.approx(40 * 60 / 96**2) and one[1].fraction == pytest.approx(40 * 50 / 96**2)
    assert one[0].mask.shape == (96, 96) and one[1].mask[10:60, 4:44].all()  # cat's x 20..60 in crop pixels
    two = concepts(2)  # same-class pair: the larger person only
    assert [(c.class_name, c.annotation_id) for c in two] == [("person", 20), ("tv", 22)]
    assert [c.class_name for c in concepts(3)] == ["cat"]  # the dog is under 15 %
    assert [c.class_name for c in concepts(5)] == ["cat"]  # zebra dropped
    assert [c.class_name for c in concepts(6)] == ["cat"]  # the dog lies outside the crop
    assert [c.image_id for c in eligible_candidates(data)] == [1, 2]  # 3-6 fail a rule; 4: same class only
    assert [c.class_name for c in concepts(4)] == ["person"]


def test_choice_is_deterministic_by_seed(coco):
    candidates = eligible_candidates(load_annotations(coco[0]))
    assert [c.image_id for c in candidates] == [1, 2]
    picks = {seed: [c.image_id for c in choose(candidates, 1, seed)] for seed in range(8)}
    assert picks == {seed: [c.image_id for c in choose(candidates, 1, seed)] for seed in range(8)}
    assert {tuple(p) for p in picks.values()} == {(1,), (2,)}  # different seeds can pick differently
    assert len(choose(candidates, 50, 0)) == 2


def test_build_scenes_writes_what_extract_reads(coco, tmp_path):
    out = tmp_path / "scenes"
    with pytest.warns(UserWarning, match="only 2 images"):
        infos = build_scenes(*coco, out, num=50, seed=0)
    assert sorted(i["classes"] for i in infos) == [["dog", "cat"], ["person", "tv"]]
    index = json.loads((out / "index.json").read_text())
    assert index["eligible"] == 2 and sorted(index["scenes"]) == ["coco-000000000001", "coco-000000000002"]
    folder = out / "coco-000000000001"
    assert sorted(p.name for p in folder.iterdir()) == ["classes.json", "img.png", "mask0.png", "mask1.png"]
    assert Image.open(folder / "img.png").size == (96, 96)
    scene = load_scene_folder(folder, 64)
    assert scene.masks.shape == (2, 64, 64)
    assert json.loads((folder / "classes.json").read_text())["classes"] == ["dog", "cat"]
    assert not (tmp_path / "scenes.partial").exists()
    with pytest.raises(RunError, match="already exists"):
        build_scenes(*coco, out, num=1)


def test_bad_input_is_one_line_and_leaves_nothing(coco, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not a COCO instances file"):
        build_scenes(bad, coco[1], tmp_path / "x")
    code = main(["eval", "build-scenes", "--coco-annotations", str(coco[0]), "--coco-images", str(tmp_path / "none"),
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --coco-images")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
