"""The paper's central claim: the cross-attention loss ties each handle to its own mask (tiny model, builtin:shapes).

With <bg> on, as users run it, for the first three seeds (none picked), and the attention errors summed over the
sampled handles (the default, as the research code). A randomly initialised tiny model needs test-sized settings to
show it at all: the UNet must train (phase 2 only, lr 3e-3), the attention loss needs a weight of 1 rather than
0.01 to compete with the reconstruction loss of a random model, and the flip is off so that position may help
tell the ball from the box. The phase has the paper's 400 steps: in 200, some seeds are still stuck with both
concept handles on the union of the two objects (benchmarks/attention_mechanism.py; docs/method.md has the table).
"""

import pytest
import torch

from breakascene.config import ExtractConfig
from breakascene.training.recipe import extract

from helpers.tiny import shapes_scene, tiny

SEEDS = (0, 1, 2)


def _mass_matrix(tmp_path, seed: int, attention_loss: bool = True) -> torch.Tensor:
    config = ExtractConfig(
        model="builtin:tiny", resolution=256, names=["ball", "box"], phase1=False, phase2_steps=400,
        phase2_lr=3e-3, lambda_attn=1.0, flip_probability=0.0, attention_loss=attention_loss, seed=seed,
    )
    result = extract(shapes_scene(256), config, tmp_path / f"run-{seed}-{attention_loss}", components=tiny(256),
                     progress=False)
    return torch.tensor(result.attention_scores["phase2"])  # (3, 3): handle x mask (ball, box, bg)


@pytest.mark.slow
def test_attention_loss_ties_each_handle_to_its_own_mask_for_every_seed(tmp_path):
    scene = shapes_scene(256)
    area = torch.cat([scene.masks, scene.background_mask()[None]]).mean(dim=(1, 2))  # chance: a uniform map
    without = _mass_matrix(tmp_path, SEEDS[0], attention_loss=False)
    assert (without.diagonal() - area).abs().max() < 0.1, (without, area)  # without the loss: about chance
    for seed in SEEDS:
        with_loss = _mass_matrix(tmp_path, seed)
        own = with_loss.diagonal()
        best_other = (with_loss - torch.diag(torch.full((3,), float("inf")))).amax(dim=1)
        # Each handle's map lies mostly in its own mask, well above the best other mask ...
        assert (own > best_other + 0.15).all(), (seed, with_loss)
        # ... and the loss closes at least half of the gap between chance and a map entirely inside its mask.
        assert (own - area >= 0.5 * (1 - area)).all(), (seed, with_loss, area)


def _shapes_mass_matrix(scene, tmp_path, seed: int, attention_loss: bool = True) -> torch.Tensor:
    from breakascene.models.shapes import SCALED_SETTINGS as scaled

    config = ExtractConfig(
        model="builtin:shapes", resolution=64, phase1_steps=scaled["phase1_steps"],
        phase2_steps=scaled["phase2_steps"], phase1_lr=scaled["phase1_lr"], phase2_lr=scaled["phase2_lr"],
        lambda_attn=0.03, default_init_word=scaled["default_init_word"],
        attention_loss=attention_loss, seed=seed, device="cpu",
    )
    result = extract(scene, config, tmp_path / f"shapes-{seed}-{attention_loss}", progress=False)
    return torch.tensor(result.attention_scores["phase2"])  # (3, 3): handle x mask (asset0, asset1, bg)


@pytest.mark.slow
def test_on_builtin_shapes_each_concept_handle_ends_on_its_own_object(tmp_path):
    """The same claim on the project's model that knows its world, as users run it (its scaled settings: both
    phases, flips, <bg>) but for λ = 0.03, on the benchmark's first scene: each concept handle holds more of its
    attention on its own object than on the other one, and at least twice the object's share of the picture (what
    a uniform map holds). Without the attention loss that fails. (The shipped λ is 0.01: it separates only
    <asset1> here, yet its pictures score better on the benchmark; docs/method.md.)"""
    from breakascene.scene import load_scene_folder
    from breakascene.world.scenes import write_world_scenes

    scene = load_scene_folder(write_world_scenes(tmp_path / "scenes", 1, 0)[0], 64)
    area = scene.masks.float().mean(dim=(1, 2))  # (2,): each object's share of the picture

    def separated(mass: torch.Tensor) -> bool:
        own, other = mass[:2, :2].diagonal(), mass[:2, :2].flip(1).diagonal()
        return bool((own > other).all() and (own >= 2 * area).all())

    without = _shapes_mass_matrix(scene, tmp_path, SEEDS[0], attention_loss=False)
    assert not separated(without), without
    for seed in SEEDS:
        mass = _shapes_mass_matrix(scene, tmp_path, seed)
        assert separated(mass), (seed, mass, area)
