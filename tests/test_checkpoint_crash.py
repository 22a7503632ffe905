"""A checkpoint save cut short at any instant leaves a checkpoint a resume can use: the previous one or the new
one, complete, with its own step. Cut by an exception before each file operation in turn, and by SIGKILL
(a child process waits at a chosen operation, then the test kills it)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from breakascene.run_folder import partial_path
from helpers.checkpoints import SAVERS, InjectedCrash, intercept
from helpers.cli import run_cli

TESTS = Path(__file__).resolve().parent
TINY64 = ["--model", "builtin:tiny", "--resolution", "64", "--quiet"]
OLD, NEW, NEXT = 2, 4, 6  # the steps of the checkpoint in place, the one being saved, and the one saved after


def _start(saver, folder: Path, start: str) -> int | None:
    """Makes the folder a save begins from; returns the step a resume finds there (None: no checkpoint)."""
    if start == "first save":
        return None
    saver.save(folder, saver.parts(OLD))
    if start == "over a checkpoint and leftovers":
        # what an earlier save killed just before its switch leaves: its files and its record, unreferenced
        cut = saver.parts(OLD + 1)
        counting = _copy(folder, folder.with_name("counting"))
        with pytest.MonkeyPatch.context() as patch:
            calls = intercept(patch)
            saver.save(counting, cut)
        with pytest.MonkeyPatch.context() as patch:
            intercept(patch, stop_at=calls.index("os.replace") + 1)
            with pytest.raises(InjectedCrash):
                saver.save(folder, cut)
        assert len(list(folder.glob("files-*"))) == 2
    return OLD


def _copy(template: Path, folder: Path) -> Path:
    if template.exists():
        shutil.copytree(template, folder)
    return folder


def _assert_clean_after_next_save(saver, folder: Path) -> None:
    saver.save(folder, saver.parts(NEXT))
    assert saver.read(folder) == NEXT
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and saver.record in names and names[0].startswith("files-"), names  # no leftovers


@pytest.mark.parametrize("start", ["first save", "over a checkpoint", "over a checkpoint and leftovers"])
@pytest.mark.parametrize("saver_name", sorted(SAVERS))
def test_a_save_failing_before_any_file_operation_leaves_the_old_or_the_new_checkpoint(saver_name, start, tmp_path):
    saver = SAVERS[saver_name]
    template = tmp_path / "template" / "checkpoint"
    before = _start(saver, template, start)
    assert saver.read(template) == before if template.exists() else before is None
    new = saver.parts(NEW)

    uncut = _copy(template, tmp_path / "uncut" / "checkpoint")
    with pytest.MonkeyPatch.context() as patch:
        calls = intercept(patch)
        saver.save(uncut, new)
    assert calls.count("os.replace") == 1 and calls.count("save_file") >= 1, calls
    switch = calls.index("os.replace") + 1
    assert calls[switch:], "nothing after the switch: the old version would never be deleted"

    for stop_at in range(1, len(calls) + 1):
        folder = _copy(template, tmp_path / f"cut-{stop_at}" / "checkpoint")
        with pytest.MonkeyPatch.context() as patch:
            intercept(patch, stop_at=stop_at)
            with pytest.raises(InjectedCrash):
                saver.save(folder, new)
        found = saver.read(folder)
        expected = before if stop_at <= switch else NEW
        assert found == expected, f"cut before operation {stop_at} ({calls[stop_at - 1]}): step {found}"
        _assert_clean_after_next_save(saver, folder)


_CHILD = """
import sys, time
from pathlib import Path
import pytest
from helpers.checkpoints import SAVERS, intercept

saver, folder, stop_at = SAVERS[sys.argv[1]], Path(sys.argv[2]), int(sys.argv[3])
parts = saver.parts(int(sys.argv[4]))

def wait_to_be_killed(name):
    print(f"stopped before {name}", flush=True)
    time.sleep(600)

with pytest.MonkeyPatch.context() as patch:
    intercept(patch, stop_at, wait_to_be_killed)
    saver.save(folder, parts)
print("finished", flush=True)
"""


def _line_or_fail(process: subprocess.Popen, timeout: float = 120) -> str:
    """The child's first line of output; fails (and kills it) if none comes in ``timeout`` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        pytest.fail(f"the child printed nothing in {timeout} s: {process.communicate()}")
    return process.stdout.readline().strip()


@pytest.mark.parametrize("where", ["before the switch", "deleting the old version"])
def test_a_save_killed_by_sigkill_leaves_the_old_or_the_new_checkpoint(where, tmp_path):
    saver = SAVERS["training"]
    folder = tmp_path / "checkpoint"
    saver.save(folder, saver.parts(OLD))
    counting, new = _copy(folder, tmp_path / "counting" / "checkpoint"), saver.parts(NEW)
    with pytest.MonkeyPatch.context() as patch:
        calls = intercept(patch)
        saver.save(counting, new)
    switch = calls.index("os.replace") + 1
    if where == "before the switch":
        stop_at, operation, expected = switch, "os.replace", OLD
    else:  # the first file of the old version's folder is deleted: it is half there when the process dies
        stop_at = calls.index("os.unlink", switch) + 1
        operation, expected = "os.unlink", NEW

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", _CHILD, saver.name, str(folder), str(stop_at), str(NEW)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert _line_or_fail(process) == f"stopped before {operation}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL

    assert saver.read(folder) == expected
    _assert_clean_after_next_save(saver, folder)


_KILLED_EXTRACT = """
import os, sys, time

real_replace, saves = os.replace, []

def replace(source, target):
    # the second checkpoint's switch: its files and state are written, the first checkpoint is still the one in place
    if os.path.basename(target) == "state.json":
        saves.append(target)
        if len(saves) == 2:
            print("stopped before the switch", flush=True)
            time.sleep(600)
    return real_replace(source, target)

os.replace = replace
from breakascene.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # two tiny extractions, each in a process of its own: `make test-slow`
def test_extract_killed_in_the_middle_of_a_checkpoint_save_resumes(scene_dir, tmp_path):
    out = tmp_path / "run"
    steps = ["--phase1-steps", "4", "--phase2-steps", "2", "--checkpoint-every", "2"]
    argv = [sys.executable, "-c", _KILLED_EXTRACT, "extract", str(scene_dir), *TINY64, *steps, "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _line_or_fail(process, timeout=300) == "stopped before the switch"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    checkpoint = partial_path(out) / "checkpoint"
    assert len(list(checkpoint.glob("files-*"))) == 2  # the new checkpoint's files are there, not yet in place
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2  # the first one is what resumes

    code, _, err = run_cli(["extract", str(scene_dir), *TINY64, *steps, "--resume", "--out", str(out)])
    assert code == 0, err
    assert (out / "scene.json").is_file() and not partial_path(out).exists()
