"""The paper's four ablations, checked on any model family: each switches off its own part and nothing else."""

from __future__ import annotations

import torch

from breakascene.evaluation.methods import METHODS
from breakascene.handles import make_handles
from breakascene.training.trainer import Trainer

ABLATION_METHODS = ["ours", "ours-no-phase1", "ours-no-masked-loss", "ours-no-attention-loss", "ours-no-union-sampling"]


def check_ablation(method: str, make_config, components, scene) -> None:
    """``make_config(**overrides)`` gives the family's tiny config with the method's switches (from the
    evaluation's METHODS); the trainer on ``components`` must then drop exactly that part of the method."""
    config = make_config(**METHODS[method].overrides)
    trainer = Trainer(scene, config, components, make_handles(2), "cpu")
    trainer.setup()
    trainer.trainable_parameters("handles")
    batches = [trainer.sample_batch() for _ in range(12)]
    terms = trainer.loss_step(batches[0])
    assert [p.name for p in config.phases] == (["phase2"] if method == "ours-no-phase1" else ["phase1", "phase2"])
    assert all((b.latent_mask is None) == (method == "ours-no-masked-loss") for b in batches)
    assert ("attention" in terms) == (method != "ours-no-attention-loss") == bool(trainer.store.maps)
    sizes = {len(b.subset) for b in batches}
    if method == "ours-no-union-sampling":
        assert sizes == {1}
    else:
        assert len(sizes) > 1  # union sampling: subsets of one, two and three handles
    assert {i for b in batches for i in b.subset} == {0, 1, 2}  # both concepts and <bg> are trained either way
    assert torch.isfinite(terms["total"])
