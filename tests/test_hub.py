"""Without network, a Hub id that is not in the local cache fails at once with one line, never after a minute of
retries; and the Python API is as quiet as the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from breakascene.hub import hub_options, hub_reachable

from helpers.cli import lines

# A Hub that refuses connections at once, wherever these tests run (with or without network), and a cache
# that holds nothing, so that no model can come from it.
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "",
          **{name: "" for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")}}


def _run(argv: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **NO_HUB, "HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run([sys.executable, "-m", "breakascene.cli", *argv], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_hub_reachability():
    assert hub_reachable("http://127.0.0.1:9") is False
    assert hub_options() == {"local_files_only": True}  # HF_HUB_OFFLINE is set for the tests (conftest)


@pytest.mark.slow  # a real process (about 20 s): `make test-slow`
def test_a_model_not_in_the_cache_fails_at_once_in_one_line(scene_dir, tmp_path):
    for argv, flag in ((["masks", str(scene_dir / "img.png"), "--text", "ball", "--out", str(tmp_path / "m")],
                        "--sam-model"),
                       (["extract", str(scene_dir), "--phase1-steps", "1", "--out", str(tmp_path / "r")], "--model")):
        result = _run(argv, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Retry" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        [line] = [x for x in lines(result.stderr) if not x.startswith("warning:")]
        assert line.startswith("error: the ") and "could not be downloaded" in line and "hf download" in line
        assert flag in line and "not in the local cache" in line
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow  # a real process (about 10 s): `make test-slow`
def test_the_python_api_is_quiet(scene_dir, tmp_path):
    script = (
        "from breakascene import ExtractConfig, extract, generate, load_scene_folder\n"
        f"scene = load_scene_folder({str(scene_dir)!r}, 64)\n"
        "config = ExtractConfig(model='builtin:tiny', resolution=64, phase1_steps=2, phase2_steps=2)\n"
        f"extract(scene, config, {str(tmp_path / 'run')!r}, progress=False)\n"
        f"generate({str(tmp_path / 'run')!r}, ['a photo of <asset0>'], steps=1, progress=False)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    # Only our own warnings may speak (the tiny model's native size is 128 px, so this one is fair).
    noise = [x for x in lines(result.stderr) if "native resolution" not in x and x.strip() != "warnings.warn("]
    assert noise == [], result.stderr
