"""SDXL through the family seam, on the tiny random SDXL model: prompts encoded as SDXL's pipeline does, handles in
both text encoders, the loss layers, resume, and run folders that stock ``StableDiffusionXLPipeline`` loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from breakascene.attention import AttentionStore, attention_grid, capture_layer_names, install_capture
from breakascene.handles import load_handles, load_second_handles, make_handles
from breakascene.inference.pipeline import load_pipeline
from breakascene.models.families.sdxl import STABLE_DIFFUSION_XL
from breakascene.models.loading import Components, load_components, native_resolution
from breakascene.models.tiny_sdxl import TINY_SDXL_MODEL_ID, TINY_SDXL_RESOLUTION, build_tiny_sdxl_components
from breakascene.run_folder import partial_path
from breakascene.scene import load_scene
from breakascene.training.recipe import extract
from breakascene.training.trainer import Trainer
from helpers.ablations import ABLATION_METHODS, check_ablation
from helpers.resume import interrupt_then_resume
from helpers.tiny import shapes_scene, tiny_config

PROMPT = "a photo of a dog on the beach"


def sdxl() -> Components:
    return Components(**build_tiny_sdxl_components(), family=STABLE_DIFFUSION_XL)


def sdxl_config(**overrides):
    return tiny_config(model=TINY_SDXL_MODEL_ID, **overrides)


def _pipeline(c: Components) -> StableDiffusionXLPipeline:
    return c.family.make_pipeline(c)


def test_builtin_tiny_sdxl_loads_as_the_sdxl_family_at_its_native_size():
    c = load_components(TINY_SDXL_MODEL_ID)
    assert c.family is STABLE_DIFFUSION_XL and c.text_encoder_2 is not None
    assert c.native_resolution == TINY_SDXL_RESOLUTION == native_resolution(TINY_SDXL_MODEL_ID)


def test_prompt_encoding_is_the_sdxl_pipelines():
    """Hidden states, pooled embedding and time ids equal StableDiffusionXLPipeline's own, bit for bit."""
    c = sdxl()
    pipe = _pipeline(c)
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
        time_ids = pipe._get_add_time_ids((300, 400), (12, 34), (128, 128), dtype=torch.float32,
                                          text_encoder_projection_dim=c.text_encoder_2.config.projection_dim)
        size = STABLE_DIFFUSION_XL.size_conditioning((300, 400), (12, 34), (128, 128))[None]
        ours = STABLE_DIFFUSION_XL.encode_prompt(c, STABLE_DIFFUSION_XL.tokenize(c, [PROMPT]), "cpu", size)
    assert ours.hidden.shape == (1, 77, 32 + 48) and torch.equal(ours.hidden, hidden)
    assert torch.equal(ours.pooled, pooled)
    assert torch.equal(ours.time_ids, time_ids)
    ids = STABLE_DIFFUSION_XL.tokenize(c, [PROMPT])
    assert ids.shape == (1, 2, 77) and not torch.equal(ids[0, 0], ids[0, 1])  # the second pads with "!"
    assert torch.equal(STABLE_DIFFUSION_XL.handle_search_ids(ids), ids[:, 0])


def test_the_loss_layers_are_the_innermost_down_and_up_levels_without_mid():
    """At latent/4 (32x32 at 1024 px: down_blocks.2 and up_blocks.0 in SDXL; 4x4 here) and never the mid block."""
    c = build_tiny_sdxl_components()
    unet = c["unet"]
    grid = attention_grid(16, 16)
    assert grid == (4, 4)
    store = AttentionStore(query_tokens=grid[0] * grid[1])
    install_capture(unet, store)
    latents = torch.randn(1, 4, 16, 16)
    hidden, pooled = torch.randn(1, 77, 80), torch.randn(1, 48)
    with torch.no_grad():
        unet(latents, torch.tensor([500]), hidden,
             added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]])})
    recorded = {name.split(".")[0] + "." + name.split(".")[1] for name in store.layer_names}
    assert recorded == {"down_blocks.2", "up_blocks.0"}
    assert not any(name.startswith("mid_block") for name in capture_layer_names(unet))
    # down_blocks.2: 1 resnet layer x 2 transformer layers; up_blocks.0: 2 layers x 2 (the SDXL pattern, scaled)
    assert len(store.layer_names) == 2 + 4
    assert store.mean_map(*grid).shape == (1, 4, 4, 77)


