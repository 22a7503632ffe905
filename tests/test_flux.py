"""FLUX.1 through the family seam, on the tiny random FLUX model: handles as T5 tokens, prompts encoded as FluxPipeline
does, the joint-attention maps, the packed grid, flow matching, LoRA on the transformer, and run folders that stock
``FluxPipeline`` loads."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FluxPipeline

from breakascene.attention import AttentionStore
from breakascene.handles import load_handles, make_handles
from breakascene.losses import reconstruction_loss
from breakascene.models.families.flux import attention as flux_attention
from breakascene.models.families.flux import FLUX, pack, unpack
from breakascene.models.loading import Components, load_components, native_resolution
from breakascene.models.tiny_flux import TINY_FLUX_MODEL_ID, TINY_FLUX_RESOLUTION, build_tiny_flux_components
from breakascene.training.recipe import extract
from breakascene.training.trainer import Trainer
from helpers.ablations import ABLATION_METHODS, check_ablation
from helpers.resume import interrupt_then_resume
from helpers.tiny import shapes_scene, tiny_config

PROMPT = "a photo of a dog on the beach"


def flux() -> Components:
    parts = build_tiny_flux_components()
    transformer = parts.pop("transformer")
    return Components(**parts, unet=transformer, family=FLUX)


def flux_config(**overrides):
    """A tiny FLUX run's config: a full phase 2 unless ``overrides`` say otherwise (extract's default on FLUX is
    LoRA 16, ModelFamily.training_defaults: tests/test_family_seam.py)."""
    return tiny_config(model=TINY_FLUX_MODEL_ID, **{"lora_rank": 0, **overrides})


def test_builtin_tiny_flux_loads_as_the_flux_family_at_its_native_size():
    c = load_components(TINY_FLUX_MODEL_ID)
    assert c.family is FLUX and type(c.unet).__name__ == "FluxTransformer2DModel"
    assert c.native_resolution == TINY_FLUX_RESOLUTION == native_resolution(TINY_FLUX_MODEL_ID)
    assert c.prediction_type == "flow"


def test_the_full_size_shape_is_flux_dev_s_transformer():
    from breakascene.models.tiny_flux import FLUX_DEV_SHAPE, flux_transformer

    with torch.device("meta"):  # counted, not allocated
        transformer = flux_transformer(FLUX_DEV_SHAPE)
    assert sum(p.numel() for p in transformer.parameters()) == 11_901_408_320  # FLUX.1-dev's transformer
    assert (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)) == (19, 38)


def test_handles_take_t5_xxl_s_spare_rows_and_never_shrink_its_table():
    """T5-XXL's table has 32128 rows for 32100 tokens: the handles get rows inside it, the table keeps its shape (the
    checkpoint stays loadable with T5-XXL's own config), and every other row stays as it was."""
    from breakascene.handles import attach_handles_to_each, resolve_init_words

    c = flux()
    spare = len(c.tokenizer_2) + 8
    c.text_encoder_2.resize_token_embeddings(spare, mean_resizing=False)
    before = c.text_encoder_2.get_input_embeddings().weight.detach().clone()
    handles = resolve_init_words(c.tokenizer_2, make_handles(2), default="dog")
    attach_handles_to_each([c.tokenizer_2], [c.text_encoder_2], handles)
    table = c.text_encoder_2.get_input_embeddings().base.weight
    ids = c.tokenizer_2.convert_tokens_to_ids([h.token for h in handles])
    assert table.shape[0] == spare == c.text_encoder_2.config.vocab_size and max(ids) < spare
    others = [i for i in range(spare) if i not in ids]
    assert torch.equal(table[others], before[others])


@pytest.mark.parametrize("method", ABLATION_METHODS)
def test_the_papers_four_ablations_switch_off_their_part_on_flux(method):
    check_ablation(method, flux_config, flux(), shapes_scene())


