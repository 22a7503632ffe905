"""The training log: RUN/logs/train.jsonl holds every step, a resumed run continues it without duplicates, and
--report-to tensorboard writes the same numbers through accelerate's tracker."""

from __future__ import annotations

import json

import pytest

from breakascene.config import ExtractConfig
from breakascene.training.recipe import extract
from breakascene.scene import load_scene_folder
from breakascene.training.log import TrainingLog

from helpers.cli import run_cli
from helpers.tiny import tiny


def _lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]


def test_every_step_is_logged_with_phase_lr_and_losses(scene_dir, tmp_path):
    config = ExtractConfig(model="builtin:tiny", resolution=64, phase1_steps=12, phase2_steps=3, prior_preservation=True,
                           num_class_images=1)
    result = extract(load_scene_folder(scene_dir, 64), config, tmp_path / "run", components=tiny(64), progress=False)
    records = _lines(result.out)
    assert [(r["phase"], r["step"], r["global_step"]) for r in records] == (
        [("phase1", s, s) for s in range(1, 13)] + [("phase2", s, 12 + s) for s in range(1, 4)])
    assert {r["lr"] for r in records[:12]} == {5e-4} and {r["lr"] for r in records[12:]} == {2e-6}
    assert all({"total", "rec", "attention", "prior"} <= set(r) for r in records)
    # phase 1 trains only the handles, which the class prompt cannot reach: its prior loss is not computed
    assert all(r["prior"] is None for r in records[:12]) and all(isinstance(r["prior"], float) for r in records[12:])
    # The every-10-steps losses of scene.json are the same numbers (a term not computed is left out).
    logged = {(r["phase"], r["step"]): r for r in records}
    assert [(e["phase"], "prior" in e) for e in result.losses] == [("phase1", False), ("phase1", False), ("phase2", True)]
    for entry in result.losses:
        assert logged[(entry["phase"], entry["step"])]["total"] == pytest.approx(entry["total"])


def test_a_resumed_run_continues_the_log_without_duplicates(scene_dir, tmp_path):
    out = tmp_path / "run"

    def stop(progress):  # interrupted at step 7, after the checkpoint of step 6 (the log was flushed with it)
        if progress.global_step == 7:
            raise KeyboardInterrupt

    config = ExtractConfig(model="builtin:tiny", resolution=64, phase1_steps=10, phase2_steps=2, checkpoint_every=3)
    scene = load_scene_folder(scene_dir, 64)
    with pytest.raises(KeyboardInterrupt):
        extract(scene, config, out, callback=stop, progress=False)
    log = out.with_name("run.partial") / "logs" / "train.jsonl"
    # What a run killed later would have left: steps past its checkpoint, and a line cut off mid-write.
    log.write_text(log.read_text() + json.dumps({"phase": "phase1", "step": 7, "global_step": 7}) + "\n{broken")
    extract(scene, config, out, resume=True, progress=False)
    assert [r["global_step"] for r in _lines(out)] == list(range(1, 13))


def test_the_log_truncates_to_the_checkpoint(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"global_step": s}) + "\n" for s in range(1, 9)))
    TrainingLog(folder, resume_from=5)
    assert [json.loads(x)["global_step"] for x in (folder / "train.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    TrainingLog(folder, resume_from=None)  # a new run starts an empty log
    assert (folder / "train.jsonl").read_text() == ""


def test_report_to_tensorboard_writes_every_step(scene_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, err = run_cli(["extract", str(scene_dir), "--model", "builtin:tiny", "--resolution", "64", "--quiet",
                            "--phase1-steps", "4", "--phase2-steps", "2", "--report-to", "tensorboard", "--out", str(out),
                            "--prior-preservation", "--class-images", str(scene_dir), "--num-class-images", "1"])
    assert code == 0, err
    events = EventAccumulator(str(out / "logs" / "tensorboard" / "run")).Reload()
    totals = events.Scalars("loss/total")
    assert [e.step for e in totals] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in totals] == pytest.approx([r["total"] for r in _lines(out)])
    # phase 1's prior loss is not computed (null in train.jsonl): TensorBoard gets phase 2's only
    priors = events.Scalars("loss/prior")
    assert [e.step for e in priors] == [5, 6]
    assert [e.value for e in priors] == pytest.approx([r["prior"] for r in _lines(out)[4:]])
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([5e-4] * 4 + [2e-6] * 2)