def test_size_conditioning_follows_the_photos_resize_and_crop():
    photo = Image.new("RGB", (400, 300), (120, 80, 40))  # landscape: the centred square drops 50 px each side
    mask = Image.new("L", (400, 300), 0)
    mask.paste(255, (150, 100, 250, 200))
    scene = load_scene(photo, [mask], 128)
    trainer = Trainer(scene, sdxl_config(), sdxl(), make_handles(1), "cpu")
    trainer.setup()
    crop_left = round(50 * 128 / 300)
    expected = torch.tensor([[300.0, 400, 0, crop_left, 128, 128]] * 2)  # the mirror's crop is centred too
    assert torch.equal(trainer.size_conditioning[0], expected)
    batch = trainer.sample_batch()
    assert batch.size_conditioning.shape == (1, 6) and batch.input_ids.shape == (1, 2, 77)


@pytest.mark.parametrize("method", ABLATION_METHODS)
def test_the_papers_four_ablations_switch_off_their_part_on_sdxl(method):
    """The evaluation's ablations (their switches from METHODS) act on SDXL as on SD: each removes its part only."""
    check_ablation(method, sdxl_config, sdxl(), shapes_scene())


def test_phase1_changes_only_the_handle_rows_in_both_tables(tmp_path):
    before = sdxl()
    tables = [e.get_input_embeddings().weight.detach().clone() for e in (before.text_encoder, before.text_encoder_2)]
    result = extract(shapes_scene(), sdxl_config(phase1_steps=3, phase2_steps=0, phase1_lr=1e-2), tmp_path / "run",
                     components=sdxl(), progress=False)
    trained = StableDiffusionXLPipeline.from_pretrained(tmp_path / "run")
    fresh = sdxl()
    second = load_second_handles(tmp_path / "run" / "handles.safetensors")
    for k, (tokenizer, encoder, fresh_encoder, vectors) in enumerate([
        (trained.tokenizer, trained.text_encoder, fresh.text_encoder, result.handle_vectors),
        (trained.tokenizer_2, trained.text_encoder_2, fresh.text_encoder_2, second),
    ]):
        table, vocab = encoder.get_input_embeddings().weight.detach(), tables[k].shape[0]
        assert torch.equal(table[:vocab], tables[k])  # every pre-existing row, bit for bit, in both tables
        ids = tokenizer.convert_tokens_to_ids(result.tokens)
        assert ids == list(range(vocab, vocab + 3))
        assert vectors.shape == (3, table.shape[1]) and torch.equal(table[ids], vectors)
        init = fresh_encoder.get_input_embeddings().weight[tokenizer(result.handles[0].init_word,
                                                                     add_special_tokens=False).input_ids[0]]
        assert not torch.allclose(vectors[0], init)  # the handle moved in this table too
        for name, p in fresh_encoder.state_dict().items():
            if "token_embedding" not in name:
                assert torch.equal(p, encoder.state_dict()[name]), name
    assert all(torch.equal(p, trained.unet.state_dict()[n]) for n, p in fresh.unet.state_dict().items())


@pytest.mark.slow  # an SDXL run (about 4 s): `make test-slow`; SD's phase-2 test runs by default
def test_phase2_trains_the_unet_and_both_text_encoders_but_not_other_words(tmp_path):
    extract(shapes_scene(), sdxl_config(phase1_steps=1, phase2_steps=2, phase2_lr=1e-3), tmp_path / "run",
            components=sdxl(), progress=False)
    fresh, trained = sdxl(), StableDiffusionXLPipeline.from_pretrained(tmp_path / "run")
    changed = [n for n, p in fresh.unet.state_dict().items() if not torch.equal(p, trained.unet.state_dict()[n])]
    assert len(changed) > 0.9 * len(fresh.unet.state_dict())
    for name in ("text_encoder", "text_encoder_2"):
        before, after = getattr(fresh, name), getattr(trained, name)
        state = after.state_dict()
        assert any("encoder.layers" in n and not torch.equal(p, state[n]) for n, p in before.state_dict().items())
        vocab = before.get_input_embeddings().weight.shape[0]
        assert torch.equal(after.get_input_embeddings().weight[:vocab], before.get_input_embeddings().weight)


