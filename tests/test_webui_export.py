"""WebUI exports (comfyui, a1111, kohya): every file loads back into stock diffusers as the run's own weights.

The single-file checkpoint goes through ``StableDiffusionPipeline.from_single_file`` (with a config folder that
holds no weights, as a Hub config snapshot), the LoRA through diffusers' own ``load_lora_weights`` (which reads
the WebUI keys), and each embedding through ``load_textual_inversion``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from breakascene.cli import main
from breakascene.handles import load_handles
from breakascene.inference.exports import export
from breakascene.inference.pipeline import load_pipeline
from breakascene.models.single_file import inspect_single_file
from breakascene.models.tiny import build_tiny_components
from helpers.cli import assert_one_error, run_cli
from helpers.tiny import make_tiny_run

NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
TRIGGERS = {"<asset0>": "pets_asset0", "<asset1>": "pets_asset1", "<bg>": "pets_bg"}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    # A large rate, so that two steps move the adapters well away from their zero start; alpha != rank, so a
    # writer that assumed alpha = rank (diffusers' convert_state_dict_to_kohya) would load a different LoRA.
    return make_tiny_run(tmp_path_factory, "--lora-rank", "4", "--lora-alpha", "2", "--lora-text-encoder",
                         "--phase2-lr", "1e-2")


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory) -> str:
    """The tiny base model's diffusers configs without weights (from another seed): what from_single_file needs."""
    folder = tmp_path_factory.mktemp("config") / "tiny"
    StableDiffusionPipeline(**build_tiny_components(seed=7), **NO_SAFETY).save_pretrained(folder)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return str(folder)


def _export(run: Path, out: Path, fmt: str, *extra: str) -> Path:
    code, _, err = run_cli(["export", str(run), "--format", fmt, "--name", "pets", *extra, "--out", str(out)])
    assert code == 0, err
    return out


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _base_pipeline():
    return StableDiffusionPipeline(**build_tiny_components(), **NO_SAFETY)


def _load_embeddings(pipe, folder: Path) -> torch.Tensor:
    """Loads each handle's embedding under its trigger word; returns the rows, (K, dim)."""
    for word in TRIGGERS.values():
        pipe.load_textual_inversion(str(folder / f"{word}.safetensors"), token=word)
    return _trigger_rows(pipe)


def _trigger_rows(pipe) -> torch.Tensor:
    ids = pipe.tokenizer.convert_tokens_to_ids(list(TRIGGERS.values()))
    assert pipe.tokenizer.unk_token_id not in ids
    return pipe.text_encoder.get_input_embeddings().weight.detach()[ids]


@pytest.mark.parametrize("fmt, weights, embeddings", [
    ("comfyui", "models/checkpoints", "models/embeddings"),
    ("a1111", "models/Stable-diffusion", "embeddings"),
    ("kohya", ".", "."),
])
def test_each_tool_gets_its_own_folder_tree(full_run, tmp_path, fmt, weights, embeddings):
    out = _export(full_run, tmp_path / fmt, fmt)
    expected = [str(Path(weights) / "pets.safetensors")] + [str(Path(embeddings) / f"{w}.safetensors")
                                                            for w in TRIGGERS.values()]
    assert _files(out) == sorted(["README.md", *expected])


def test_full_run_is_a_single_file_checkpoint_that_from_single_file_loads_back(full_run, config_folder, tmp_path):
    out = _export(full_run, tmp_path / "a1111", "a1111")
    checkpoint = out / "models" / "Stable-diffusion" / "pets.safetensors"
    info = inspect_single_file(checkpoint)  # the header says what it is, without any heuristic
    assert (info.family, info.prediction_type) == ("sd2", "epsilon") and "modelspec" in info.prediction_source
    loaded = StableDiffusionPipeline.from_single_file(str(checkpoint), config=config_folder, **NO_SAFETY)
    run_pipe, _ = load_pipeline(full_run, "cpu")
    for part in ("unet", "vae"):
        expected, actual = getattr(run_pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[k], expected[k]) for k in expected), part
    tokens, vectors = load_handles(full_run / "handles.safetensors")
    expected, actual = run_pipe.text_encoder.state_dict(), loaded.text_encoder.state_dict()
    table = "embeddings.token_embedding.weight"
    assert all(torch.equal(actual[k], expected[k]) for k in expected if k != table)
    base_rows = len(loaded.tokenizer)  # the stock tokenizer: the handles are not in the checkpoint's table
    assert base_rows == len(run_pipe.tokenizer) - len(tokens)
    assert torch.equal(actual[table], expected[table][:base_rows])
    assert torch.equal(_load_embeddings(loaded, out / "embeddings"), vectors)


def test_lora_run_is_a_webui_lora_that_diffusers_loads_to_the_runs_weights(lora_run, tmp_path):
    out = _export(lora_run, tmp_path / "comfyui", "comfyui")
    lora = load_file(out / "models" / "loras" / "pets.safetensors")
    assert {k.split("_", 2)[1] for k in lora} == {"unet", "te"}  # lora_unet_*, lora_te_*
    assert {float(v) for k, v in lora.items() if k.endswith(".alpha")} == {2.0}
    assert all(re.fullmatch(r"lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)", k) for k in lora)
    pipe = _base_pipeline()
    base = {part: {k: v.clone() for k, v in getattr(pipe, part).state_dict().items()} for part in ("unet", "text_encoder")}
    pipe.load_lora_weights(str(out / "models" / "loras" / "pets.safetensors"))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    run_pipe, _ = load_pipeline(lora_run, "cpu")  # the run's own merge of its adapters
    for part in ("unet", "text_encoder"):
        expected = {k.replace(".base_layer", ""): v for k, v in getattr(run_pipe, part).state_dict().items()
                    if "lora_" not in k}
        actual = getattr(pipe, part).state_dict()
        shared = [k for k in actual if k != "embeddings.token_embedding.weight"]  # the run's table has the handles
        changed = [k for k in shared if not torch.equal(actual[k], base[part][k])]
        assert changed, f"the LoRA changed nothing in the {part}"
        assert all(torch.allclose(actual[k], expected[k], atol=1e-6) for k in shared), part
    _, vectors = load_handles(lora_run / "handles.safetensors")
    assert torch.equal(_load_embeddings(pipe, out / "models" / "embeddings"), vectors)


