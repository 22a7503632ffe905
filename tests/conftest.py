"""Shared fixtures: seeded tiny SD2-shaped models and the synthetic shapes scene, all built in code (offline)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the Hub fails instead of hanging

from pathlib import Path

import pytest
import torch

from breakascene.examples import make_shapes_scene
from breakascene.models import Components
from breakascene.scene import load_scene
from breakascene.tiny import build_tiny_components

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the tiny model gains nothing from two, and on a busy 2-core machine
    OpenMP's spinning threads make every step ten times slower (seen by the web app's tests). Restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny(resolution: int = 256, prediction_type: str = "epsilon") -> Components:
    """A fresh tiny model whose native size is ``resolution`` px."""
    return Components(**build_tiny_components(prediction_type=prediction_type, sample_size=resolution // 8))


def shapes_scene(resolution: int = 256):
    image, masks, _ = make_shapes_scene(512)
    return load_scene(image, masks, resolution)


@pytest.fixture
def scene256():
    return shapes_scene(256)


def make_tiny_run(tmp_path_factory) -> Path:
    """A finished 2+2-step run of the tiny model on the shapes example at 256 px, made through the real CLI."""
    from breakascene.cli import main
    from breakascene.examples import write_shapes_example

    scene = write_shapes_example(tmp_path_factory.mktemp("scene") / "shapes")
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["extract", str(scene), "--model", "builtin:tiny", "--resolution", "256",
                 "--phase1-steps", "2", "--phase2-steps", "2", "--out", str(out), "--quiet"])
    assert code == 0
    return out