def test_t5_s_dropout_is_off_so_its_checkpointing_training_mode_changes_nothing():
    """T5-XXL's config has dropout 0.1; transformers checkpoints T5's layers only in training mode. So training turns
    the dropout off and runs T5 in training mode when checkpointing, phase 1 included: the loss of a batch is the
    same every time, and the same as in eval mode."""
    from transformers import T5Config, T5EncoderModel

    c = flux()
    config = T5Config(**{**c.text_encoder_2.config.to_dict(), "dropout_rate": 0.1})
    c.text_encoder_2 = T5EncoderModel(config)  # the tiny T5 with T5-XXL's dropout
    trainer = Trainer(shapes_scene(), flux_config(gradient_checkpointing=True), c, make_handles(2), "cpu")
    trainer.setup()
    assert all(m.p == 0 for m in c.text_encoder_2.modules() if isinstance(m, torch.nn.Dropout))
    batch = trainer.sample_batch()
    c.text_encoder_2.train()
    losses = [trainer.loss_step(batch)["total"] for _ in range(2)]
    c.text_encoder_2.eval()
    assert torch.equal(losses[0], losses[1]) and torch.allclose(losses[0], trainer.loss_step(batch)["total"])


def test_clip_gives_the_pooled_vector_only_and_never_trains():
    """FLUX's CLIP carries no handle: frozen, stored in the half dtype with the other frozen weights, and no
    gradient reaches it (the pooled vector is a constant of the prompt)."""
    c = flux()
    trainer = Trainer(shapes_scene(), flux_config(mixed_precision="bf16"), c, make_handles(2), "cpu")
    trainer.setup()
    assert not any(p.requires_grad for p in c.text_encoder.parameters())
    assert c.text_encoder.dtype == torch.bfloat16
    trainer.loss_step(trainer.sample_batch())["total"].backward()
    assert all(p.grad is None for p in c.text_encoder.parameters())
    assert trainer.embedding.handle_vectors.grad is not None


def test_flux_dev_fits_24_gb_only_with_an_nf4_transformer():
    """The phase-2 estimate (weights, gradients, Adam state) of FLUX.1-dev's full architecture, counted on the meta
    device: LoRA on a bf16 transformer holds over 24 GB before any activation; on an NF4 one it leaves room."""
    from breakascene.config import ExtractConfig
    from breakascene.models.tiny_flux import FLUX_DEV_SHAPE, build_flux_components
    from breakascene.training.memory_estimate import estimate_phase2

    with torch.device("meta"):
        parts = build_flux_components(FLUX_DEV_SHAPE)
    c = Components(**{k: v for k, v in parts.items() if k != "transformer"}, unet=parts["transformer"], family=FLUX)
    lora = dict(model=TINY_FLUX_MODEL_ID, lora_rank=16, mixed_precision="bf16")
    bf16 = estimate_phase2(c, ExtractConfig(**lora))
    nf4 = estimate_phase2(c, ExtractConfig(**lora, quantize_base="nf4"))
    assert bf16.total * 1024**3 > 24e9 > nf4.total * 1024**3 + 6e9  # 6 GB left for activations and adapters
    assert bf16.gradients == nf4.gradients == bf16.optimizer == 0  # LoRA adapters count as nothing here
    t5_and_clip = 2 * sum(p.numel() for p in (*c.text_encoder.parameters(), *c.text_encoder_2.parameters()))
    assert nf4.weights * 1024**3 > t5_and_clip  # both encoders are held, CLIP too


def test_prompt_encoding_is_the_flux_pipelines():
    """T5's states and CLIP's pooled vector equal FluxPipeline.encode_prompt's, bit for bit."""
    c = flux()
    pipe = FLUX.make_pipeline(c)
    with torch.no_grad():
        hidden, pooled, _ = pipe.encode_prompt(PROMPT, prompt_2=None, device="cpu")
        ours = FLUX.encode_prompt(c, FLUX.tokenize(c, [PROMPT]), "cpu")
    assert ours.hidden.shape == (1, 512, 32) and torch.equal(ours.hidden, hidden)
    assert torch.equal(ours.pooled, pooled)


