"""The prompt set (paper App. B.2) and the baselines' collection (Fig. 6)."""

from __future__ import annotations

import pytest
import torch

from breakascene.errors import ConfigError
from breakascene.evaluation.collection import build_collection, caption, paste
from breakascene.evaluation.prompts import TEMPLATES, choose_templates, nonempty_subsets, prompt_set, with_article


def test_the_papers_ten_templates():
    assert len(TEMPLATES) == 10 and len(set(TEMPLATES)) == 10
    assert TEMPLATES[0] == "a photo of {tokens} at the beach"
    assert TEMPLATES[8] == "a photo of {tokens} with the Eiffel tower in the background"
    assert choose_templates(2) == TEMPLATES[:2] and choose_templates(None) == TEMPLATES
    with pytest.raises(ConfigError):
        choose_templates(11)


def test_subsets_and_articles():
    assert nonempty_subsets(2) == [(0,), (1,), (0, 1)]
    assert len(nonempty_subsets(4)) == 15
    assert with_article("cat") == "a cat" and with_article("umbrella") == "an umbrella"
    assert with_article("elephant") == "an elephant" and with_article("dining table") == "a dining table"


def test_prompt_set_is_templates_times_subsets():
    items = prompt_set(["<asset0>", "<asset1>"], ["dog", "elephant"], TEMPLATES[:2])
    assert [i.index for i in items] == list(range(6))
    assert [(i.subset, i.template) for i in items] == [((0,), 0), ((0,), 1), ((1,), 0), ((1,), 1), ((0, 1), 0), ((0, 1), 1)]
    assert items[0].prompt == "a photo of <asset0> at the beach"
    assert items[0].class_prompt == "a photo of a dog at the beach"
    assert items[5].prompt == "a photo of <asset0> and <asset1> in the jungle"
    assert items[5].class_prompt == "a photo of a dog and an elephant in the jungle"
    assert len(prompt_set(["<a>", "<b>", "<c>"], ["x", "y", "z"])) == 10 * 7
    with pytest.raises(ConfigError):
        prompt_set(["<a>"], ["x", "y"])


def _scene(r=16):
    image = torch.rand(3, r, r)
    masks = torch.zeros(3, r, r)
    masks[0, 2:8, 1:6] = 1
    masks[1, 5:12, 4:10] = 1  # overlaps concept 0
    masks[2, 12:15, 11:15] = 1
    return image, masks


def test_paste_keeps_concepts_in_their_masks_on_a_solid_colour():
    image, masks = _scene()
    colour = torch.tensor([0.1, 0.5, 0.9])
    out, out_masks = paste(image, masks, [0, 1], colour)
    union = masks[:2].amax(0).bool()
    assert torch.equal(out[:, union], image[:, union])
    assert torch.equal(out[:, ~union], colour[:, None].expand(3, int((~union).sum())))
    assert torch.equal(out_masks[:2], masks[:2]) and not out_masks[2].any()


def test_collection_items():
    image, masks = _scene()
    items = build_collection(image, masks, seed=3, size=40)
    assert len(items) == 40
    for item in items:
        assert item.image.shape == (3, 16, 16) and item.masks.shape == (3, 16, 16)
        assert 1 <= len(item.present) <= 3 and item.present == sorted(set(item.present))
        source_image = item.image.flip(-1) if item.flipped else item.image
        source_masks = item.masks.flip(-1) if item.flipped else item.masks
        for i in range(3):  # present: its own mask at its own place; absent: zeros
            assert torch.equal(source_masks[i], masks[i] if i in item.present else torch.zeros(16, 16))
        union = masks[item.present].amax(0).bool()
        assert torch.equal(source_image[:, union], image[:, union])  # the photo's pixels, inside the masks
        background = source_image[:, ~union]
        assert torch.allclose(background, item.colour[:, None].expand_as(background))  # one solid colour
    assert {item.flipped for item in items} == {True, False}
    assert {tuple(item.present) for item in items} >= {(0,), (1,), (2,), (0, 1, 2)}
    assert len({tuple(item.colour.tolist()) for item in items}) == 40
    again = build_collection(image, masks, seed=3, size=40)
    assert all(torch.equal(a.image, b.image) and a.present == b.present for a, b in zip(items, again))
    assert not all(torch.equal(a.image, b.image) for a, b in zip(items, build_collection(image, masks, seed=4, size=40)))
    assert caption(["<asset0>", "<asset1>", "<asset2>"], [0, 2]) == "a photo of <asset0> and <asset2>"
    with pytest.raises(ConfigError):
        build_collection(image, masks[:, :8], seed=0)
    with pytest.raises(ConfigError):
        build_collection(image, masks, seed=0, size=0)


def test_the_cli_parser_imports_no_eval_dependency():
    import subprocess
    import sys

    code = (
        "import sys; from breakascene.cli.main import build_parser; build_parser(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('pycocotools', 'matplotlib') "
        "or m.startswith(('transformers.models.clip', 'transformers.models.vit', 'transformers.models.mask2former', "
        "'breakascene.evaluation.coco', 'breakascene.evaluation.scorers', 'breakascene.evaluation.report'))]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
