"""benchmarks/gpu.sh runs end to end here on the CPU with a tiny model, so the GPU run is a rehearsed one."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs the whole script (about 30 s): `make test-slow`
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_writes_its_reports(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=str(Path(os.sys.executable)),
               BENCH_ARGS="--model builtin:tiny --resolution 64 --device cpu --steps 1 --warmup 0",
               SDXL_ARGS="--model builtin:tiny-sdxl --resolution 128",
               FLUX_ARGS="--model builtin:tiny-flux --resolution 128",
               GPU_GROUPS="modes explicit sdxl flux")  # the compile group needs a GPU to be worth its build time
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    modes = json.loads((tmp_path / "out" / "modes.json").read_text())
    assert [r["name"] for r in modes["results"]] == ["default", "low-vram", "lora"]
    assert all(r["ok"] for r in modes["results"])
    assert modes["results"][0]["config"]["mixed_precision"] == "bf16"
    explicit = json.loads((tmp_path / "out" / "explicit.json").read_text())
    assert explicit["reference"] == "explicit-everywhere"
    assert (tmp_path / "out" / "env.txt").read_text().strip()
    assert not (tmp_path / "out" / "compile.json").exists()
    sdxl = json.loads((tmp_path / "out" / "sdxl.json").read_text())
    assert [r["name"] for r in sdxl["results"]] == ["explicit-everywhere", "default", "optim-in-backward", "low-vram",
                                                     "lora"]
    assert all(r["ok"] for r in sdxl["results"]) and sdxl["model"].startswith("builtin:tiny-sdxl")
    assert sdxl["results"][3]["config"]["lora_rank"] == 4  # --low-vram on SDXL adds LoRA
    flux = json.loads((tmp_path / "out" / "flux.json").read_text())
    assert [r["name"] for r in flux["results"]] == ["lora16", "lora16+nf4", "low-vram"]
    lora, nf4, low_vram = flux["results"]
    assert lora["ok"] and low_vram["ok"] and low_vram["config"]["lora_rank"] == 16
    assert not nf4["ok"] and "needs a CUDA GPU" in nf4["error"]  # this rehearsal has no GPU


@pytest.mark.slow  # trains and checks a 2-step world model (about 2 min): `make test-slow`
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_trains_and_checks_the_world_model(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=str(Path(os.sys.executable)), GPU_GROUPS="world",
               WORLD_ARGS="--device cpu --steps 2 --vae-steps 2 --one-object-steps 2 --batch 2 --workers 2 --no-sample-grids",
               WORLD_CHECK_ARGS="--images-per-prompt 1 --steps 2 --judge-scenes 8")
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    world = tmp_path / "out" / "world"
    assert (world / "pipeline" / "model_index.json").is_file()
    assert not (world / "checkpoint").exists()
    assert "model on held-out prompts" in (world / "check.txt").read_text()
    assert not (tmp_path / "out" / "modes.json").exists()