def test_handles_are_single_t5_tokens_found_in_the_t5_ids():
    c = flux()
    trainer = Trainer(shapes_scene(), flux_config(), c, make_handles(2), "cpu")
    trainer.setup()
    tokenizer = c.tokenizer_2
    ids = FLUX.tokenize(c, ["a photo of <asset0> and <bg>"])
    assert ids.t5.shape == (1, 512) and ids.clip.shape == (1, 77)
    pieces = tokenizer.convert_ids_to_tokens(ids.t5[0, :6].tolist())
    assert pieces == ["▁a", "▁photo", "▁of", "<asset0>", "▁and", "<bg>"]  # no stray "▁" before a handle, no BOS
    assert trainer.handle_ids == tokenizer.convert_tokens_to_ids(["<asset0>", "<asset1>", "<bg>"])
    batch = trainer.sample_batch()
    t5 = FLUX.handle_search_ids(batch.input_ids)[0]
    assert [int(t5[p]) for p in batch.handle_positions] == [trainer.handle_ids[i] for i in batch.subset]
    # the handles are rows of T5's table only: CLIP has no handle tokens
    assert c.tokenizer.convert_tokens_to_ids("<asset0>") == c.tokenizer.unk_token_id


def _run_captured_block(transformer):
    """The (first) captured dual-stream block on fixed inputs, 12 text and 8x8 image tokens: (text out, image out)."""
    from breakascene.models.families.flux import image_ids

    torch.manual_seed(1)
    name = flux_attention.capture_block_names(transformer)[0]
    block = transformer.transformer_blocks[int(name.split(".")[1])]
    dim = transformer.inner_dim
    image, text, temb = torch.randn(1, 64, dim), torch.randn(1, 12, dim), torch.randn(1, dim)
    rotary = transformer.pos_embed(torch.cat([torch.zeros(12, 3), image_ids(16, 16, "cpu")]))
    with torch.no_grad():
        return block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)


def test_the_capture_leaves_the_block_output_unchanged_and_records_softmax_of_its_own_q_and_k(monkeypatch):
    transformer = flux().unet
    stock = _run_captured_block(transformer)

    seen = []
    original = flux_attention.dispatch_attention_fn

    def spy(query, key, value, **kwargs):  # the Q and K the block attends with: normed and RoPE'd
        seen.append((query, key))
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(flux_attention, "dispatch_attention_fn", spy)
    store = AttentionStore(query_tokens=64)
    flux_attention.install_flux_capture(transformer, store)
    captured = _run_captured_block(transformer)
    assert all(torch.equal(a, b) for a, b in zip(stock, captured))  # text and image outputs, bit for bit

    assert len(store.maps) == 1 and len(seen) == 1
    query, key = seen[0]  # (1, 12 + 64, heads, d)
    d = query.shape[-1]
    probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", query[:, 12:], key[:, :12]) / math.sqrt(d), dim=-1)
    assert store.maps[0].shape == (1, 64, 12)
    torch.testing.assert_close(store.maps[0], probs.mean(dim=1))
    torch.testing.assert_close(store.maps[0].sum(-1), torch.ones(1, 64))


def test_the_maps_come_from_the_later_dual_stream_blocks():
    assert flux_attention.capture_block_names(flux().unet) == ["transformer_blocks.1.attn.processor"]

    class Nineteen:
        transformer_blocks = [None] * 19

    assert [n.split(".")[1] for n in flux_attention.capture_block_names(Nineteen)] == ["15", "16", "17", "18"]


def test_packing_is_flux_pipelines_and_a_quadrant_mask_weighs_exactly_its_tokens():
    latents = torch.randn(2, 16, 16, 16)
    assert torch.equal(pack(latents), FluxPipeline._pack_latents(latents, 2, 16, 16, 16))
    assert torch.equal(unpack(pack(latents), 16, 16), latents)

    pred, target = torch.randn(1, 16, 16, 16), torch.randn(1, 16, 16, 16)
    mask = torch.zeros(1, 16, 16)
    mask[:, :8, 8:] = 1  # the top-right quadrant of the latent grid
    tokens = torch.arange(64).view(8, 8)[:4, 4:].flatten()  # the packed tokens of that quadrant, row by row
    packed_loss = (pack(pred) - pack(target))[0, tokens].pow(2).mean()
    torch.testing.assert_close(reconstruction_loss(pred, target, mask, normalize_by_area=True), packed_loss)


