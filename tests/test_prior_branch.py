"""Prior preservation where it changes nothing (training/class_branch.py): a phase that trains only what the class
prompt cannot reach (phase 1) runs no class row, one whose text encoders do not train encodes the class prompt
once; either way the random draws, and the weights a run ends with, are those of a run that computes everything
(``Trainer.prune_class_branch = False``), up to fp32 rounding."""

from __future__ import annotations

import json

import pytest
import torch

from breakascene.handles import make_handles
from breakascene.training.log import TrainingLog
from breakascene.training.class_branch import ClassBranch, cat_rows, plan_class_branch
from breakascene.training.trainer import Trainer

from helpers.tiny import tiny, tiny_config


class RecordingTrainer(Trainer):
    """Keeps, per step, both generators' states after the draws, the batch's rows and the denoiser's batch size."""

    def setup(self, class_images=None) -> None:
        super().setup(class_images)
        self.draws, self.rows, self.denoised = [], [], []
        self.components.unet.register_forward_pre_hook(lambda _, args: self.denoised.append(args[0].shape[0]))

    def sample_batch(self):
        batch = super().sample_batch()
        self.draws.append((self.host_rng.get_state(), self.device_rng.get_state(), batch.timesteps[0].item(),
                           batch.noisy_latents[0].clone(), batch.subset, batch.flip))
        self.rows.append((batch.prior, batch.prior_skipped, batch.class_conditioning is not None))
        return batch


def _class_images() -> torch.Tensor:
    return torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))  # (2, 3, R, R) in [0, 1]


def _train(scene, folder, prune: bool) -> tuple[RecordingTrainer, dict, list]:
    """A 2 + 2-step run with prior preservation (phase 2 at 1e-3, so that it moves the weights visibly) through
    ``Trainer.run_phase`` (``train`` adds only the end-of-phase attention figures); returns the trainer, the
    weights it started from and had after phase 1, and the losses each progress callback got."""
    config = tiny_config(prior_preservation=True, num_class_images=2, phase2_lr=1e-3)
    trainer = RecordingTrainer(scene, config, tiny(), make_handles(2), "cpu")
    trainer.prune_class_branch = prune
    trainer.setup(_class_images())
    weights = {"unet": {n: p.detach().clone() for n, p in trainer.components.unet.named_parameters()},
               "handles": trainer.embedding.handle_vectors.detach().clone()}
    after_phase1, reported = [], []

    def progress(p) -> None:
        reported.append((p.phase, p.losses))
        if p.phase == "phase1" and p.step == p.phase_steps:
            after_phase1.append(trainer.embedding.handle_vectors.detach().clone())

    trainer.training_log = TrainingLog(folder / "logs")
    for index, phase in enumerate(config.phases):
        trainer.run_phase(index, phase, start_step=0, global_offset=2 * index, checkpoint_folder=folder / "checkpoint",
                          optimizer_state=None, callback=progress, bar=None, started=0.0)
    return trainer, {**weights, "phase1": after_phase1[0]}, reported


def test_phase1_runs_no_class_row_and_ends_where_a_run_that_computes_it_does(scene128, tmp_path):
    pruned, weights, reported = _train(scene128, tmp_path / "pruned", prune=True)
    full, full_weights, _ = _train(scene128, tmp_path / "full", prune=False)

    # phase 1: the denoiser saw the scene's row only; phase 2 both
    assert pruned.rows == [(False, True, False)] * 2 + [(True, False, False)] * 2
    assert full.rows == [(True, False, False)] * 4
    assert pruned.denoised == [1, 1, 2, 2] and full.denoised == [2, 2, 2, 2]
    # the same random draws, in the same order: generator states, timesteps, latents, subsets, flips
    for a, b in zip(pruned.draws, full.draws, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] and torch.equal(a[3], b[3])
        assert a[4:] == b[4:]
    # the handles after phase 1: fp32 rounding apart (the scene's row ran in a batch of one instead of two)
    assert torch.allclose(weights["phase1"], full_weights["phase1"], rtol=0, atol=1e-6)
    assert (weights["phase1"] - weights["handles"]).abs().max() > 1e-4  # they did train
    # after phase 2 (which computes the term in both): the handles, and the UNet's weights to fp32 rounding as
    # Adam's normalisation amplifies it: a weight whose gradient is near zero may step by up to the learning
    # rate either way, so a few (0.02 % measured) differ by more than a tenth of it; without the class row in
    # phase 2, 78 % do (measured)
    assert torch.allclose(pruned.embedding.handle_vectors, full.embedding.handle_vectors, rtol=0, atol=1e-5)
    unet = lambda t: torch.cat([p.detach().flatten() for p in t.components.unet.parameters()])
    moved = (unet(full) - torch.cat([p.flatten() for p in weights["unet"].values()])).abs() > 1e-4
    differ = (unet(pruned) - unet(full)).abs() > 1e-4
    assert moved.float().mean() > 0.5 and differ.float().mean() < 1e-3, differ.float().mean()
    # the log: phase 1's prior is not computed (null), phase 2's a number; the callback gets only numbers
    lines = [json.loads(line) for line in (tmp_path / "pruned" / "logs" / "train.jsonl").read_text().splitlines()]
    assert [line["prior"] for line in lines[:2]] == [None, None]
    assert all(isinstance(line["prior"], float) for line in lines[2:])
    assert all(line["total"] == pytest.approx(line["rec"] + 0.01 * line["attention"]) for line in lines[:2])
    assert [sorted(losses) for _, losses in reported if losses] == [["attention", "rec", "total"],
                                                                   ["attention", "prior", "rec", "total"]]


