"""``extract --vae``: a replacement VAE, loaded from every kind of reference, checked, recorded and reloaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from breakascene.errors import ConfigError
from breakascene.models.ldm_layout import ldm_vae
from breakascene.models.tiny import TINY_RESOLUTION, TINY_SHAPE, random_vae
from breakascene.models.vae import load_vae

from helpers.cli import assert_nothing_written, assert_one_error, run_cli
from helpers.tiny import make_tiny_run, tiny


def _other_vae(seed: int = 7, **config) -> torch.nn.Module:
    """A VAE for the tiny model's latent space with weights of its own (not the tiny model's)."""
    torch.manual_seed(seed)
    return random_vae(TINY_SHAPE, TINY_RESOLUTION // 8, **config)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ours, theirs = a.state_dict(), b.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "my-vae"
    _other_vae().save_pretrained(folder)
    return folder


def test_a_vae_loads_from_a_folder_a_pipeline_folder_and_both_single_file_layouts(tmp_path):
    vae, like = _other_vae(), tiny().vae
    vae.save_pretrained(tmp_path / "folder")
    vae.save_pretrained(tmp_path / "pipeline" / "vae")
    save_file(ldm_vae(vae), str(tmp_path / "ldm.safetensors"))  # as ComfyUI's models/vae holds it
    save_file(vae.state_dict(), str(tmp_path / "diffusers.safetensors"))
    for name in ("folder", "pipeline", "ldm.safetensors", "diffusers.safetensors"):
        loaded = load_vae(str(tmp_path / name), like=like)
        _assert_same_weights(loaded, vae)
        assert loaded.dtype == torch.float32


def test_a_vae_of_another_latent_space_or_no_vae_at_all_is_refused(tmp_path):
    like = tiny().vae
    _other_vae(scaling_factor=0.13025).save_pretrained(tmp_path / "sdxl-like")
    with pytest.raises(ConfigError, match="scales its latents by 0.13025 but the model's VAE by 0.18215"):
        load_vae(str(tmp_path / "sdxl-like"), like=like)
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(ConfigError, match="holds no VAE weights"):
        load_vae(str(tmp_path / "unet.safetensors"), like=like)
    state = _other_vae().state_dict()
    state.pop("decoder.conv_out.bias")
    save_file(state, str(tmp_path / "truncated.safetensors"))
    with pytest.raises(ConfigError, match="could not load --vae"):
        load_vae(str(tmp_path / "truncated.safetensors"), like=like)


def test_the_wrong_family_s_vae_is_one_error_before_anything_is_written(tmp_path, scene_dir):
    _other_vae(scaling_factor=0.13025).save_pretrained(tmp_path / "sdxl-vae")
    out = tmp_path / "run"
    code, _, err = run_cli(["extract", str(scene_dir), "--model", "builtin:tiny", "--vae", str(tmp_path / "sdxl-vae"),
                            "--phase1-steps", "1", "--phase2-steps", "1", "--out", str(out), "--quiet"])
    assert_one_error(code, err, "--vae", "another model family")
    assert_nothing_written(out)


def test_a_full_run_saves_the_given_vae_and_records_it(tmp_path_factory, vae_folder):
    from breakascene.inference.pipeline import load_pipeline

    run = make_tiny_run(tmp_path_factory, "--vae", str(vae_folder))
    assert json.loads((run / "scene.json").read_text())["vae"] == str(vae_folder)
    pipe, info = load_pipeline(run)
    assert info.vae == str(vae_folder)
    _assert_same_weights(pipe.vae, _other_vae())


def test_a_lora_run_loads_its_vae_again_and_its_export_code_does_too(tmp_path_factory, vae_folder):
    from breakascene.inference.loading_code import base_pipeline_lines
    from breakascene.inference.pipeline import load_pipeline

    run = make_tiny_run(tmp_path_factory, "--vae", str(vae_folder), "--lora-rank", "2")
    pipe, info = load_pipeline(run)  # the base model again, then the VAE the run was trained with
    _assert_same_weights(pipe.vae, _other_vae())
    imports, lines = base_pipeline_lines(info.base_model, info.prediction_type, info.pipeline, info.vae)
    namespace: dict = {}
    exec("\n".join(imports + lines), namespace)  # the README's code, as a user runs it
    _assert_same_weights(namespace["pipe"].vae, _other_vae())