def test_training_is_flow_matching_on_the_packed_grid():
    c = flux()
    trainer = Trainer(shapes_scene(), flux_config(), c, make_handles(2), "cpu")
    trainer.setup()
    assert trainer.grid == (8, 8)  # 128 px -> 16x16 latent -> 8x8 image tokens: one map cell per token
    batch = trainer.sample_batch()
    assert batch.timesteps.dtype == torch.float32 and 0 < float(batch.timesteps) <= 1000
    sigma = float(batch.timesteps) / 1000
    # target is noise - x0 and the input (1 - sigma) x0 + sigma noise: so input + (1 - sigma) * target = noise
    noise = batch.noisy_latents + (1 - sigma) * batch.target
    x0 = noise - batch.target
    torch.testing.assert_close(batch.noisy_latents, (1 - sigma) * x0 + sigma * noise)
    terms = trainer.loss_step(batch)
    assert set(terms) == {"rec", "attention", "total"} and torch.isfinite(terms["total"])
    assert trainer.store.layer_names == ["transformer_blocks.1.attn.processor"]


def test_phase1_changes_only_the_handle_rows_of_t5(tmp_path):
    before = flux()
    result = extract(shapes_scene(), flux_config(phase1_steps=3, phase2_steps=0, phase1_lr=1e-2), tmp_path / "run",
                     components=flux(), progress=False)
    trained = FluxPipeline.from_pretrained(tmp_path / "run")
    table = trained.text_encoder_2.get_input_embeddings().weight.detach()
    old = before.text_encoder_2.get_input_embeddings().weight
    assert torch.equal(table[: old.shape[0]], old)  # every pre-existing T5 row, bit for bit
    ids = trained.tokenizer_2.convert_tokens_to_ids(result.tokens)
    assert ids == list(range(old.shape[0], old.shape[0] + 3)) and torch.equal(table[ids], result.handle_vectors)
    models = {"text_encoder": before.text_encoder, "transformer": before.unet, "vae": before.vae,
              "text_encoder_2": before.text_encoder_2}
    for name, model in models.items():  # everything but T5's table (its "shared" embedding), bit for bit
        saved = getattr(trained, name).state_dict()
        assert all(torch.equal(p, saved[n]) for n, p in model.state_dict().items()
                   if "shared" not in n and "embed_tokens" not in n), name


# (with LoRA on T5 too: a slow test, about 2 s more)
@pytest.mark.parametrize("lora_t5", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["transformer", "transformer+t5"])
def test_lora_phase2_trains_the_attention_projections_and_loads_with_the_handles(tmp_path, lora_t5):
    from breakascene.inference.pipeline import load_pipeline

    out = tmp_path / "run"
    extract(shapes_scene(), flux_config(lora_rank=4, lora_text_encoder=lora_t5, phase2_lr=1e-2), out,
            components=flux(), progress=False)
    from safetensors.torch import load_file

    keys = load_file(out / "pytorch_lora_weights.safetensors").keys()
    for module in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
        assert f"transformer.transformer_blocks.0.attn.{module}.lora_A.weight" in keys, module  # peft's, as diffusers'
    assert all(k.startswith("transformer.") for k in keys)
    assert (out / "text_encoder_2_lora.safetensors").is_file() == lora_t5
    pipe, info = load_pipeline(out, "cpu")
    assert isinstance(pipe, FluxPipeline) and info.lora.text_encoder_2 == ("text_encoder_2_lora.safetensors" if lora_t5 else None)
    tokens, vectors = load_handles(out / "handles.safetensors")
    rows = pipe.text_encoder_2.get_input_embeddings().weight.detach()[pipe.tokenizer_2.convert_tokens_to_ids(tokens)]
    assert torch.equal(rows, vectors)
    fresh = flux().unet
    changed = [n for n, p in fresh.state_dict().items() if not torch.equal(p, pipe.transformer.state_dict()[n])]
    assert any(".attn.add_k_proj." in n for n in changed) and not any(".ff." in n for n in changed)


