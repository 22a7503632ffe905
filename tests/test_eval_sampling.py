"""``eval run`` samples with the model family's steps and guidance unless told (the paper's 50 and 7.5 on SD,
FLUX.1's own on FLUX), and records the numbers used in the results' ``config.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.evaluation import make_coco

from breakascene.evaluation.run import results_folder
from breakascene.evaluation.settings import EvalSettings, model_sampling_defaults, with_sampling_defaults
from breakascene.models.tiny_flux import TINY_FLUX_MODEL_ID


@pytest.mark.parametrize("model", ["builtin:tiny", "builtin:tiny-sdxl"])
def test_sd_and_sdxl_keep_the_papers_protocol_and_their_results_folder(model, tmp_path):
    settings = EvalSettings(model=model, resolution=64, templates=2)
    resolved = with_sampling_defaults(settings)
    assert (resolved.steps, resolved.guidance) == (50, 7.5)
    # the same folder as the same settings with the numbers given, as results made before the defaults moved were
    explicit = EvalSettings(model=model, resolution=64, templates=2, steps=50, guidance=7.5)
    assert results_folder(tmp_path, settings) == results_folder(tmp_path, explicit)
    assert results_folder(tmp_path, settings) != results_folder(tmp_path, EvalSettings(**{**explicit.__dict__, "steps": 49}))


def _flux_folder(folder: Path, guidance_embeds: bool) -> str:
    """What model_family and the defaults read of a FLUX.1 folder: its model_index.json and transformer config."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": guidance_embeds}))
    return str(folder)


def test_flux_dev_and_schnell_are_told_apart_by_their_transformer_config(tmp_path):
    assert model_sampling_defaults(_flux_folder(tmp_path / "dev", True)) == (28, 3.5)
    assert model_sampling_defaults(_flux_folder(tmp_path / "schnell", False)) == (4, 0.0)
    assert model_sampling_defaults(TINY_FLUX_MODEL_ID) == (28, 3.5)  # built dev-shaped
    given = with_sampling_defaults(EvalSettings(model=_flux_folder(tmp_path / "given", False), steps=2))
    assert (given.steps, given.guidance) == (2, 0.0)  # what the command names wins, the rest is the family's
    assert model_sampling_defaults(str(tmp_path / "no-such-model")) is None


@pytest.fixture
def pipeline_calls(monkeypatch) -> list[dict]:
    """Every FluxPipeline call's steps and guidance, as the pipeline received them."""
    from diffusers import FluxPipeline

    calls, call = [], FluxPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append({"steps": kwargs["num_inference_steps"], "guidance": kwargs["guidance_scale"]})
        return call(self, *args, **kwargs)

    monkeypatch.setattr(FluxPipeline, "__call__", recording)
    return calls


def test_eval_run_on_flux_samples_at_fluxs_defaults_unless_told_and_records_them(tmp_path, pipeline_calls):
    annotations, images = make_coco(tmp_path / "coco")
    scenes, results = tmp_path / "scenes", tmp_path / "results"
    code, _, err = run_cli(["eval", "build-scenes", "--coco-annotations", str(annotations), "--coco-images",
                            str(images), "--out", str(scenes), "--num", "1"])
    assert code == 0, err
    run = ["eval", "run", "--scenes", str(scenes), "--method", "ours", "--out", str(results), "--model",
           TINY_FLUX_MODEL_ID, "--resolution", "64", "--phase1-steps", "1", "--phase2-steps", "1", "--templates", "1",
           "--prompts-per-batch", "4", "--quiet"]
    for given, used in (([], (28, 3.5)), (["--steps", "2", "--guidance", "1.5"], (2, 1.5))):
        pipeline_calls.clear()
        code, _, err = run_cli([*run, *given])
        assert code == 0, err
        assert {(c["steps"], c["guidance"]) for c in pipeline_calls} == {used}
        assert len(pipeline_calls) == 3  # the scene's two concepts: 3 prompts of 1 template
        folders = [p for p in results.iterdir() if (p / "config.json").is_file()]
        settings = [json.loads((p / "config.json").read_text())["settings"] for p in folders]
        assert (used[0], used[1]) in [(s["steps"], s["guidance"]) for s in settings]
    assert len(folders) == 2  # other sampling settings, another results folder
