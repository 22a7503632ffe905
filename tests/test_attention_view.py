"""Attention views: per-handle maps captured while generating, and the picture made from them."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from breakascene.inference.attention_view import attention_view_image, generate_with_attention
from breakascene.cli import main
from breakascene.examples import write_shapes_example
from breakascene.inference.pipeline import load_pipeline

SIZE = 128  # latent 16 -> attention grid 4 x 4
KWARGS = dict(num_inference_steps=2, guidance_scale=7.5, height=SIZE, width=SIZE)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    scene = write_shapes_example(tmp_path_factory.mktemp("scene") / "shapes")
    out = tmp_path_factory.mktemp("runs") / "run"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["extract", str(scene), "--model", "builtin:tiny", "--resolution", "128", "--phase1-steps", "2",
                     "--phase2-steps", "2", "--out", str(out), "--quiet"])
    assert code == 0, err.getvalue()
    return out


@pytest.fixture(scope="module")
def pipe(run):
    return load_pipeline(run, "cpu")[0]


@pytest.fixture(scope="module")
def captured(pipe):
    previous = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    generator = torch.Generator("cpu").manual_seed(3)
    image, maps, full = generate_with_attention(
        pipe, "a photo of <asset0> and <asset1>", ["<asset0>", "<asset1>", "<bg>"], return_full=True,
        generator=generator, **KWARGS,
    )
    return image, maps, full, previous


def test_one_map_per_handle_in_prompt_on_the_grid(captured):
    _, maps, _, _ = captured
    assert list(maps) == ["<asset0>", "<asset1>"]  # <bg> is not in the prompt
    grid = SIZE // 8 // 4
    for values in maps.values():
        assert values.shape == (grid, grid)
        assert values.dtype == torch.float32
        assert (values >= 0).all() and values.sum() > 0


def test_maps_over_all_tokens_sum_to_one_per_pixel(captured):
    _, maps, full, _ = captured
    assert full.shape[-1] == 77
    torch.testing.assert_close(full.sum(dim=-1), torch.ones(full.shape[:2]), atol=1e-4, rtol=0)
    assert all((maps[t] <= 1).all() for t in maps)


def test_capture_does_not_change_the_image(pipe, captured):
    image = captured[0]
    plain = pipe("a photo of <asset0> and <asset1>", generator=torch.Generator("cpu").manual_seed(3), **KWARGS)
    a = torch.tensor(np.asarray(image), dtype=torch.float32)
    b = torch.tensor(np.asarray(plain.images[0]), dtype=torch.float32)
    assert (a - b).abs().max() <= 2  # 8-bit rounding of float differences at most


def test_processors_are_restored(pipe, captured):
    _, _, _, previous = captured
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == previous


def test_processors_restored_after_failure(pipe):
    previous = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    with pytest.raises(TypeError):
        generate_with_attention(pipe, "a photo of <asset0>", ["<asset0>"], num_inference_steps=1, height=SIZE,
                                width=SIZE, guidance_scale="not a number")
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == previous


def test_view_image_size(captured):
    image, maps, _, _ = captured
    view = attention_view_image(image, maps)
    assert view.size == (image.width * (1 + len(maps)), image.height)
    assert view.mode == "RGB"
    small = attention_view_image(image, maps, tile=64)
    assert small.size == (64 * 3, 64)


def test_on_step_end_runs_after_every_step(pipe):
    calls = []
    generate_with_attention(pipe, "a photo of <asset0>", ["<asset0>"], generator=torch.Generator("cpu").manual_seed(0),
                            on_step_end=lambda p, step, t, kwargs: calls.append(step), **KWARGS)
    assert calls == [0, 1]


# ------------------------------------------------------------------------------------------
# the training's attention figure (RUN/attention/phase{1,2}.png)


def test_score_caption_says_what_chance_is():
    from breakascene.figures import score_caption

    assert score_caption(0.1404, 0.1396) == "0.14 (chance 0.14)"
    assert score_caption(0.9, 0.25) == "0.90 (chance 0.25)"


def test_attention_figure_has_column_titles_and_chance(monkeypatch):
    from breakascene import figures as visualize

    captions = []
    real = visualize.score_caption
    monkeypatch.setattr(visualize, "score_caption", lambda s, c: captions.append((s, c)) or real(s, c))
    image = torch.rand(3, 64, 64)
    masks = torch.zeros(2, 64, 64)
    masks[0, :32] = 1  # half the picture
    masks[1, :16, :16] = 1  # a sixteenth
    figure = visualize.attention_figure(image, torch.rand(2, 4, 4), masks, ["<asset0>", "<asset1>"], [0.5, 0.1])
    assert visualize.TITLE_BAND > 0
    assert figure.size == (visualize.LABEL_WIDTH + 3 * visualize.TILE, visualize.TITLE_BAND + 2 * visualize.TILE)
    band = np.asarray(figure.convert("L"))[: visualize.TITLE_BAND]
    for column in range(4):  # the labels' column, then the three tiles
        left = 0 if column == 0 else visualize.LABEL_WIDTH + (column - 1) * visualize.TILE
        assert (band[:, left : left + 100] < 128).any(), f"no title over the column at x={left}"
    assert captions == [(0.5, 0.5), (0.1, 1 / 16)]