@pytest.mark.slow  # three FLUX runs (about 4 s): `make test-slow`; SD's resume test runs by default
def test_a_resumed_lora_run_ends_with_the_same_weights_as_an_uninterrupted_one(bitwise_reproducible, tmp_path):
    from safetensors.torch import load_file

    cfg = flux_config(phase1_steps=2, phase2_steps=3, phase2_lr=1e-3, checkpoint_every=2, lora_rank=4,
                      lora_text_encoder=True)
    extract(shapes_scene(), cfg, tmp_path / "straight", components=flux(), progress=False)
    out = tmp_path / "killed"
    steps_seen = interrupt_then_resume(shapes_scene(), cfg, out, flux, step=4)
    assert steps_seen[0] == 5  # after the phase-2 checkpoint at its step 2
    for name in ("handles.safetensors", "pytorch_lora_weights.safetensors", "text_encoder_2_lora.safetensors"):
        straight, resumed = load_file(tmp_path / "straight" / name), load_file(out / name)
        assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow  # class images made with the FLUX pipeline, then a run (about 5 s): `make test-slow`
def test_prior_preservation_makes_class_images_with_flux_itself(tmp_path):
    out = tmp_path / "run"
    result = extract(shapes_scene(), flux_config(lora_rank=4, prior_preservation=True, num_class_images=2), out,
                     components=flux(), progress=False)
    assert len(list((out / "class_images").glob("*.png"))) == 2
    # phase 1 trains only the handles, which the class prompt cannot reach: its prior loss is not computed
    assert [(e["phase"], "prior" in e) for e in result.losses] == [("phase1", False), ("phase2", True)]


def test_stock_flux_pipeline_loads_a_full_run_and_prompts_with_the_handles(tmp_path):
    out = tmp_path / "run"
    result = extract(shapes_scene(), flux_config(phase2_lr=1e-4), out, components=flux(), progress=False)
    pipe, fresh = FluxPipeline.from_pretrained(out), flux()
    # a full phase 2 trained the transformer and T5's layers, never T5's other rows
    old = fresh.text_encoder_2.get_input_embeddings().weight
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[: old.shape[0]], old)
    assert not torch.equal(pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight,
                           fresh.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight)
    assert not torch.equal(pipe.transformer.proj_out.weight, fresh.unet.proj_out.weight)
    assert load_handles(out / "handles.safetensors")[0] == result.tokens
    ids = pipe.tokenizer_2("a photo of <asset0> at <bg>").input_ids
    assert pipe.tokenizer_2.convert_tokens_to_ids("<asset0>") in ids and pipe.tokenizer_2.convert_tokens_to_ids("▁") not in ids
    image = pipe("a photo of <asset0> at <bg>", num_inference_steps=2, height=128, width=128, output_type="np").images[0]
    assert image.shape == (128, 128, 3) and (image >= 0).all() and (image <= 1).all()
    # what generate samples with when not told (and the web app shows), read from the run's transformer config
    from breakascene.inference.generation import run_sampling_defaults

    assert run_sampling_defaults(out) == (28, 3.5)  # dev: the guidance embedding
    config = out / "transformer" / "config.json"
    config.write_text(config.read_text().replace('"guidance_embeds": true', '"guidance_embeds": false'))
    assert run_sampling_defaults(out) == (4, 0.0)  # schnell


