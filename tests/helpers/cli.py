"""The command line's contract, as checks: one ``error:`` line, the right exit status, nothing half written."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

TINY = ["--model", "builtin:tiny"]
"""The offline built-in model's flag, for the CLI tests' argument lists."""


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
