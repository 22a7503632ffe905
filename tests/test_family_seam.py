"""What the rest of the package asks a model family, asked of each: training defaults that every front end takes
alike, and the kohya metadata a LoRA export carries so that A1111 lists it with models of its kind."""

from __future__ import annotations

import pytest

from breakascene.config import ExtractConfig
from breakascene.models.families.registry import FAMILIES, family_of_builtin
from breakascene.models.loading import model_family
from breakascene.run_info import LoraInfo, RunInfo
from breakascene.training.preflight import preflight
from breakascene.ui.training_defaults import scaled_settings
from helpers.tiny import shapes_scene


def _a1111_sd_version(metadata: dict[str, str]) -> str:
    """A1111 v1.8's reading (extensions-builtin/Lora/network.py, NetworkOnDisk): which models a LoRA is listed with."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


@pytest.mark.parametrize("model, lora_rank", [("builtin:tiny", 0), ("builtin:tiny-sdxl", 0), ("builtin:tiny-flux", 16)])
def test_the_python_api_the_web_app_and_the_family_agree_on_phase_2(tmp_path, model, lora_rank):
    # ExtractConfig() leaves lora_rank to the family: preflight (extract's first step) fills it in, as the CLI and
    # the web app do from the same ModelFamily.training_defaults.
    config = ExtractConfig(model=model, resolution=128, phase1_steps=1, phase2_steps=1)
    assert config.lora_rank is None
    plan = preflight(shapes_scene(), config, tmp_path / "run")
    assert plan.config.lora_rank == lora_rank
    assert scaled_settings(model).get("lora_rank", 0) == lora_rank == model_family(model).training_defaults.get(
        "lora_rank", 0)
    given = preflight(shapes_scene(), ExtractConfig(model=model, resolution=128, lora_rank=0), tmp_path / "run")
    assert given.config.lora_rank == 0  # the user's own choice wins


def test_a_lora_run_on_flux_through_the_python_api_trains_lora(tmp_path):
    from breakascene.training.recipe import extract

    config = ExtractConfig(model="builtin:tiny-flux", resolution=128, phase1_steps=1, phase2_steps=1)
    result = extract(shapes_scene(), config, tmp_path / "run", progress=False)
    assert RunInfo.read(result.out).lora.rank == 16


def _run_info(family_model: str, prediction_type: str = "epsilon") -> RunInfo:
    return RunInfo(handles=[], base_model=family_model, resolution=128, prediction_type=prediction_type,
                   total_steps=800, lora=LoraInfo(rank=4, alpha=4.0, weights="w.safetensors"))


@pytest.mark.parametrize("model, width, version, a1111", [
    ("builtin:tiny", 768, "sd_v1", "SD1"),  # CLIP ViT-L
    ("builtin:tiny", 1024, "sd_v2", "SD2"),  # OpenCLIP ViT-H
    ("builtin:tiny-sdxl", 768, "sdxl_base_v1-0", "SDXL"),
    ("builtin:tiny-flux", 4096, "flux1", "SD1"),  # A1111 runs no FLUX; kohya's own name for its LoRAs
])
def test_lora_metadata_says_the_base_model_as_kohya_does(model, width, version, a1111):
    from breakascene.inference.webui import lora_metadata

    metadata = lora_metadata(_run_info(model), family_of_builtin(model).kohya_base_model(width))
    assert metadata["ss_base_model_version"] == version
    assert _a1111_sd_version(metadata) == a1111 or version == "flux1"
    assert metadata["ss_resolution"] == "(128, 128)" and metadata["ss_steps"] == "800"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4.0"
    assert metadata["ss_v_parameterization"] == "False"
    assert all(isinstance(v, str) for v in metadata.values())  # safetensors metadata holds strings only


def test_every_family_is_found_by_its_built_in_model_and_pipeline_class():
    from breakascene.models.families.registry import family_of_pipeline_class

    for family in FAMILIES:
        assert family.builtin_models and all(family_of_builtin(m) is family for m in family.builtin_models)
        assert all(family_of_pipeline_class(name) is family for name in family.pipeline_names)


def test_bench_help_names_every_family_s_random_architectures():
    # The help is written out (building the parser must not import the families' libraries); this keeps it whole.
    from breakascene.bench.models import random_model_family
    from helpers.cli import run_cli

    names = [name for family in FAMILIES for name in family.random_models]
    code, out, _ = run_cli(["bench", "--help"])
    help_text = " ".join(out.split())
    assert code == 0 and all(name in help_text for name in names)
    assert all(random_model_family(name) is not None for name in names if "<" not in name)