def test_stock_sdxl_pipeline_loads_the_run_and_prompts_with_the_handles(tmp_path):
    out = tmp_path / "run"
    result = extract(shapes_scene(), sdxl_config(), out, components=sdxl(), progress=False)
    assert not partial_path(out).exists()
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    tokens, vectors = load_handles(out / "handles.safetensors")
    assert tokens == result.tokens
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        assert tokenizer.convert_tokens_to_ids("<asset0>") in tokenizer("a photo of <asset0> and <bg>").input_ids
    image = pipe("a photo of <asset0> at <bg>", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (128, 128, 3)
    loaded, _ = load_pipeline(out, "cpu")
    assert isinstance(loaded, StableDiffusionXLPipeline)


def _weights(folder):
    from safetensors.torch import load_file

    return {f"{p.relative_to(folder)}:{k}": v for p in sorted(folder.rglob("*.safetensors"))
            for k, v in load_file(p).items()}


@pytest.mark.slow  # three SDXL runs each (about 4 s): `make test-slow`; SD's resume test runs by default
@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(bitwise_reproducible, tmp_path, lora_rank):
    cfg = sdxl_config(phase1_steps=2, phase2_steps=3, phase2_lr=1e-4, checkpoint_every=2, lora_rank=lora_rank,
                      lora_text_encoder=bool(lora_rank))
    extract(shapes_scene(), cfg, tmp_path / "straight", components=sdxl(), progress=False)
    out = tmp_path / "killed"
    steps_seen = interrupt_then_resume(shapes_scene(), cfg, out, sdxl, step=4)
    assert steps_seen[0] == 5  # after the phase-2 checkpoint at its step 2
    straight, resumed = _weights(tmp_path / "straight"), _weights(out)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow  # an SDXL LoRA run and its loading (about 3 s): `make test-slow`
def test_a_lora_run_loads_with_the_handles_in_both_text_encoders(tmp_path):
    out = tmp_path / "run"
    extract(shapes_scene(), sdxl_config(lora_rank=4, lora_text_encoder=True, phase2_lr=1e-2), out,
            components=sdxl(), progress=False)
    assert {"text_encoder_lora.safetensors", "text_encoder_2_lora.safetensors"} <= {p.name for p in out.iterdir()}
    pipe, info = load_pipeline(out, "cpu")
    assert isinstance(pipe, StableDiffusionXLPipeline) and info.lora.text_encoder_2 == "text_encoder_2_lora.safetensors"
    tokens, vectors = load_handles(out / "handles.safetensors")
    second = load_second_handles(out / "handles.safetensors")
    for tokenizer, encoder, table in ((pipe.tokenizer, pipe.text_encoder, vectors),
                                      (pipe.tokenizer_2, pipe.text_encoder_2, second)):
        rows = encoder.get_input_embeddings().weight.detach()[tokenizer.convert_tokens_to_ids(tokens)]
        assert torch.equal(rows, table)
    fresh = sdxl()  # the adapters were merged into the second text encoder too, as plain layers
    merged = pipe.text_encoder_2.state_dict()
    assert merged.keys() == fresh.text_encoder_2.state_dict().keys()
    assert any(not torch.equal(p, merged[n]) for n, p in fresh.text_encoder_2.state_dict().items()
               if "token_embedding" not in n)


@pytest.mark.slow  # an SDXL run and an edit: `make test-slow`
def test_editing_runs_through_the_sdxl_inpainting_pipeline_and_keeps_the_outside(tmp_path):
    from breakascene.inference.editing import edit

    out = tmp_path / "run"
    extract(shapes_scene(), sdxl_config(), out, components=sdxl(), progress=False)
    photo = Image.fromarray((torch.rand(128, 160, 3) * 255).to(torch.uint8).numpy())
    region = Image.new("L", (160, 128), 0)
    region.paste(255, (40, 30, 120, 90))
    paths = edit(out, photo, [(region, "a photo of <asset0>")], steps=4, device="cpu", progress=False)
    final = torch.from_numpy(np.asarray(Image.open(paths[-1]).convert("RGB")))
    original = torch.from_numpy(np.asarray(photo))
    outside = torch.ones(128, 160, dtype=torch.bool)
    outside[30:90, 40:120] = False
    assert torch.equal(final[outside], original[outside])
    assert '(StableDiffusionXLInpaintPipeline,' in (paths[-1].parent / "edit.json").read_text()


def _without_weights(folder):
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return str(folder)


def test_an_sdxl_single_file_loads_as_sdxl_with_its_own_weights(tmp_path, monkeypatch):
    """The original SDXL layout (conditioner.embedders.0/1, label_emb) that models/ldm_layout.py writes; a local
    folder stands in for the stabilityai/stable-diffusion-xl-base-1.0 configs."""
    from safetensors.torch import save_file

    from breakascene.models import single_file
    from breakascene.models.ldm_layout import single_file_state_dict

    parts = build_tiny_sdxl_components()
    path = tmp_path / "tiny-sdxl.safetensors"
    save_file(single_file_state_dict(parts["unet"], parts["vae"], parts["text_encoder"],
                                     text_encoder_2=parts["text_encoder_2"]), str(path))
    stand_in = tmp_path / "config"
    StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed=7), add_watermarker=False).save_pretrained(stand_in)
    monkeypatch.setitem(single_file.SINGLE_FILE_CONFIGS, (single_file.SDXL, "epsilon"), _without_weights(stand_in))
    info = single_file.inspect_single_file(path)
    assert (info.family, info.prediction_type, info.prediction_source) == ("sdxl", "epsilon", "the SDXL default")
    assert native_resolution(str(path)) == 1024
    c = load_components(str(path))
    assert c.family is STABLE_DIFFUSION_XL
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, actual = parts[name].state_dict(), getattr(c, name).state_dict()
        assert actual.keys() == expected.keys() and all(torch.equal(actual[k], v) for k, v in expected.items()), name


