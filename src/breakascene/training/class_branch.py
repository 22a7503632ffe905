"""Prior preservation's class row: whether a phase needs it at all, and its prompt's encoding when that is fixed.

The prior-preservation loss is an unmasked diffusion loss on a class image under the class prompt (row 1 of a
step's batch). Its gradient reaches only what lies on that row's path: the denoiser's weights (or adapters),
the text encoders' weights (or adapters), and a handle vector only if the class prompt holds its token. So,
decided from what a phase trains (not from its name):

* where none of those trains (phase 1: the handles only), the row cannot change the weights: it is not run
  (no forward, no backward), and the training log records its loss as not computed;
* where the text encoders do not train (a phase 2 of UNet LoRA only, a frozen text encoder, the CD-m baseline),
  the class prompt's encoding is the same every step: it is encoded once per phase.

:meth:`Trainer.sample_batch <.trainer.Trainer.sample_batch>` still draws the class image, its latent sample,
its noise and its timestep every step, so the random stream, and the weights a run ends with, are those of a
run that computes the term, up to float rounding (the scene's row runs in a batch of one instead of two).
``Trainer.prune_class_branch = False`` computes everything every step, as the research code does (the bench's
research baseline and the tests that compare the two).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import memory


@dataclass(frozen=True)
class ClassBranch:
    """What a phase does with the class row (prior preservation); the default runs and encodes it every step."""

    runs: bool = True  # the row goes through the model: something that trains can receive its gradient
    # the class prompt's encode_prompt result for one row (a tensor or a dataclass of tensors, no graph), valid
    # for the whole phase because nothing on its path trains; None: the prompt is encoded every step
    conditioning: object | None = None


def plan_class_branch(trainer: "Trainer", trainable: dict[str, torch.nn.Parameter]) -> ClassBranch:
    """What the phase about to train ``trainable`` (``Trainer.trainable_parameters``) needs of the class row of
    a set-up ``trainer``; encodes the class prompt once when its encoding cannot change during the phase."""
    cfg, c, family = trainer.config, trainer.components, trainer.family
    if not cfg.prior_preservation or not trainer.prune_class_branch:
        return ClassBranch()
    input_ids = family.tokenize(c, [cfg.class_prompt])
    holds_handle = bool(set(family.handle_search_ids(input_ids)[0].tolist()) & set(trainer.handle_ids))
    handle_vectors = {id(embedding.handle_vectors) for embedding in trainer.embeddings}
    # a handle vector receives a gradient only through its own token
    reached = [p for p in trainable.values() if holds_handle or id(p) not in handle_vectors]
    if not reached:
        return ClassBranch(runs=False)
    encoder_params = {id(p) for encoder in family.text_encoders(c) for p in encoder.parameters()}
    if any(id(p) in encoder_params for p in reached):
        return ClassBranch()
    size = None if trainer.full_size_conditioning is None else trainer.full_size_conditioning[None]  # (1, 6)
    with torch.no_grad(), memory.autocast(trainer.device, cfg.mixed_precision):
        conditioning = family.encode_prompt(c, input_ids, trainer.device, size)
    return ClassBranch(conditioning=conditioning)


def cat_rows(first, second):
    """Two ``encode_prompt`` results stacked along the batch: tensors (B1, ...) and (B2, ...), or dataclasses of
    them (SDXL's, FLUX's conditioning), field by field."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second])
    return dataclasses.replace(first, **{f.name: torch.cat([getattr(first, f.name), getattr(second, f.name)])
                                         for f in dataclasses.fields(first)})
