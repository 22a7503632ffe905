"""The tiny model, the shapes scene and finished runs of them, all built in code (offline, seeded).

The tests use the tiny model at its native 128 px (``TINY_RESOLUTION``): latent 16, cross-attention at 16x16,
8x8 and 4x4, the attention loss's grid 4x4. A test that needs another size says so.
"""

from __future__ import annotations

from pathlib import Path

from breakascene.config import ExtractConfig
from breakascene.examples import make_shapes_scene
from breakascene.models.loading import Components
from breakascene.models.tiny import TINY_RESOLUTION, build_tiny_components
from breakascene.scene import load_scene


def tiny(resolution: int = TINY_RESOLUTION, prediction_type: str = "epsilon") -> Components:
    """A fresh tiny model whose native size is ``resolution`` px."""
    return Components(**build_tiny_components(prediction_type=prediction_type, sample_size=resolution // 8))


def shapes_scene(resolution: int = TINY_RESOLUTION):
    """The synthetic two-concept scene (a ball and a box), loaded at ``resolution`` px."""
    image, masks, _ = make_shapes_scene(512)
    return load_scene(image, masks, resolution)


def tiny_config(**overrides) -> ExtractConfig:
    """A 2 + 2-step extraction of the tiny model at its native size, with ``overrides``."""
    values = dict(model="builtin:tiny", resolution=TINY_RESOLUTION, phase1_steps=2, phase2_steps=2)
    values.update(overrides)
    return ExtractConfig(**values)


def make_tiny_run(tmp_path_factory, *extra: str) -> Path:
    """A finished 2+2-step run of the tiny model on the shapes example at 128 px, made through the real CLI
    (``extra``: more extract flags)."""
    from breakascene.cli import main
    from breakascene.examples import write_shapes_example

    scene = write_shapes_example(tmp_path_factory.mktemp("scene") / "shapes")
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["extract", str(scene), "--model", "builtin:tiny", "--resolution", str(TINY_RESOLUTION),
                 "--phase1-steps", "2", "--phase2-steps", "2", *extra, "--out", str(out), "--quiet"])
    assert code == 0
    return out