# ------------------------------------------------------------------------------------------
# exports


@pytest.fixture(scope="module")
def sdxl_runs(tmp_path_factory):
    """A full and a LoRA (UNet + both text encoders, alpha != rank) run of the tiny SDXL model."""
    root = tmp_path_factory.mktemp("sdxl-runs")
    extract(shapes_scene(), sdxl_config(phase2_lr=1e-3), root / "full", components=sdxl(), progress=False)
    extract(shapes_scene(), sdxl_config(lora_rank=4, lora_alpha=2, lora_text_encoder=True, phase2_lr=1e-2),
            root / "lora", components=sdxl(), progress=False)
    return root


def _both_rows(pipe, words):
    ids = [tokenizer.convert_tokens_to_ids(words) for tokenizer in (pipe.tokenizer, pipe.tokenizer_2)]
    return [encoder.get_input_embeddings().weight.detach()[i] for encoder, i in
            zip((pipe.text_encoder, pipe.text_encoder_2), ids)]


@pytest.mark.slow  # two SDXL runs (the module fixture): `make test-slow`
def test_textual_inversion_export_holds_clip_l_and_clip_g_and_its_readme_runs(sdxl_runs, tmp_path):
    import re

    from safetensors.torch import load_file

    from breakascene.inference.exports import export

    run = sdxl_runs / "full"
    out = export(run, tmp_path / "ti", format="textual-inversion")
    tokens, first = load_handles(run / "handles.safetensors")
    second = load_second_handles(run / "handles.safetensors")
    for k, token in enumerate(tokens):
        tables = load_file(out / f"{token.strip('<>')}.safetensors")
        assert set(tables) == {"clip_l", "clip_g"}
        assert torch.equal(tables["clip_l"][0], first[k]) and torch.equal(tables["clip_g"][0], second[k])
    (block,) = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.DOTALL)
    namespace: dict = {}
    exec(compile(block, "README", "exec"), namespace)  # the base model (builtin:tiny-sdxl) plus the handles
    rows = _both_rows(namespace["pipe"], tokens)
    assert torch.equal(rows[0], first) and torch.equal(rows[1], second)


