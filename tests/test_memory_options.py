"""Speed and memory options of extraction: LoRA phase 2, half-precision frozen weights, 8-bit Adam, --low-vram,
torch.compile, TF32. Each on the tiny model, checking what the option must change and what it must not."""

import json
import types

import pytest
import torch
from safetensors.torch import load_file

from breakascene.training import memory
from breakascene.cli import main
from breakascene.config import ExtractConfig
from breakascene.errors import ConfigError
from breakascene.inference.pipeline import load_pipeline
from breakascene.handles import load_handles, make_handles
from breakascene.training.memory import low_vram_options, with_low_vram
from breakascene.training.recipe import extract
from breakascene.training.trainer import Trainer

from helpers.tiny import tiny, tiny_config

TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _unet_base_weights(unet) -> dict[str, torch.Tensor]:
    """The UNet's own weights under their plain names (peft's wrapped layers hold them as ``.base_layer.``)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in unet.state_dict().items() if "lora_" not in k}


def test_lora_phase2_trains_only_the_adapters_and_writes_a_small_run(tmp_path, scene128):
    components = tiny()
    before = _unet_base_weights(components.unet)
    result = extract(scene128, tiny_config(lora_rank=4, phase2_lr=1e-2), tmp_path / "run", components=components, progress=False)

    after = _unet_base_weights(components.unet)
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the UNet itself did not move
    saved = load_file(result.out / "pytorch_lora_weights.safetensors")
    ups = [v for k, v in saved.items() if "lora.up" in k or "lora_B" in k]
    assert ups and any(v.abs().sum() > 0 for v in ups)  # B starts at zero: non-zero means phase 2 trained it
    assert not (result.out / "model_index.json").exists() and not (result.out / "unet").exists()
    lora_bytes = (result.out / "pytorch_lora_weights.safetensors").stat().st_size
    unet_bytes = sum(p.numel() * 4 for p in before.values())
    assert lora_bytes < unet_bytes / 5
    info = json.loads((result.out / "scene.json").read_text())
    assert info["lora"] == {"rank": 4, "alpha": 4, "weights": "pytorch_lora_weights.safetensors", "text_encoder": None}


def test_lora_run_loads_back_as_base_plus_scaled_adapters_with_handles(tmp_path, scene128):
    cfg = tiny_config(lora_rank=2, lora_alpha=4, lora_text_encoder=True, phase2_lr=1e-2)
    result = extract(scene128, cfg, tmp_path / "run", components=tiny(), progress=False)
    pipe, _ = load_pipeline(result.out, "cpu")
    base = tiny()

    saved = load_file(result.out / "pytorch_lora_weights.safetensors")
    down = next(v for k, v in saved.items() if TO_Q + ".lora" in k and ("down" in k or "lora_A" in k))
    up = next(v for k, v in saved.items() if TO_Q + ".lora" in k and ("up" in k or "lora_B" in k))
    expected = base.unet.get_submodule(TO_Q).weight + (4 / 2) * up @ down
    assert torch.allclose(pipe.unet.get_submodule(TO_Q).weight, expected, atol=1e-6)

    text = load_file(result.out / "text_encoder_lora.safetensors")
    q = "encoder.layers.0.self_attn.q_proj"  # transformers 5 names (4.x had a text_model. prefix)
    a, b = text[f"{q}.lora_A.default.weight"], text[f"{q}.lora_B.default.weight"]
    assert b.abs().sum() > 0
    merged = pipe.text_encoder.get_submodule(q)
    assert type(merged) is torch.nn.Linear  # merged, and peft's wrapper gone
    assert torch.allclose(merged.weight, base.text_encoder.get_submodule(q).weight + 2 * b @ a, atol=1e-6)

    tokens, vectors = load_handles(result.out / "handles.safetensors")
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], vectors)


def test_lora_run_generates_through_the_cli(tmp_path, scene128):
    result = extract(scene128, tiny_config(lora_rank=4), tmp_path / "run", components=tiny(), progress=False)
    code = main(["generate", str(result.out), "a photo of <asset0> at <bg>", "--steps", "2", "--height", "64",
                 "--width", "64", "--device", "cpu"])
    assert code == 0
    assert len(list((result.out / "samples").glob("*.png"))) == 1


@pytest.mark.parametrize(
    "overrides, unet_dtype, text_dtype",
    [
        (dict(lora_rank=4), torch.bfloat16, torch.bfloat16),  # nothing of the base model trains
        (dict(), torch.float32, torch.float32),  # full phase 2: fp32 master weights
        (dict(train_text_encoder=False), torch.float32, torch.bfloat16),
        (dict(phase2_steps=0), torch.bfloat16, torch.bfloat16),  # handles only
    ],
)
def test_mixed_precision_stores_only_frozen_weights_in_half(scene128, overrides, unet_dtype, text_dtype):
    cfg = tiny_config(mixed_precision="bf16", **overrides)
    components = tiny()
    trainer = Trainer(scene128, cfg, components, make_handles(2), "cpu")
    trainer.setup()
    assert components.unet.conv_in.weight.dtype == unet_dtype
    assert components.text_encoder.get_submodule("encoder.layers.0.mlp.fc1").weight.dtype == text_dtype
    assert trainer.embedding.handle_vectors.dtype == torch.float32
    lora = [p for n, p in components.unet.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 for p in lora) and bool(lora) == bool(cfg.lora_rank)
    trainer.trainable_parameters(cfg.phase2_trains)
    with torch.autocast("cpu", torch.bfloat16):
        terms = trainer.loss_step(trainer.sample_batch())
    terms["total"].backward()
    assert torch.isfinite(trainer.embedding.handle_vectors.grad).all()


def test_8bit_adam_is_refused_without_cuda_before_anything_is_written(tmp_path, scene128):
    with pytest.raises(ConfigError, match="CUDA"):
        extract(scene128, tiny_config(use_8bit_adam=True), tmp_path / "run", components=tiny(), progress=False)
    assert not any(tmp_path.iterdir())


def test_8bit_adam_builds_bitsandbytes_optimisers_for_each_phase(tmp_path, scene128, monkeypatch):
    made = []

    class Adam8bit(torch.optim.Adam):  # stands in for bitsandbytes.optim.Adam8bit (CUDA only)
        def __init__(self, params, **kwargs):
            made.append(kwargs)
            super().__init__(params, **kwargs)

    fake = types.SimpleNamespace(optim=types.SimpleNamespace(Adam8bit=Adam8bit, AdamW8bit=None))
    monkeypatch.setattr(memory, "load_bitsandbytes", lambda device: fake)
    extract(scene128, tiny_config(use_8bit_adam=True), tmp_path / "run", components=tiny(), progress=False)
    assert [m["lr"] for m in made] == [5e-4, 2e-6]
    assert made[0]["betas"] == (0.9, 0.99)


def test_low_vram_choices_per_machine():
    options, notes = low_vram_options("cuda", bf16_supported=True, bitsandbytes_available=True)
    assert options == {"mixed_precision": "bf16", "gradient_checkpointing": True, "use_8bit_adam": True,
                       "train_text_encoder": False}
    assert low_vram_options("cuda", False, True)[0]["mixed_precision"] == "fp16"
    options, notes = low_vram_options("cpu", True, True)
    assert options["use_8bit_adam"] is False and any("8-bit Adam needs CUDA" in n for n in notes)
    # a CPU without native bf16 (AVX2 only) stays in fp32, and says why
    options, notes = low_vram_options("cpu", False, False)
    assert options["mixed_precision"] == "no" and any("no native bf16" in n for n in notes)
    # the user's own flags win over the preset's choices
    cfg = ExtractConfig.from_preset("paper", **with_low_vram(dict(low_vram=True, device="cpu", mixed_precision="no")))
    assert cfg.mixed_precision == "no" and cfg.gradient_checkpointing and not cfg.train_text_encoder


def test_low_vram_on_flux_quantizes_the_transformer_where_it_can_and_says_so():
    """FLUX.1's budget is 24 GB: with CUDA and bitsandbytes an NF4 transformer under LoRA rank 16; without them the
    same LoRA run on a bf16 transformer, and a note that it does not fit."""
    from breakascene.models.families.flux import FLUX

    options, notes = low_vram_options("cuda", True, True, family=FLUX)
    assert options["quantize_base"] == "nf4" and options["lora_rank"] == 16 and options["use_8bit_adam"]
    assert any("4-bit NF4" in n for n in notes)
    options, notes = low_vram_options("cuda", True, False, family=FLUX)
    assert "quantize_base" not in options and any("does not fit a 24 GB GPU" in n and "bitsandbytes" in n for n in notes)
    chosen = with_low_vram({"low_vram": True, "model": "builtin:tiny-flux", "device": "cpu"})
    assert chosen["lora_rank"] == 16 and chosen["gradient_checkpointing"] and "quantize_base" not in chosen
    assert "lora_rank" not in with_low_vram({"low_vram": True, "model": "builtin:tiny", "device": "cpu"})


def test_quantize_base_needs_lora_and_a_cuda_gpu(tmp_path):
    from breakascene.examples import write_shapes_example
    from helpers.cli import assert_one_error, run_cli

    with pytest.raises(ConfigError, match="--lora-rank"):
        ExtractConfig(quantize_base="nf4").validate()
    scene = write_shapes_example(tmp_path / "shapes")
    code, _, err = run_cli(["extract", str(scene), "--model", "builtin:tiny-flux", "--quantize-base", "nf4", "--lora-rank", "16",
                            "--device", "cpu", "--out", str(tmp_path / "run")])
    assert_one_error(code, err, "--quantize-base nf4 needs a CUDA GPU")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_low_vram_extract_through_the_cli_says_what_it_chose(tmp_path, capsys, monkeypatch):
    from breakascene.examples import write_shapes_example

    monkeypatch.setattr(memory, "cpu_has_fast_bf16", lambda: True)  # a CPU with AVX512-BF16, whatever runs this

    scene = write_shapes_example(tmp_path / "shapes")
    code = main(["extract", str(scene), "--model", "builtin:tiny", "--resolution", "128", "--phase1-steps", "1",
                 "--phase2-steps", "1", "--low-vram", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert "--low-vram chose:" in err and "bf16" in err and "gradient checkpointing" in err
    saved = json.loads((tmp_path / "run" / "scene.json").read_text())["config"]
    assert saved["mixed_precision"] == "bf16" and saved["gradient_checkpointing"] and not saved["train_text_encoder"]


@pytest.mark.slow  # dynamo traces the UNet (about 20 s): `make test-slow`
def test_compile_wraps_the_unet_in_place_and_trains(tmp_path, scene128, monkeypatch):
    calls = []
    original = torch.nn.Module.compile

    def compile_eagerly(module, *args, **kwargs):  # inductor's C++ build takes minutes; dynamo's tracing is the point
        calls.append(type(module).__name__)
        return original(module, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    components = tiny()
    result = extract(scene128, tiny_config(compile=True, phase1_steps=1, phase2_steps=1), tmp_path / "run",
                     components=components, progress=False)
    assert calls == ["UNet2DConditionModel"]
    assert (result.out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert all(torch.isfinite(torch.tensor(e["total"])) for e in result.losses)


def test_tf32_is_set_only_on_cuda(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", seen.append)
    memory.set_tf32(torch.device("cpu"), True)
    memory.set_tf32(torch.device("cuda"), True)
    memory.set_tf32(torch.device("cuda"), False)
    assert seen == ["high", "highest"]


@pytest.mark.slow  # three runs (about 5 s): `make test-slow`
def test_optimizer_in_backward_trains_the_same_weights_and_resumes(tmp_path, scene128):
    """Adam per parameter in the backward pass is Adam over all of them: the same run, the same weights; and
    its checkpoints are those of the plain loop (a run stopped with it resumes without it)."""
    from breakascene.run_folder import partial_path

    cfg = tiny_config(phase1_steps=2, phase2_steps=3, phase2_lr=1e-3, checkpoint_every=2)
    extract(scene128, cfg, tmp_path / "plain", components=tiny(), progress=False)
    fused = tiny_config(phase1_steps=2, phase2_steps=3, phase2_lr=1e-3, checkpoint_every=2, optimizer_in_backward=True)
    extract(scene128, fused, tmp_path / "fused", components=tiny(), progress=False)

    class Stop(Exception):
        pass

    def stop(progress):
        if progress.global_step == 4:
            raise Stop

    with pytest.raises(Stop):
        extract(scene128, fused, tmp_path / "mixed", components=tiny(), progress=False, callback=stop)
    assert partial_path(tmp_path / "mixed").exists()
    extract(scene128, cfg, tmp_path / "mixed", components=tiny(), progress=False, resume=True)
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "handles.safetensors"):
        plain = load_file(tmp_path / "plain" / name)
        for other in ("fused", "mixed"):
            tensors = load_file(tmp_path / other / name)
            assert all(torch.allclose(tensors[k], v, atol=1e-7, rtol=0) for k, v in plain.items()), (other, name)
    fresh = tiny().unet.state_dict()
    trained = load_file(tmp_path / "fused" / "unet/diffusion_pytorch_model.safetensors")
    assert sum(not torch.equal(trained[k], v) for k, v in fresh.items()) > 0.9 * len(fresh)


@pytest.mark.parametrize("extra, fragment", [({"max_grad_norm": 1.0}, "global gradient norm"),
                                             ({"mixed_precision": "fp16"}, "bf16")])
def test_optimizer_in_backward_refuses_what_needs_every_gradient(extra, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tiny_config(optimizer_in_backward=True, **extra).validate()


def test_phase2_memory_estimate_counts_weights_gradients_and_adam_state():
    from breakascene.models.families.sdxl import STABLE_DIFFUSION_XL
    from breakascene.models.loading import Components
    from breakascene.models.tiny_sdxl import build_tiny_sdxl_components
    from breakascene.training.memory_estimate import GB, estimate_phase2, memory_warning

    c = tiny()
    unet, vae = (sum(p.numel() for p in m.parameters()) for m in (c.unet, c.vae))
    text = sum(p.numel() for p in c.text_encoder.parameters())
    layers = sum(p.numel() for n, p in c.text_encoder.named_parameters() if "token_embedding" not in n)
    full = estimate_phase2(c, tiny_config())
    assert full.weights * GB == 4 * (unet + text + vae)
    assert full.gradients * GB == 4 * (unet + layers) and full.optimizer * GB == 8 * (unet + layers)
    fused = estimate_phase2(c, tiny_config(optimizer_in_backward=True, mixed_precision="bf16"))
    assert fused.gradients == 0 and fused.weights * GB == 4 * (unet + layers) + 2 * (text - layers) + 4 * vae
    assert estimate_phase2(c, tiny_config(lora_rank=4)).optimizer == 0  # adapters: a few MB, not counted
    xl = Components(**build_tiny_sdxl_components(), family=STABLE_DIFFUSION_XL)
    both = sum(p.numel() for e in (xl.text_encoder, xl.text_encoder_2) for p in e.parameters())
    assert estimate_phase2(xl, tiny_config(lora_rank=4)).weights * GB == 4 * (
        sum(p.numel() for p in xl.unet.parameters()) + both + sum(p.numel() for p in xl.vae.parameters()))
    line = memory_warning(full, full.total / 2, "this GPU")
    assert "phase 2 needs at least" in line and "--lora-rank 4" in line and "\n" not in line
    assert memory_warning(full, full.total * 2, "this GPU") is None and memory_warning(full, None, "x") is None


def test_extract_warns_before_a_phase2_that_cannot_fit(tmp_path, scene128, monkeypatch, capsys):
    from breakascene.training import recipe

    monkeypatch.setattr(recipe, "device_memory", lambda device: 1e-6)  # a device with almost no memory
    extract(scene128, tiny_config(), tmp_path / "run", components=tiny(), progress=False)
    assert "warning: phase 2 needs at least" in capsys.readouterr().err
    extract(scene128, tiny_config(phase2_steps=0), tmp_path / "run1", components=tiny(), progress=False)
    assert "phase 2" not in capsys.readouterr().err  # no phase 2, nothing to warn about


def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch):
    from breakascene.training.preflight import resolve_device

    monkeypatch.setattr(memory, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="hundreds of times slower"):
        resolve_device(ExtractConfig(device="cpu", mixed_precision="bf16"))
    assert memory.machine_facts("cpu")[1] is False
    monkeypatch.setattr(memory, "cpu_has_fast_bf16", lambda: True)
    assert memory.machine_facts("cpu")[1] is True