def test_editing_is_blended_latent_diffusion_through_flux_inpainting_and_keeps_the_outside(tmp_path):
    """edit on a FLUX run: FluxInpaintPipeline with FLUX's own sampler and defaults; after the last step the latents
    outside the region are the photo's whatever the prompt (the blend), and the pixels outside come back exactly."""
    import json

    import numpy as np
    from PIL import Image

    from breakascene.inference.editing import edit, edit_pipeline
    from breakascene.inference.pipeline import load_pipeline

    out = tmp_path / "run"
    extract(shapes_scene(), flux_config(), out, components=flux(), progress=False)
    photo = Image.fromarray((torch.rand(120, 168, 3) * 255).to(torch.uint8).numpy())  # rounded to 128 x 160
    region = Image.new("L", (168, 120), 0)
    region.paste(255, (48, 32, 112, 96))
    with pytest.warns(UserWarning, match="multiples of 16"):
        paths = edit(out, photo, [(region, "a photo of <asset0>")], steps=4, device="cpu", progress=False)
    final = torch.from_numpy(np.asarray(Image.open(paths[-1]).convert("RGB")))
    original = torch.from_numpy(np.asarray(photo.resize((160, 128), Image.LANCZOS)))
    inside = torch.zeros(128, 160, dtype=torch.bool)
    inside[34:102, 46:114] = True  # the mask resized with the photo, with a margin for its soft edge
    outside = ~torch.from_numpy(np.asarray(region.resize((160, 128), Image.BILINEAR)) >= 128)
    assert torch.equal(final[outside], original[outside]) and not torch.equal(final[inside], original[inside])
    record = json.loads((paths[-1].parent / "edit.json").read_text())
    assert "(FluxInpaintPipeline," in record["method"] and record["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert (record["steps"], record["steps_run"], record["guidance"]) == (4, 3, 3.5)

    pipe = edit_pipeline(load_pipeline(out, "cpu")[0])
    last = {}

    def keep_last(pipeline, step, timestep, tensors):
        last[prompt] = tensors["latents"]
        return tensors

    square = Image.new("L", (128, 128), 0)
    square.paste(255, (0, 0, 64, 64))  # the top-left quarter: packed tokens of rows 0-3, columns 0-3 of the 8 x 8
    for prompt in ("a photo of <asset0>", "a photo of <bg> in the snow"):
        pipe(prompt, image=Image.new("RGB", (128, 128), (90, 140, 200)), mask_image=square, height=128, width=128,
             strength=0.75, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
             callback_on_step_end=keep_last)
    a, b = (last[p].view(8, 8, -1) for p in last)
    assert torch.equal(a[4:], b[4:]) and torch.equal(a[:, 4:], b[:, 4:])  # outside: the photo's latents
    assert not torch.equal(a[:4, :4], b[:4, :4])  # inside: what each prompt made


def test_attention_views_read_the_capture_blocks_on_the_packed_grid_and_leave_the_image_unchanged(tmp_path):
    """generate --attention-maps on FLUX: one map per handle in the prompt, found in the T5 ids, on the packed grid
    (8 x 8 for 128 px); over all 512 text tokens each pixel's maps sum to 1; the image is the one made without
    capture, bit for bit, and the stock processors are back afterwards."""
    import numpy as np

    from breakascene.inference.attention_view import generate_with_attention
    from breakascene.inference.pipeline import load_pipeline

    run = tmp_path / "run"
    extract(shapes_scene(), flux_config(phase1_steps=1, phase2_steps=1), run, components=flux(), progress=False)
    pipe = load_pipeline(run, "cpu")[0]
    stock = {k: type(v) for k, v in pipe.transformer.attn_processors.items()}
    prompt, settings = "a photo of <asset1> at <bg>", dict(num_inference_steps=2, height=128, width=128)
    image, maps, full = generate_with_attention(pipe, prompt, ["<asset0>", "<asset1>", "<bg>"], return_full=True,
                                                generator=torch.Generator().manual_seed(0), **settings)
    assert list(maps) == ["<asset1>", "<bg>"] and all(m.shape == (8, 8) for m in maps.values())
    assert full.shape == (8, 8, 512)
    torch.testing.assert_close(full.sum(dim=-1), torch.ones(8, 8), atol=1e-4, rtol=0)
    ids = pipe.tokenizer_2(prompt, padding="max_length", max_length=512, return_tensors="pt").input_ids[0]
    position = int((ids == pipe.tokenizer_2.convert_tokens_to_ids("<bg>")).nonzero())
    assert torch.equal(maps["<bg>"], full[..., position])
    plain = pipe(prompt, generator=torch.Generator().manual_seed(0), **settings).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(plain))
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == stock


def _readme_code(folder) -> dict:
    """Runs the one Python block of an export's README as a user would, but for its last line, a 28-step 1024 px
    image (seconds even for the tiny model; the tests make it at 128 px in one step); returns its namespace."""
    import re

    (block,) = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), flags=re.DOTALL)
    block, last = block.rstrip().rsplit("\n", 1)
    assert last.startswith("image = pipe(")
    namespace: dict = {}
    exec(compile(block, "README", "exec"), namespace)
    return namespace