def test_embeddings_are_kohya_emb_params_files(full_run, tmp_path):
    out = _export(full_run, tmp_path / "kohya", "kohya")
    tokens, vectors = load_handles(full_run / "handles.safetensors")
    for token, vector in zip(tokens, vectors):
        embedding = load_file(out / f"{TRIGGERS[token]}.safetensors")
        assert list(embedding) == ["emb_params"]
        assert embedding["emb_params"].dtype == torch.float32 and torch.equal(embedding["emb_params"][0], vector)


def test_fp16_halves_the_weights_but_not_the_embeddings(full_run, tmp_path):
    out = _export(full_run, tmp_path / "kohya16", "kohya", "--fp16")
    with safe_open(str(out / "pets.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F16"}
    assert load_file(out / "pets_asset0.safetensors")["emb_params"].dtype == torch.float32


def test_lora_readme_code_runs_as_written(lora_run, tmp_path):
    out = _export(lora_run, tmp_path / "a1111", "a1111")
    readme = (out / "README.md").read_text()
    assert "models/Lora/" in readme and "<lora:pets:1>" in readme and "embedding:pets_asset0" in readme
    assert "only work with the weights they were trained with" in readme
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    namespace: dict = {}
    exec(compile(block, "README", "exec"), namespace)
    _, vectors = load_handles(lora_run / "handles.safetensors")
    assert torch.equal(_trigger_rows(namespace["pipe"]), vectors)
    assert namespace["image"].size == (128, 128)


def test_checkpoint_readme_names_the_files_and_the_config(full_run, tmp_path):
    out = _export(full_run, tmp_path / "comfyui", "comfyui")
    readme = (out / "README.md").read_text()
    assert "`models/checkpoints/pets.safetensors`" in readme and "**Load Checkpoint** `pets.safetensors`" in readme
    assert all(f"| `{t}` | `{w}` |" in readme for t, w in TRIGGERS.items())
    assert "from_single_file" in readme and 'prediction_type="epsilon"' in readme


def test_the_text_encoder_layout_follows_the_activation(tmp_path, config_folder):
    """SD 1.x's CLIP (quick GELU) gets the CLIP layout, SD 2.x's OpenCLIP (GELU) the OpenCLIP one; both load."""
    from breakascene.models.ldm_layout import CLIP_PREFIX, OPEN_CLIP_PREFIX, single_file_state_dict, text_layout
    from safetensors.torch import save_file

    parts = build_tiny_components()
    assert text_layout(parts["text_encoder"]) == "open_clip"
    parts["text_encoder"].config.hidden_act = "quick_gelu"  # only the key layout is looked at here
    assert text_layout(parts["text_encoder"]) == "clip"
    state = single_file_state_dict(parts["unet"], parts["vae"], parts["text_encoder"])
    assert any(k.startswith(CLIP_PREFIX) for k in state) and not any(k.startswith(OPEN_CLIP_PREFIX) for k in state)
    save_file(state, str(tmp_path / "sd1.safetensors"))
    assert inspect_single_file(tmp_path / "sd1.safetensors").family == "sd1"
    loaded = StableDiffusionPipeline.from_single_file(str(tmp_path / "sd1.safetensors"), config=config_folder,
                                                      **NO_SAFETY)
    expected = parts["text_encoder"].state_dict()
    assert all(torch.equal(loaded.text_encoder.state_dict()[k], v) for k, v in expected.items())


def test_modelspec_of_a_v_prediction_run():
    from breakascene.inference.webui import modelspec
    from breakascene.run_info import RunInfo

    info = RunInfo(base_model="x", resolution=768, handles=[], prediction_type="v_prediction")
    spec = modelspec(info, "pets", "open_clip")
    assert spec["modelspec.prediction_type"] == "v" and spec["modelspec.architecture"] == "stable-diffusion-v2-768-v"
    assert modelspec(info, "pets", "clip")["modelspec.architecture"] == "stable-diffusion-v1"


# ------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("extra, fragments", [
    (["--format", "comfyui", "--name", "my pets"], ["--name", "letters, digits"]),
    (["--format", "textual-inversion", "--name", "pets"], ["--name", "comfyui"]),
    (["--format", "textual-inversion", "--fp16"], ["--fp16", "kohya"]),
], ids=["bad-name", "name-for-ti", "fp16-for-ti"])
def test_bad_webui_options_are_one_line_errors(full_run, tmp_path, capsys, extra, fragments):
    out = tmp_path / "out"
    code = main(["export", str(full_run), *extra, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, *fragments)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_the_default_name_is_the_run_folders(full_run, tmp_path):
    out = export(full_run, tmp_path / "k", format="kohya")
    assert f"{full_run.name}.safetensors" in _files(out)
