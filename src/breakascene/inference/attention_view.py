"""Attention views: where each handle of a prompt looks while an image is generated (paper Fig. 4).

:func:`generate_with_attention` runs the pipeline once with the engine's own capture
(:func:`breakascene.attention.install_capture`) on the UNet. The store records at the grid the attention loss
uses: a quarter of the latent side (16 x 16 for a 512 px image), chosen from the ``height``/``width`` kwargs
(or ``unet.config.sample_size``) and ``pipe.vae_scale_factor``.

What the maps are, exactly:

* Each recorded map is a softmax probability over the 77 text tokens, averaged over the heads of one
  cross-attention layer, for the **conditional** half of the classifier-free-guidance batch (the prompt, not the
  empty negative prompt).
* They are averaged over the recorded layers (down and up path, mid block skipped) and then over all denoising
  steps. An average of probability vectors is a probability vector, so for every pixel the maps of ALL 77
  tokens still sum to 1 (``return_full=True`` returns that full ``(h, w, 77)`` average).
* The per-handle maps returned are the columns of that average at the handle's position in the prompt (the
  mean over positions when a handle appears more than once): floats >= 0, not normalised.

:func:`attention_view_image` is for people: it divides each token's map by its own maximum (so every tile spans
[0, 1] and tiles are NOT comparable in absolute strength), upsamples it bilinearly to the image size and overlays
the heat map on the image, one labelled tile per token next to the generated image.

Capture does not change the picture: recording layers multiply the same softmax probabilities with V that
scaled-dot-product attention would (up to float rounding), and the previous attention processors are put back
afterwards, even when generation fails.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..attention import AttentionStore, attention_grid, normalize_maps
from ..config import ExtractConfig
from ..figures import heat_colors

__all__ = ["generate_with_attention", "attention_view_image", "token_positions"]


def token_positions(tokenizer, prompt: str, tokens: list[str], ids: torch.Tensor | None = None) -> dict[str, list[int]]:
    """Positions (0..76 for SD, the start token included) of each of ``tokens`` in the tokenized prompt, or in
    ``ids`` (T,) when given (FLUX's 512 T5 ids); absent ones omitted."""
    if ids is None:
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids[0]
    found = {}
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            continue
        where = (ids == token_id).nonzero().flatten().tolist()
        if where:
            found[token] = where
    return found


def _map_grid(pipe, family, pipe_kwargs: dict) -> tuple[int, int]:
    """The maps' (h, w): the latent grid of the image to make over the family's divisor (the loss's grid)."""
    native = family.native_resolution(pipe.components[family.denoiser_name], pipe.vae)
    height = int(pipe_kwargs.get("height") or native) // pipe.vae_scale_factor
    width = int(pipe_kwargs.get("width") or native) // pipe.vae_scale_factor
    return attention_grid(height, width, family.attention_divisor or ExtractConfig.attention_divisor)


def generate_with_attention(
    pipe, prompt: str, tokens: list[str], *, return_full: bool = False, on_step_end=None, **pipe_kwargs
):
    """Generates one image of ``prompt`` and each handle's cross-attention map, averaged over steps.

    Args:
        pipe: a run's pipeline (SD, SDXL: cross-attention at the latent/4 grid; FLUX.1: the image-to-text part of
            joint attention in the later dual-stream blocks, on the packed latent/2 grid).
        prompt: one prompt string.
        tokens: handle tokens, e.g. ``["<asset0>", "<bg>"]``; those not in the prompt are left out of the result.
        return_full: also return the full ``(h, w, T)`` average over all T text tokens (each pixel sums to 1).
        on_step_end: called after every step as ``on_step_end(pipe, step, timestep, callback_kwargs)``, after
            the maps of that step are collected (e.g. a progress bar's, :class:`generation.StepProgress`); what
            it returns goes back to the pipeline as a ``callback_on_step_end``'s result would.
        **pipe_kwargs: passed to ``pipe(prompt, ...)`` (``num_inference_steps``, ``generator``, ``height``, ...).
            ``num_images_per_prompt`` must be 1 and ``callback_on_step_end`` is reserved (use ``on_step_end``).

    Returns:
        ``(image, maps)`` where ``maps[token]`` is an ``(h, w)`` float tensor >= 0 (softmax probabilities averaged
        over heads, layers and steps of the conditional branch); with ``return_full`` a third item, the
        ``(h, w, T)`` average.
    """
    if "callback_on_step_end" in pipe_kwargs:
        raise ValueError("generate_with_attention uses callback_on_step_end itself; pass on_step_end instead")
    if pipe_kwargs.get("num_images_per_prompt", 1) != 1:
        raise ValueError("generate_with_attention makes one image at a time")
    from ..models.families.registry import family_of_pipeline

    family = family_of_pipeline(pipe)
    denoiser = pipe.components[family.denoiser_name]
    grid = _map_grid(pipe, family, pipe_kwargs)
    store = AttentionStore(query_tokens=grid[0] * grid[1])
    total: list[torch.Tensor] = []  # running sum, kept in a list so the callback can replace it

    def collect(pipeline, step, timestep, callback_kwargs):
        maps = store.mean_map(*grid).detach().float()  # (B, h, w, T): B = 2 with guidance ([uncond, cond]), FLUX 1
        conditional = maps[-1]
        total[:] = [conditional if not total else total[0] + conditional]
        store.reset()
        return (on_step_end(pipeline, step, timestep, callback_kwargs) or {}) if on_step_end is not None else {}

    previous = dict(denoiser.attn_processors)
    family.install_capture(denoiser, store)
    try:
        store.reset()
        result = pipe(prompt, callback_on_step_end=collect, **pipe_kwargs)
    finally:
        denoiser.set_attn_processor(previous)
    steps = getattr(pipe, "num_timesteps", None) or 1
    if not total:
        raise RuntimeError("no denoising step ran, so no attention was recorded")
    full = (total[0] / steps).cpu()  # (h, w, T)
    # the handles where training found them: SD's 77 CLIP ids, FLUX's 512 T5 ids
    ids = family.handle_search_ids(family.tokenize(pipe, [prompt]))[0]
    positions = token_positions(family.tokenizers(pipe)[0], prompt, tokens, ids)
    maps = {token: full[..., where].mean(dim=-1) for token, where in positions.items()}
    image = result.images[0]
    return (image, maps, full) if return_full else (image, maps)


def attention_view_image(image: Image.Image, maps: dict[str, torch.Tensor], tile: int | None = None) -> Image.Image:
    """The image, then one tile per token: its map / its maximum, bilinear-upsampled, overlaid on the image.

    Each tile is the image (``tile`` px high, default the image's own height, width to keep the aspect ratio)
    blended 50/50 with the token's heat map (black -> red -> yellow -> white), with the token written in the corner.
    """
    image = image.convert("RGB")
    height = tile or image.height
    width = max(1, round(image.width * height / image.height))
    base = image.resize((width, height), Image.BILINEAR) if (width, height) != image.size else image
    figure = Image.new("RGB", (width * (1 + len(maps)), height), "white")
    figure.paste(base, (0, 0))
    for i, (token, values) in enumerate(maps.items(), start=1):
        scaled = normalize_maps(values.detach().float().cpu()[None])  # (1, h, w) in [0, 1]
        big = F.interpolate(scaled[None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        overlay = Image.blend(base, heat_colors(big), 0.5)
        draw = ImageDraw.Draw(overlay)
        draw.rectangle((0, 0, 8 + 7 * len(token), 16), fill="black")
        draw.text((4, 2), token, fill="white")
        figure.paste(overlay, (i * width, 0))
    return figure