def test_a_lora_run_exports_for_comfyui_and_as_t5_embeddings_that_load_back_to_the_run(tmp_path):
    """comfyui: the transformer's adapters in diffusers' PEFT keys with their alpha, T5's as lora_te3_*, one t5xxl
    embedding per handle; textual-inversion: one t5 row per handle. Each README's code, run as written, rebuilds
    the run's own weights and handles in a stock FluxPipeline."""
    from safetensors.torch import load_file

    from breakascene.inference.exports import export
    from breakascene.inference.pipeline import load_pipeline

    run = tmp_path / "run"
    extract(shapes_scene(), flux_config(lora_rank=4, lora_alpha=8.0, lora_text_encoder=True, phase2_lr=1e-2), run,
            components=flux(), progress=False)
    tokens, vectors = load_handles(run / "handles.safetensors")
    expected = load_pipeline(run, "cpu")[0]  # the run as generate loads it: the adapters fused

    out = export(run, tmp_path / "comfy", format="comfyui", name="pets")
    lora = load_file(out / "models" / "loras" / "pets.safetensors")
    transformer_keys = [k for k in lora if k.startswith("transformer.")]
    t5_keys = [k for k in lora if k.startswith("lora_te3_encoder_block_")]
    assert transformer_keys and t5_keys and len(transformer_keys) + len(t5_keys) == len(lora)
    assert "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight" in lora
    assert float(lora["transformer.transformer_blocks.0.attn.to_add_out.alpha"]) == 8.0
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in lora
    for token, vector in zip(tokens, vectors):
        embedding = load_file(out / "models" / "embeddings" / f"pets_{token.strip('<>')}.safetensors")
        assert list(embedding) == ["t5xxl"] and torch.equal(embedding["t5xxl"][0], vector)
    readme = (out / "README.md").read_text()
    assert "embedding:pets_asset0" in readme and "models/loras/" in readme and "4096 != 768" in readme
    pipe = _readme_code(out)["pipe"]
    pipe.fuse_lora()  # the transformer's adapters as plain weights, to compare with the run's
    pipe.unload_lora_weights()
    for part in ("transformer", "text_encoder_2"):
        actual = getattr(pipe, part).state_dict()
        wanted = getattr(expected, part).state_dict()  # the run's T5: the adapters merged into plain layers
        shared = [k for k in wanted if "shared" not in k and "embed_tokens" not in k]
        assert any(not torch.equal(wanted[k], v) for k, v in getattr(flux(), "unet" if part == "transformer"
                                                                    else part).state_dict().items() if k in shared)
        assert all(torch.allclose(actual[k], wanted[k], atol=1e-6) for k in shared), part
    words = [f"pets_{t.strip('<>')}" for t in tokens]
    ids = pipe.tokenizer_2("a photo of pets_asset0").input_ids
    assert pipe.tokenizer_2.convert_tokens_to_ids("pets_asset0") in ids
    assert pipe.tokenizer_2.convert_tokens_to_ids("▁") not in ids  # the word takes its space, as in training
    table = pipe.text_encoder_2.get_input_embeddings().weight
    assert torch.equal(table[pipe.tokenizer_2.convert_tokens_to_ids(words)], vectors)

    out = export(run, tmp_path / "ti", format="textual-inversion")
    assert all(list(load_file(out / f"{t.strip('<>')}.safetensors")) == ["t5"] for t in tokens)
    pipe = _readme_code(out)["pipe"]
    table = pipe.text_encoder_2.get_input_embeddings().weight
    assert torch.equal(table[pipe.tokenizer_2.convert_tokens_to_ids(tokens)], vectors)
    image = pipe("a photo of <asset0> at the beach", num_inference_steps=1, height=128, width=128).images[0]
    assert image.size == (128, 128)  # the README's last line, with one step at the tiny model's size


