"""The end-of-phase attention diagnostics: each handle's cross-attention map and how much of it is on its mask."""

from __future__ import annotations

import torch

from ..attention import mass_inside
from ..handles import find_handle_positions
from ..union_sampling import build_prompt
from . import memory

DIAGNOSTIC_TIMESTEPS = (250, 500, 750)  # noise levels at which the end-of-phase attention maps are averaged


@torch.no_grad()
def attention_snapshot(trainer: "Trainer") -> tuple[torch.Tensor, torch.Tensor]:
    """Each handle's map (for a set-up :class:`~.trainer.Trainer`) on the (unflipped) scene with all handles in the prompt, averaged over a few noise
    levels, with its own fixed noise so the training's random stream is untouched.

    Returns:
        maps: (N, gh, gw) float, non-negative; scores: (N, N) ``mass_inside`` against the pixel masks.
    """
    t, c, family = trainer, trainer.components, trainer.family
    rng = torch.Generator(t.device).manual_seed(t.config.seed + 12345)
    input_ids = family.tokenize(c, [build_prompt([h.token for h in t.handles])])
    positions = find_handle_positions(family.handle_search_ids(input_ids)[0], t.handle_ids)
    size = t.size_conditioning[0, :1] if t.size_conditioning is not None else None  # the unflipped scene
    t.store.recording = True
    maps = []
    for step in DIAGNOSTIC_TIMESTEPS:
        latents = t.sample_latents(t.latent_mean[0, :1], t.latent_std[0, :1], rng)
        noise = torch.randn(latents.shape, generator=rng, device=t.device)
        timesteps = torch.tensor([step], device=t.device)
        t.store.reset()
        with memory.autocast(t.device, t.config.mixed_precision):
            conditioning = family.encode_prompt(c, input_ids, t.device, size)
            family.denoise(c.unet, family.add_noise(t.noise_scheduler, latents, noise, timesteps), timesteps, conditioning)
        maps.append(t.store.mean_map(*t.grid)[0][..., positions].permute(2, 0, 1).float())
    t.store.reset()
    maps = torch.stack(maps).mean(dim=0).cpu()
    return maps, mass_inside(maps, t.pixel_masks[0, 0])