@pytest.mark.slow  # uses the two SDXL runs: `make test-slow`
def test_webui_checkpoint_of_a_full_run_loads_back_with_from_single_file(sdxl_runs, tmp_path):
    from safetensors.torch import load_file

    from breakascene.inference.exports import export
    from breakascene.models.single_file import inspect_single_file

    run = sdxl_runs / "full"
    out = export(run, tmp_path / "comfy", format="comfyui", name="pets")
    checkpoint = out / "models" / "checkpoints" / "pets.safetensors"
    assert inspect_single_file(checkpoint).family == "sdxl"
    stand_in = tmp_path / "config"
    StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed=7), add_watermarker=False).save_pretrained(stand_in)
    loaded = StableDiffusionXLPipeline.from_single_file(str(checkpoint), config=_without_weights(stand_in),
                                                        add_watermarker=False)
    run_pipe, _ = load_pipeline(run, "cpu")
    tokens, first = load_handles(run / "handles.safetensors")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, actual = getattr(run_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            rows = actual[key].shape[0]  # a token table is cut back to the base vocabulary
            assert torch.equal(actual[key], value[:rows] if "token_embedding" in key else value), (name, key)
    for k, token in enumerate(tokens):  # the embeddings give back both rows
        tables = load_file(out / "models" / "embeddings" / f"pets_{token.strip('<>')}.safetensors")
        assert set(tables) == {"clip_l", "clip_g"} and torch.equal(tables["clip_l"][0], first[k])


@pytest.mark.slow  # uses the two SDXL runs: `make test-slow`
def test_webui_lora_of_an_sdxl_run_has_te1_and_te2_keys_and_loads_in_diffusers(sdxl_runs, tmp_path):
    from safetensors.torch import load_file

    from breakascene.inference.exports import export

    run = sdxl_runs / "lora"
    out = export(run, tmp_path / "a1111", format="a1111", name="pets")
    lora_file = out / "models" / "Lora" / "pets.safetensors"
    assert {key.split("_")[1] for key in load_file(lora_file)} == {"unet", "te1", "te2"}
    pipe = _pipeline(sdxl())
    pipe.load_lora_weights(str(lora_file))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    run_pipe, _ = load_pipeline(run, "cpu")
    for name in ("unet", "text_encoder", "text_encoder_2"):
        expected = {k.replace(".base_layer", ""): v for k, v in getattr(run_pipe, name).state_dict().items()
                    if "lora_" not in k}
        actual = getattr(pipe, name).state_dict()
        keys = [k for k in actual if "token_embedding" not in k]
        assert all(torch.allclose(actual[k], expected[k], atol=1e-6) for k in keys), name


def test_low_vram_on_sdxl_adds_lora_and_says_so(tmp_path):
    from breakascene.models.loading import model_family
    from breakascene.training.memory import low_vram_options, with_low_vram

    options, notes = low_vram_options("cuda", True, True, family=STABLE_DIFFUSION_XL)
    assert options["lora_rank"] == 4 and any("SDXL: LoRA rank 4" in n for n in notes)
    assert "lora_rank" not in low_vram_options("cuda", True, True)[0]  # SD 1.x/2.x keeps the full phase 2
    chosen = with_low_vram({"low_vram": True, "model": TINY_SDXL_MODEL_ID, "device": "cpu"})
    assert chosen["lora_rank"] == 4 and chosen["gradient_checkpointing"]
    assert "lora_rank" not in with_low_vram({"low_vram": True, "model": "builtin:tiny", "device": "cpu"})
    assert with_low_vram({"low_vram": True, "model": TINY_SDXL_MODEL_ID, "device": "cpu", "lora_rank": 16})[
        "lora_rank"] == 16  # the user's own flag wins
    folder = tmp_path / "xl"
    _pipeline(sdxl()).save_pretrained(folder)
    assert model_family(str(folder)) is STABLE_DIFFUSION_XL and model_family("builtin:shapes") is not STABLE_DIFFUSION_XL
