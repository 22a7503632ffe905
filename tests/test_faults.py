"""Fault injection: kills, interrupts, a full disk, a read-only folder, damaged files, concurrent runs, pickles.

The contract under fault: one line on stderr (exit 2 for bad input, 1 when running failed, 130 for Ctrl-C),
nothing that looks finished, no user file lost, and a checkpoint kept whenever one was written. Everything runs
on the built-in tiny model at 64 px, so a step takes milliseconds and a whole run a few seconds.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from breakascene.config import ExtractConfig
from breakascene.training.checkpoint import checkpoint_file
from breakascene.training.recipe import extract
from breakascene.run_folder import lock_path, partial_path
from breakascene.scene import load_scene_folder

from helpers.cli import assert_one_error, run_cli

TINY64 = ["--model", "builtin:tiny", "--resolution", "64", "--quiet"]
STEPS = ["--phase1-steps", "4", "--phase2-steps", "100", "--checkpoint-every", "2"]
GEN = ["--steps", "2", "--height", "64", "--width", "64", "--quiet"]


@pytest.fixture(scope="module")
def run64(scene_dir, tmp_path_factory) -> Path:
    """A finished 2 + 2-step run at 64 px; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, "--phase1-steps", "2", "--phase2-steps", "2",
                            "--out", str(out)])
    assert code == 0, err
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


def _extract_process(scene: Path, out: Path, steps: list[str] = STEPS) -> subprocess.Popen:
    """``break-a-scene extract`` in its own process, with ``steps`` (by default checkpointing every 2 steps)."""
    # Ctrl-C raises KeyboardInterrupt even where this process was started with SIGINT ignored (a shell's background
    # job: Python then installs no handler of its own); otherwise this is `break-a-scene extract`.
    main = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from breakascene.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", main, "extract", str(scene), *TINY64, *steps, "--out", str(out)]
    # One thread, so that the killed, the resumed and the uninterrupted runs compute bit for bit alike: with two,
    # oneDNN may sum partial results in an order set by thread timing, and on a loaded machine (CI) they differed.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _run_to_end(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


def _freeze_at_checkpoint(process: subprocess.Popen, out: Path, phase_index: int, timeout: float = 120) -> dict:
    """Waits for a checkpoint of phase ``phase_index`` and freezes the process there at once (SIGSTOP), so that
    what follows happens in the middle of that phase however fast or slow this machine is. Returns the state."""
    state_file = partial_path(out) / "checkpoint" / "state.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced right now
            state = None
        if state is not None and state["phase_index"] == phase_index:
            process.send_signal(signal.SIGSTOP)
            assert state["step"] < 100, state  # the first checkpoints of a 100-step phase: far from its end
            return state
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no checkpoint of phase {phase_index} within {timeout} s")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for part in ("unet", "text_encoder"):
        for file in sorted((run / part).glob("*.safetensors")):
            tensors.update({f"{part}.{k}": v for k, v in load_file(file).items()})
    tensors["handles"] = load_file(run / "handles.safetensors")["embeddings"]
    return tensors


# ----------------------------------------------------------------------------------------------------------
# kills, interrupts, concurrent runs


@pytest.mark.slow  # a real process killed and resumed (about 40 s): `make test-slow`
def test_sigkill_mid_phase_then_resume_is_bit_identical_and_a_second_run_is_refused(scene_dir, tmp_path):
    out = tmp_path / "killed"
    process = _extract_process(scene_dir, out)
    try:
        _freeze_at_checkpoint(process, out, phase_index=1)  # in the middle of phase 2, still holding its lock
        # A second extract on the same folder is refused, with or without --overwrite (which would delete the
        # live run's .partial) or --resume, and the .partial is untouched.
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, err = run_cli(["extract", str(scene_dir), *TINY64, *STEPS, "--out", str(out), *extra])
            assert_one_error(code, err, f"another run (pid {process.pid}) is writing {out}")
            assert (partial_path(out) / "checkpoint" / "state.json").is_file()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert lock_path(out).exists()  # left behind by the killed run: stale, since no process holds it now

    resumed_from = json.loads((partial_path(out) / "checkpoint" / "state.json").read_text())["step"]

    # The resumed half and the uninterrupted reference run in processes started like the killed one, so that
    # all three compute in the same environment (threads, libraries initialised alike) and bits can be compared.
    _run_to_end(_extract_process(scene_dir, out, [*STEPS, "--resume"]))
    assert not lock_path(out).exists() and not partial_path(out).exists()

    reference = tmp_path / "uninterrupted"
    _run_to_end(_extract_process(scene_dir, reference, STEPS[:4]))
    resumed, straight = _weights(out), _weights(reference)
    assert resumed.keys() == straight.keys()
    differ = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not differ, f"resumed at phase-2 step {resumed_from}: {len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.slow  # a real process interrupted (about 12 s): `make test-slow`
