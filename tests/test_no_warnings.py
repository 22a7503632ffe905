"""A plain ``extract`` and ``generate`` print no warning: none of ours, and no library deprecation that a call of
ours triggers (e.g. diffusers' ``torch_dtype``, deprecated from 0.40 for ``dtype``)."""

from __future__ import annotations

import sys
import warnings

import pytest

from helpers.cli import run_cli


@pytest.fixture
def deprecations_shown(monkeypatch):
    """The command line hides every FutureWarning and DeprecationWarning (cli/main.py, quiet.py), so a deprecated
    call of ours would never show there until the library removed what it calls. Here break-a-scene's own
    ``ignore`` filters are not installed (the libraries' own stay), so such a call warns and fails the test."""
    install = warnings.filterwarnings

    def filterwarnings(action, *args, **kwargs):
        if action == "ignore" and sys._getframe(1).f_globals.get("__name__", "").startswith("breakascene."):
            return
        install(action, *args, **kwargs)

    monkeypatch.setattr(warnings, "filterwarnings", filterwarnings)


def test_a_plain_extract_and_generate_print_no_warning(scene_dir, tmp_path, deprecations_shown):
    run = tmp_path / "run"
    commands = [
        ["extract", str(scene_dir), "--model", "builtin:tiny", "--phase1-steps", "1", "--phase2-steps", "1",
         "--out", str(run)],  # builtin:tiny is built in code
        ["generate", str(run), "a photo of <asset0>", "--steps", "1", "--out", str(tmp_path / "samples")],
        # a base model from a diffusers folder (the run just made, with other handle names)
        ["extract", str(scene_dir), "--model", str(run), "--names", "ball", "box", "--no-background",
         "--phase1-steps", "1", "--phase2-steps", "0", "--out", str(tmp_path / "from-folder")],
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for argv in commands:
            code, _, err = run_cli(argv)
            assert code == 0, err
            # the command line prints a warning as one "warning: ..." line on stderr
            assert "warning" not in err.lower(), (argv[0], err)
    assert not [str(w.message) for w in caught]  # raised before the command line took over showing them
