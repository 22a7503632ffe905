"""Shared fixtures (the builders and checks they use live in the ``helpers`` package): seeded torch, the
synthetic shapes scene at the tiny model's native size, and its scene folder. All built in code (offline)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the Hub fails instead of hanging

from pathlib import Path

import pytest
import torch

from helpers.tiny import shapes_scene

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


@pytest.fixture
def bitwise_reproducible():
    """One torch thread for a test that compares two trainings bit for bit. With two, oneDNN's CPU kernels may
    sum partial results in an order set by thread timing (its default allows that), so on a loaded machine two
    runs of the same steps can differ in the last bit; with one thread they cannot. Restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def scene128():
    """The shapes scene at 128 px, the tiny model's native size."""
    return shapes_scene(128)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    """The synthetic two-concept scene as a scene folder: img.png, mask0.png, mask1.png (512 x 512)."""
    from breakascene.examples import write_shapes_example

    return write_shapes_example(tmp_path_factory.mktemp("scene") / "shapes")
