import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from breakascene.attention import (
    AttentionStore,
    CaptureAttnProcessor,
    attention_grid,
    capture_layer_names,
    install_capture,
    mass_inside,
    normalize_maps,
)
from breakascene.models.tiny import build_tiny_components


def _unet_inputs(c, batch=1, latent=64):
    ids = c["tokenizer"](["a photo of a dog"] * batch, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = c["text_encoder"](ids)[0]
    return torch.randn(batch, 4, latent, latent), torch.tensor([500] * batch), hidden


def test_capture_layers_are_the_down_and_up_cross_attentions():
    unet = build_tiny_components()["unet"]
    names = capture_layer_names(unet)
    assert names and all(".attn2." in n for n in names)
    assert not any(n.startswith("mid_block") for n in names)
    assert {n.split(".")[0] for n in names} == {"down_blocks", "up_blocks"}


def test_capture_at_512px_records_16x16_maps_in_the_right_layers_and_keeps_sdpa_elsewhere():
    c = build_tiny_components()  # 512 px -> 64x64 latents
    unet = c["unet"]
    grid = attention_grid(64, 64)
    assert grid == (16, 16)
    store = AttentionStore(query_tokens=grid[0] * grid[1])
    install_capture(unet, store)
    processors = unet.attn_processors
    assert all(isinstance(p, CaptureAttnProcessor) for n, p in processors.items() if n in capture_layer_names(unet))
    assert all(type(p) is AttnProcessor2_0 for n, p in processors.items() if n not in capture_layer_names(unet))
    with torch.no_grad():
        unet(*_unet_inputs(c))
    # The tiny UNet has cross-attention at 16x16 in down_blocks.2 (one layer) and up_blocks.1 (two layers).
    assert sorted(store.layer_names) == sorted(n for n in capture_layer_names(unet) if n.startswith(("down_blocks.2", "up_blocks.1")))
    maps = store.mean_map(*grid)
    assert maps.shape == (1, 16, 16, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(1, 16, 16), atol=1e-5)


def test_captured_attention_equals_explicit_softmax_and_output_is_unchanged():
    c = build_tiny_components()
    unet = c["unet"]
    inputs = _unet_inputs(c, batch=2)
    unet.set_attn_processor(AttnProcessor())  # diffusers' explicit reference
    with torch.no_grad():
        reference = unet(*inputs).sample

    # The explicit softmax(QK^T / sqrt(d)) of one captured layer, computed by hand from its projections.
    layer_name = "down_blocks.2.attentions.0.transformer_blocks.0.attn2"
    attn = dict(unet.named_modules())[layer_name]
    seen = {}
    hook = attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(args=args, kwargs=kwargs), with_kwargs=True)

    store = AttentionStore(query_tokens=256)
    install_capture(unet, store)
    with torch.no_grad():
        captured = unet(*inputs).sample
    hook.remove()
    assert torch.allclose(captured, reference, atol=1e-5)

    hidden = seen["args"][0]
    context = seen["kwargs"]["encoder_hidden_states"]
    with torch.no_grad():
        q = attn.to_q(hidden).view(2, -1, attn.heads, attn.inner_dim // attn.heads).transpose(1, 2)
        k = attn.to_k(context).view(2, -1, attn.heads, attn.inner_dim // attn.heads).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)  # (B, heads, N, T)
    index = store.layer_names.index(layer_name + ".processor")
    assert torch.allclose(store.maps[index], probs.mean(dim=1), atol=1e-6)


def test_not_recording_means_no_explicit_attention():
    c = build_tiny_components()
    store = AttentionStore(query_tokens=256)
    store.recording = False
    install_capture(c["unet"], store)
    with torch.no_grad():
        c["unet"](*_unet_inputs(c))
    assert store.maps == []


def test_capture_works_with_gradient_checkpointing_and_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        c = build_tiny_components(sample_size=32)
        unet = c["unet"]
        unet.train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        store = AttentionStore(query_tokens=64)
        install_capture(unet, store)
        torch.manual_seed(0)
        latents, t, hidden = _unet_inputs(c, latent=32)
        hidden = hidden.clone().requires_grad_(True)
        unet(latents, t, hidden)
        maps = store.mean_map(8, 8)[0]
        maps[..., 3].sum().backward()  # a loss on the captured map alone
        grads.append(hidden.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_normalize_and_mass_inside():
    maps = torch.zeros(2, 4, 4)
    maps[0, :2] = 2.0  # all mass in the top half
    maps[1] = 1.0  # uniform
    assert normalize_maps(maps).amax(dim=(-1, -2)).tolist() == [1.0, 1.0]
    masks = torch.zeros(2, 8, 8)
    masks[0, :4] = 1
    masks[1, 4:] = 1
    scores = mass_inside(maps, masks)
    assert torch.allclose(scores, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_capture_applies_qk_norm_so_recorded_maps_are_the_computed_ones():
    # SD 1/2 have no QK normalisation; a model that has it must never record maps other than the ones it uses.
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16, qk_norm="layer_norm").eval()
    with torch.no_grad():  # non-trivial norm weights, so that applying them changes the result
        for norm in (attn.norm_q, attn.norm_k):
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.normal_()
    hidden, context = torch.randn(2, 16, 32), torch.randn(2, 7, 24)
    with torch.no_grad():
        reference = AttnProcessor2_0()(attn, hidden, context)
        store = AttentionStore(query_tokens=16)
        captured = CaptureAttnProcessor(store, "layer")(attn, hidden, context)

        q = attn.norm_q(attn.to_q(hidden).view(2, 16, 2, 16).transpose(1, 2))
        k = attn.norm_k(attn.to_k(context).view(2, 7, 2, 16).transpose(1, 2))
        expected = torch.softmax(q @ k.transpose(-1, -2) * 16**-0.5, dim=-1).mean(dim=1)  # (B, 16, 7)
    assert torch.allclose(captured, reference, atol=1e-5)
    assert torch.allclose(store.maps[0], expected, atol=1e-5)