def test_sigint_exits_130_and_keeps_the_checkpoint(scene_dir, tmp_path):
    out = tmp_path / "interrupted"
    process = _extract_process(scene_dir, out)
    _freeze_at_checkpoint(process, out, phase_index=1)
    process.send_signal(signal.SIGINT)  # delivered as soon as it runs again, in the middle of phase 2
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted; continue with the same command plus --resume")
    assert (partial_path(out) / "checkpoint" / "state.json").is_file() and not out.exists()
    assert not lock_path(out).exists()  # released on the way out


# ----------------------------------------------------------------------------------------------------------
# a full disk and a read-only folder


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (smaller than the tiny run's 7 MB), or None where this process may not mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fail_writes(monkeypatch, code: int) -> None:
    """The stand-in for a real full or read-only disk where none can be mounted: safetensors' and PIL's writes fail."""
    import safetensors.torch

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code), "weights.safetensors")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)


def test_a_full_disk_is_one_line_and_leaves_nothing_that_looks_finished(scene_dir, run64, small_disk, tmp_path,
                                                                         monkeypatch):
    disk = small_disk
    if disk is None:
        disk = tmp_path / "patched"
        _fail_writes(monkeypatch, errno.ENOSPC)
    out = disk / "run"
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, "--phase1-steps", "1", "--phase2-steps", "1",
                            "--out", str(out)])
    assert_one_error(code, err, "no space left on the device", "--resume", status=1)
    assert not out.exists() and not partial_path(out).exists() and not lock_path(out).exists()
    assert sorted(p.name for p in scene_dir.iterdir()) == ["img.png", "mask0.png", "mask1.png"]

    if small_disk is not None:  # generating onto the full disk: the same one line
        code, _, err = run_cli(["export", str(run64), "--format", "diffusers", "--out", str(disk / "export")])
        assert_one_error(code, err, "no space left on the device", status=1)
        assert not (disk / "export").exists() and not partial_path(disk / "export").exists()


def test_a_read_only_folder_is_one_line(scene_dir, small_disk, tmp_path, monkeypatch):
    disk = small_disk
    if disk is not None:
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
    else:  # the first write of a run is its lock file, through os.open
        disk = tmp_path / "patched"

        def read_only(path, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(os, "open", read_only)
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, "--phase1-steps", "1", "--phase2-steps", "1",
                            "--out", str(disk / "run")])
    assert_one_error(code, err, "read-only", "--out", status=1)


# ----------------------------------------------------------------------------------------------------------
# damaged checkpoints and run folders


