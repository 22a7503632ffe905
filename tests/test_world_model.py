"""builtin:shapes, the shipped world model: a stock diffusers folder, its scaled settings, and the bench's path."""

from __future__ import annotations

import json

import pytest
import torch

from breakascene.attention import capture_layer_names
from breakascene.models.loading import default_resolution, load_components
from breakascene.models.shapes import SCALED_SETTINGS, SHAPES_FOLDER
from breakascene.shapes_world import WORDS
from breakascene.world.bench import own_mask_shares

from helpers.cli import run_cli


def test_builtin_shapes_is_a_small_stock_diffusers_folder_of_safetensors():
    from diffusers import StableDiffusionPipeline

    files = [p for p in SHAPES_FOLDER.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == 3  # text encoder, UNet, VAE
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert sum(p.stat().st_size for p in files) <= 10 * 2**20
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_FOLDER, dtype=torch.float32)
    assert pipe.vae.config.scaling_factor != 1.0  # measured on the world's latents
    for word in WORDS:
        assert len(pipe.tokenizer.tokenize(word)) == 1


def test_builtin_shapes_loads_at_64_px_with_the_loss_grid_at_latent_over_4():
    components = load_components("builtin:shapes")
    assert default_resolution("builtin:shapes") == 64 == components.native_resolution
    layers = capture_layer_names(components.unet)
    # cross-attention at 32, 16 and 8 latents on both paths; the 8x8 ones are the loss's (latent/4)
    assert {name.split(".attentions")[0] for name in layers} == {
        "down_blocks.0", "down_blocks.1", "down_blocks.2", "up_blocks.0", "up_blocks.1", "up_blocks.2"}
    assert components.unet.config.sample_size == 32


@pytest.fixture(scope="module")
def world_scene(tmp_path_factory):
    from breakascene.world.scenes import write_world_scenes

    return write_world_scenes(tmp_path_factory.mktemp("world") / "scenes", 1, 0)[0]


def test_extract_on_builtin_shapes_takes_and_prints_its_scaled_settings(world_scene, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["extract", str(world_scene), "--model", "builtin:shapes", "--phase1-steps", "2",
                                 "--phase2-steps", "2", "--out", str(out), "--quiet"])
    assert code == 0, err
    # the bench's own-mask attention column reads what extract prints, for the concept handles only (not <bg>)
    shares = own_mask_shares(out)
    assert len(shares) == 2
    assert f"<asset0> {shares[0]:.2f}, <asset1> {shares[1]:.2f}, <bg> " in stdout
    assert "builtin:shapes' scaled settings: phase1_lr=0.005" in err  # the steps were given, so not taken
    assert "phase1_steps" not in err
    config = json.loads((out / "scene.json").read_text())["config"]
    assert config["resolution"] == 64 and config["phase1_steps"] == 2
    for key in ("phase1_lr", "phase2_lr", "lambda_attn", "default_init_word"):
        assert config[key] == SCALED_SETTINGS[key], key
    handles = json.loads((out / "scene.json").read_text())["handles"]
    assert [h["init_word"] for h in handles if not h["background"]] == ["object", "object"]


@pytest.mark.slow  # trains, generates and scores (about 9 s): `make test-slow`
def test_world_bench_trains_generates_scores_and_reports(tmp_path):
    out = tmp_path / "bench"
    argv = ["world", "bench", "--out", str(out), "--num", "1", "--methods", "ours", "ti-m", "--phase1-steps", "2",
            "--phase2-steps", "2", "--images-per-prompt", "1", "--steps", "2", "--quiet"]
    code, stdout, err = run_cli(argv)
    assert code == 0, err
    assert "| Ours |" in stdout and "| TI-m |" in stdout
    assert "own-mask attention (min / mean)" in stdout
    for name in ("summary.md", "summary.csv", "fig5.png"):
        assert (out / "report" / name).is_file()
    records = json.loads((out / "ours" / "scene-000" / "scores.json").read_text())["images"]
    assert len(records) == 9  # 3 subsets of 2 handles x 3 other backgrounds x 1 image
    assert all((out / "ours" / "scene-000" / r["file"]).is_file() for r in records)
    # A re-run finds everything done and writes the same table.
    table = (out / "report" / "summary.md").read_text()
    code, _, err = run_cli(argv)
    assert code == 0, err
    assert (out / "report" / "summary.md").read_text() == table
    # --rescore judges the saved pictures again: a record made wrong is put right, and nothing is generated.
    scores = out / "ours" / "scene-000" / "scores.json"
    data = json.loads(scores.read_text())
    data["images"][0]["prompt"] = 1 - data["images"][0]["prompt"]
    scores.write_text(json.dumps(data))
    images = sorted(p.stat().st_mtime_ns for p in (out / "ours" / "scene-000" / "images").iterdir())
    code, _, err = run_cli(argv + ["--rescore"])
    assert code == 0, err
    assert (out / "report" / "summary.md").read_text() == table
    assert json.loads(scores.read_text())["images"][0]["prompt"] == records[0]["prompt"]
    assert sorted(p.stat().st_mtime_ns for p in (out / "ours" / "scene-000" / "images").iterdir()) == images