@pytest.mark.parametrize("trains, overrides, runs, cached", [
    ("handles", {}, False, False),  # phase 1
    ("handles", {"class_prompt": "a photo of <asset0>"}, True, False),  # a class prompt that holds a handle
    ("full", {}, True, False),  # the paper's phase 2: the text encoder trains
    ("unet", {"train_text_encoder": False}, True, True),
    ("lora", {"lora_rank": 2}, True, True),
    ("lora", {"lora_rank": 2, "lora_text_encoder": True}, True, False),
    ("cross_attention_kv", {"phase2_params": "cross_attention_kv"}, True, True),  # the CD-m baseline
])
def test_what_a_phase_needs_of_the_class_row_follows_what_it_trains(scene128, trains, overrides, runs, cached):
    config = tiny_config(prior_preservation=True, num_class_images=2, **overrides)
    trainer = Trainer(scene128, config, tiny(), make_handles(2), "cpu")
    trainer.setup(_class_images())
    plan = plan_class_branch(trainer, trainer.trainable_parameters(trains))
    assert (plan.runs, plan.conditioning is not None) == (runs, cached)
    trainer.prune_class_branch = False
    assert plan_class_branch(trainer, trainer.trainable_parameters(trains)) == ClassBranch()


def _family(name: str):
    """(components, model id) of the tiny SD, SDXL or FLUX.1 model, all at 128 px."""
    from breakascene.models.families.flux import FLUX
    from breakascene.models.families.sdxl import STABLE_DIFFUSION_XL
    from breakascene.models.loading import Components
    from breakascene.models.tiny_flux import TINY_FLUX_MODEL_ID, build_tiny_flux_components
    from breakascene.models.tiny_sdxl import TINY_SDXL_MODEL_ID, build_tiny_sdxl_components

    if name == "sdxl":
        return Components(**build_tiny_sdxl_components(), family=STABLE_DIFFUSION_XL), TINY_SDXL_MODEL_ID
    if name == "flux":
        parts = build_tiny_flux_components()
        return Components(**parts | {"unet": parts.pop("transformer")}, family=FLUX), TINY_FLUX_MODEL_ID
    return tiny(), "builtin:tiny"


@pytest.mark.parametrize("family, trains, overrides", [
    ("sd", "handles", {}),  # skipped
    ("sd", "lora", {"lora_rank": 2}),  # cached
    ("sd", "unet", {"train_text_encoder": False}),  # cached
    ("sdxl", "lora", {"lora_rank": 2}),  # cached: two text encoders, the pooled vector and the size conditioning
    ("flux", "handles", {}),  # skipped
    ("flux", "lora", {"lora_rank": 2}),  # cached: T5 and CLIP's pooled vector
])
def test_a_skipped_or_cached_class_row_gives_every_trainable_the_same_gradient(scene128, family, trains, overrides):
    components, model = _family(family)
    config = tiny_config(model=model, prior_preservation=True, num_class_images=2, **overrides)
    trainer = Trainer(scene128, config, components, make_handles(2), "cpu")
    trainer.setup(_class_images())
    params = trainer.trainable_parameters(trains)
    pruned = plan_class_branch(trainer, params)
    assert not pruned.runs or pruned.conditioning is not None  # something is skipped or cached
    host, device = trainer.host_rng.get_state(), trainer.device_rng.get_state()
    gradients, losses = [], []
    for branch in (ClassBranch(), pruned):
        trainer.class_branch = branch
        trainer.host_rng.set_state(host)
        trainer.device_rng.set_state(device)
        terms = trainer.loss_step(trainer.sample_batch())
        gradients.append(torch.autograd.grad(terms["total"], list(params.values()), allow_unused=True))
        losses.append(terms)
    for full, pruned_gradient in zip(*gradients, strict=True):
        assert (full is None) == (pruned_gradient is None)
        if full is not None:
            assert torch.allclose(pruned_gradient, full, rtol=1e-4, atol=1e-7)
    assert ("prior" in losses[1]) == (trains != "handles")
    for name in losses[1]:
        expected = losses[0][name] - (losses[0]["prior"] if name == "total" and "prior" not in losses[1] else 0)
        assert torch.allclose(losses[1][name], expected, rtol=1e-5, atol=1e-7), name


def test_conditionings_stack_by_rows_field_by_field():
    from breakascene.models.families.sdxl import SDXLConditioning

    a = SDXLConditioning(torch.zeros(1, 3, 4), torch.zeros(1, 5), torch.zeros(1, 6))
    b = SDXLConditioning(torch.ones(1, 3, 4), torch.ones(1, 5), torch.ones(1, 6))
    both = cat_rows(a, b)
    assert both.hidden.shape == (2, 3, 4) and both.pooled[1].eq(1).all() and both.time_ids[0].eq(0).all()
    assert torch.equal(cat_rows(torch.zeros(1, 2), torch.ones(1, 2)), torch.tensor([[0.0, 0], [1, 1]]))