def test_flux_exports_that_cannot_be_are_one_line_errors(tmp_path):
    from breakascene.errors import ConfigError
    from breakascene.inference.exports import export

    full = tmp_path / "full"
    extract(shapes_scene(), flux_config(phase1_steps=1, phase2_steps=1), full, components=flux(), progress=False)
    with pytest.raises(ConfigError, match="A1111 does not run FLUX.1"):
        export(full, tmp_path / "a", format="a1111")
    with pytest.raises(ConfigError, match="takes FLUX.1 LoRA runs"):
        export(full, tmp_path / "c", format="comfyui")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_extract_and_generate_through_the_cli(scene_dir, tmp_path):
    """extract on FLUX defaults to LoRA and says so; generate samples with FLUX's own sampler; flags that mean nothing
    to FLUX are one-line errors."""
    import json

    from breakascene.inference.generation import run_sampling_defaults
    from helpers.cli import assert_one_error, run_cli

    run = tmp_path / "run"
    code, _, err = run_cli(["extract", str(scene_dir), "--model", TINY_FLUX_MODEL_ID, "--phase1-steps", "1",
                            "--phase2-steps", "1", "--quiet", "--out", str(run)])
    assert code == 0, err
    assert "FLUX.1: phase 2 trains LoRA rank 16" in err
    info = json.loads((run / "scene.json").read_text())
    assert (info["pipeline"], info["resolution"], info["lora"]["rank"], info["prediction_type"]) == (
        "FluxPipeline", TINY_FLUX_RESOLUTION, 16, "flow")
    code, _, err = run_cli(["generate", str(run), "a photo of <asset0> at <bg>", "--quiet", "--out",
                            str(tmp_path / "images")])
    assert code == 0, err
    assert len(list((tmp_path / "images").glob("*.png"))) == 1
    record = json.loads((tmp_path / "images" / "metadata.jsonl").read_text().splitlines()[0])
    assert (record["steps"], record["guidance"]) == (28, 3.5)  # FLUX.1-dev's own defaults, not SD's 50 and 7.5
    assert run_sampling_defaults(run) == (28, 3.5)  # what the web app's fields show for this run
    code, _, err = run_cli(["generate", str(run), "a photo of <asset0>", "--steps", "1", "--attention-maps", "--quiet",
                            "--out", str(tmp_path / "views")])
    assert code == 0, err
    assert len(list((tmp_path / "views").glob("*-attention.png"))) == 1
    code, _, err = run_cli(["variations", str(run), "--num-images", "2", "--steps", "1", "--quiet", "--out",
                            str(tmp_path / "variations")])
    assert code == 0, err
    assert len(list((tmp_path / "variations").glob("*.png"))) == 2
    for extra, fragment in ((["--negative", "blurry"], "--negative"), (["--scheduler", "ddim"], "--scheduler ddim")):
        code, _, err = run_cli(["generate", str(run), "a photo of <asset0>", "--steps", "1", *extra,
                                "--out", str(tmp_path / "none")])
        assert_one_error(code, err, fragment, "FLUX.1")
        assert not (tmp_path / "none").exists()
    code, _, err = run_cli(["edit", str(run), str(scene_dir / "img.png"), "--region", str(scene_dir / "mask0.png"),
                            "a photo of <asset0>", "--steps", "2", "--quiet", "--out", str(tmp_path / "edit")])
    assert code == 0, err
    assert (tmp_path / "edit" / "final.png").is_file()
    # what FLUX runs do not have yet says so in one line; the diffusers export is there (the LoRA fused in)
    code, _, err = run_cli(["export", str(run), "--format", "a1111", "--out", str(tmp_path / "none")])
    assert_one_error(code, err, "--format a1111", "FLUX.1")
    assert not (tmp_path / "none").exists()
    code, _, err = run_cli(["export", str(run), "--format", "diffusers", "--out", str(tmp_path / "full")])
    assert code == 0, err
    exported = FluxPipeline.from_pretrained(tmp_path / "full").tokenizer_2
    assert exported.convert_tokens_to_ids("<asset0>") != exported.unk_token_id
    code, _, err = run_cli(["extract", str(scene_dir), "--model", TINY_FLUX_MODEL_ID, "--prediction-type",
                            "v_prediction", "--out", str(tmp_path / "bad")])
    assert_one_error(code, err, "--prediction-type v_prediction", "FLUX.1")