@pytest.fixture
def checkpointed(scene_dir, tmp_path) -> Path:
    """An interrupted run whose .partial holds a checkpoint (phase 1, step 2)."""
    out = tmp_path / "partial-run"

    def stop(progress):
        if progress.global_step == 3:
            raise KeyboardInterrupt

    config = ExtractConfig(model="builtin:tiny", resolution=64, phase1_steps=4, phase2_steps=2, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        extract(load_scene_folder(scene_dir, 64), config, out, callback=stop, progress=False)
    assert (partial_path(out) / "checkpoint" / "state.json").is_file()
    return out


RESUME = ["--phase1-steps", "4", "--phase2-steps", "2", "--checkpoint-every", "2", "--resume"]


@pytest.mark.parametrize("file, damage", [
    ("trainable.safetensors", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    ("optimizer.safetensors", lambda p: p.write_bytes(b"\x00" * 16)),
    ("rng.safetensors", lambda p: p.unlink()),
    ("state.json", lambda p: p.write_text("{not json")),
    ("state.json", lambda p: p.write_text(json.dumps({"phase_index": 0}))),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(scene_dir, checkpointed, file, damage):
    kept = partial_path(checkpointed) / "checkpoint"
    damage(kept / file if file == "state.json" else checkpoint_file(kept, file))
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, *RESUME, "--out", str(checkpointed)])
    assert_one_error(code, err, file, "--overwrite")


def test_resume_on_another_photo_or_other_masks_is_refused_saying_what_differs(scene_dir, checkpointed, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(scene_dir, other)
    flipped = other / "mask1.png"
    from PIL import Image, ImageOps

    ImageOps.mirror(Image.open(flipped)).save(flipped)
    code, _, err = run_cli(["extract", str(other), *TINY64, *RESUME, "--out", str(checkpointed)])
    assert_one_error(code, err, "another mask 1 (mask1.png)")
    (other / "mask1.png").unlink()
    code, _, err = run_cli(["extract", str(other), *TINY64, *RESUME, "--no-background", "--out", str(checkpointed)])
    assert_one_error(code, err, "different settings", "background")
    shutil.copyfile(scene_dir / "mask1.png", other / "mask1.png")
    ImageOps.mirror(Image.open(other / "img.png")).save(other / "img.png")
    code, _, err = run_cli(["extract", str(other), *TINY64, *RESUME, "--out", str(checkpointed)])
    assert_one_error(code, err, "another photo")
    # The same inputs still resume.
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, *RESUME, "--out", str(checkpointed)])
    assert code == 0, err


@pytest.mark.parametrize("damage, fragment", [
    (lambda run: shutil.rmtree(run / "unet"), "unet/ folder is missing"),
    (lambda run: (run / "unet" / "config.json").unlink(), "unet/ holds no config file"),
    (lambda run: next((run / "vae").glob("*.safetensors")).write_bytes(b"\x00" * 64), "could not be loaded"),
    (lambda run: (run / "model_index.json").write_text("{"), "model_index.json is damaged"),
])
def test_a_damaged_run_folder_is_one_line(run64, tmp_path, damage, fragment):
    run = _copy(run64, tmp_path)
    damage(run)
    code, _, err = run_cli(["generate", str(run), "a photo of <asset0>", *GEN])
    assert_one_error(code, err, fragment)
    assert not (run / "samples").exists()


# ----------------------------------------------------------------------------------------------------------
# booby-trapped pickles


class _Trap:
    """Unpickling this creates the marker file: proof that a pickle was loaded (and could have run anything)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _plant(path: Path, marker: Path) -> Path:
    """A weights file in torch's own format whose pickle, when loaded, creates ``marker``."""
    torch.save({"weight": _Trap(marker)}, path)
    return path


def test_the_trap_fires_when_loaded(tmp_path):
    marker = tmp_path / "fired"
    trap = _plant(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(trap)  # torch's safe default refuses it, with a paragraph of text
    assert not marker.exists()
    torch.load(trap, weights_only=False)  # what an unguarded loader does
    assert marker.exists()


def test_pickles_in_run_and_model_folders_are_never_loaded(run64, scene_dir, tmp_path):
    marker = tmp_path / "fired"
    run = _copy(run64, tmp_path)
    weights = next((run / "unet").glob("*.safetensors"))
    weights.unlink()
    trap = _plant(run / "unet" / "diffusion_pytorch_model.bin", marker)
    for argv in (["generate", str(run), "a photo of <asset0>", *GEN],
                 ["variations", str(run), "--num-images", "1", *GEN],
                 ["edit", str(run), str(scene_dir / "img.png"), "--region", str(scene_dir / "mask0.png"),
                  "a photo of <asset0>", "--steps", "2", "--out", str(tmp_path / "edit")],
                 ["export", str(run), "--format", "diffusers", "--out", str(tmp_path / "export")]):
        code, _, err = run_cli(argv)
        assert_one_error(code, err, str(trap), "pickle")
    assert not marker.exists()

    # Beside the safetensors weights a pickle is simply ignored.
    beside = _copy(run64, tmp_path / "beside")
    _plant(beside / "text_encoder" / "pytorch_model.bin", marker)
    code, _, err = run_cli(["generate", str(beside), "a photo of <asset0>", *GEN])
    assert code == 0, err
    assert not marker.exists()

    # A base-model folder with a pickle for weights, and a checkpoint file that is a pickle in disguise.
    model = tmp_path / "model"
    shutil.copytree(run64, model, ignore=shutil.ignore_patterns("scene*", "attention", "handles*"))
    next((model / "text_encoder").glob("*.safetensors")).unlink()
    trap = _plant(model / "text_encoder" / "pytorch_model.bin", marker)
    code, _, err = run_cli(["extract", str(scene_dir), "--model", str(model), "--resolution", "64", "--quiet",
                            "--phase1-steps", "1", "--phase2-steps", "0", "--out", str(tmp_path / "from-model")])
    assert_one_error(code, err, str(trap), "pickle")
    assert not marker.exists()


def test_a_pickle_posing_as_a_checkpoint_file_is_refused(scene_dir, checkpointed, tmp_path):
    marker = tmp_path / "fired"
    _plant(checkpoint_file(partial_path(checkpointed) / "checkpoint", "trainable.safetensors"), marker)
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, *RESUME, "--out", str(checkpointed)])
    assert_one_error(code, err, "trainable.safetensors", "damaged")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# numbers and images that cannot be trained on


def test_a_loss_that_becomes_non_finite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(scene_dir, tmp_path):
    out = tmp_path / "diverged"
    # A learning rate no one would choose, but a finite one: phase 2's first update sends the weights to ~1e30.
    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, "--phase1-steps", "4", "--phase2-steps", "6",
                            "--phase2-lr", "1e30", "--checkpoint-every", "2", "--out", str(out)])
    line = assert_one_error(code, err, "non-finite at phase2 step", "last good checkpoint (phase1 step 4)", status=1)
    assert "step 1 of" not in line  # step 1's loss is computed before the first bad update
    assert not out.exists()
    kept = partial_path(out) / "checkpoint"
    state = json.loads((kept / "state.json").read_text())
    assert (state["phase_index"], state["step"]) == (0, 4)
    assert all(torch.isfinite(t).all() for t in load_file(checkpoint_file(kept, "trainable.safetensors")).values())


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels and holds none: all a decompression bomb needs to be opened."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_one_line(scene_dir, tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    code, _, err = run_cli(["extract", str(bomb), "--mask", str(scene_dir / "mask0.png"), *TINY64,
                            "--out", str(tmp_path / "run")])
    assert_one_error(code, err, "bomb.png", "megapixels")
