"""Shared fixtures: seeded tiny SD2-shaped models and the synthetic shapes scene, all built in code (offline)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the Hub fails instead of hanging

import contextlib
import io
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


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    """The synthetic two-concept scene as a scene folder: img.png, mask0.png, mask1.png (512 x 512)."""
    from breakascene.examples import write_shapes_example

    return write_shapes_example(tmp_path_factory.mktemp("scene") / "shapes")


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


# ------------------------------------------------------------------------------------------
# the command line's contract: one error line, the right exit status, nothing half written


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Runs the CLI in-process outside capsys (for module-scoped fixtures): (exit code, stdout, stderr)."""
    from breakascene.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_error(code: int, err: str, *fragments: str, status: int = 2) -> str:
    """Exit ``status``, no traceback, exactly one ``error:`` line (last), anything else only ``warning:``."""
    assert "Traceback" not in err, err
    found = lines(err)
    errors = [line for line in found if line.startswith("error:")]
    assert len(errors) == 1, err
    assert found[-1] == errors[0], err
    assert all(line.startswith(("error:", "warning:")) for line in found), err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert code == status, (code, err)
    return errors[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    assert not out.with_name(out.name + ".partial").exists(), f"{out}.partial was left behind"


def assert_cuda_refused_before_loading(monkeypatch, module, argv: list[str], out: Path) -> None:
    """``argv`` plus ``--device cuda`` on a machine without CUDA: one error line, and ``module.load_pipeline``
    never called (the device is checked first). Skips on a machine that has CUDA."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(module, "load_pipeline", no_loading)
    code, _, err = run_cli([*argv, "--device", "cuda", "--out", str(out)])
    assert_one_error(code, err, "--device cuda", "no CUDA GPU")
    assert not out.exists()
