"""The web app's logic without gradio or a browser: binding, names, masks from the page, runs, zips, the worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from breakascene import ui_logic as logic
from breakascene.errors import ConfigError, RunError, SceneError

# ------------------------------------------------------------------------------------------------
# binding


def test_loopback_by_default_and_gradio_env_cannot_widen_it(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SHARE", "True")
    options, warnings = logic.launch_options()
    assert options == {"server_name": "127.0.0.1", "server_port": 7860, "share": False}
    assert warnings == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "localhost", "::1", "[::1]"])
def test_loopback_hosts_bind_quietly(host):
    options, warnings = logic.launch_options(host, 8000)
    assert options["server_name"] == host and warnings == []


def test_other_hosts_and_share_only_when_asked_and_with_a_warning():
    options, warnings = logic.launch_options("0.0.0.0", 8000)
    assert options["server_name"] == "0.0.0.0" and len(warnings) == 1 and "no login" in warnings[0]
    options, warnings = logic.launch_options(None, 8000, share=True)
    assert options == {"server_name": "127.0.0.1", "server_port": 8000, "share": True}
    assert "public" in warnings[0]
    for host, port in (("", 8000), ("  ", 8000), ("127.0.0.1", 0), ("127.0.0.1", 70000)):
        with pytest.raises(ConfigError):
            logic.launch_options(host, port)


def test_cli_import_stays_free_of_gradio():
    code = ("import breakascene.cli, sys; "
            "bad = [m for m in sys.modules if m.startswith(('gradio', 'breakascene.ui'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# names and prompts


@pytest.mark.parametrize("text, name", [
    ("scene", "scene"), ("my scene", "my-scene"), ("../../etc/passwd", "etc-passwd"), ("a/b\\c", "a-b-c"),
    ("x.partial", "x-partial"), (".hidden", "hidden"), ("dog_1-v2", "dog_1-v2"), ("ünïcode name", "n-code-name"),
])
def test_run_names_are_one_plain_folder_name(text, name):
    assert logic.sanitize_run_name(text) == name
    assert len(logic.sanitize_run_name("x" * 200)) == logic.RUN_NAME_LIMIT


@pytest.mark.parametrize("text", ["", "   ", "..", "/", "---", None])
def test_run_name_with_nothing_usable_is_an_error(text):
    with pytest.raises(ConfigError, match="give the run a name"):
        logic.sanitize_run_name(text)


def test_word_lists():
    assert logic.parse_word_list("", 2, "names") is None
    assert logic.parse_word_list("dog, shirt", 2, "names") == ["dog", "shirt"]
    assert logic.parse_word_list("dog shirt", 2, "names") == ["dog", "shirt"]
    assert logic.parse_word_list("dog, red shirt", 2, "init words", commas_only=True) == ["dog", "red shirt"]
    with pytest.raises(ConfigError, match="2 masks but 3 names"):
        logic.parse_word_list("a b c", 2, "names")
    assert logic.mask_labels("dog shirt", 2) == ["<dog>", "<shirt>"]
    assert logic.mask_labels("only-one", 2) == ["<asset0>", "<asset1>"]  # half-typed names: the defaults


def test_prompts_from_chips_and_buttons():
    assert logic.insert_handle("", "<dog>") == "<dog>"
    assert logic.insert_handle("a photo of ", "<dog>") == "a photo of <dog>"
    two = logic.insert_handle(logic.insert_handle("a photo of", "<dog>") + " and", "<bg>")
    assert two == "a photo of <dog> and <bg>"
    assert logic.background_prompt(" a car ", ["<asset0>", "<bg>"]) == "a photo of a car at <bg>"
    with pytest.raises(ConfigError, match="no <bg>"):
        logic.background_prompt("a car", ["<asset0>"])
    with pytest.raises(ConfigError):
        logic.background_prompt("", ["<bg>"])
    assert logic.split_prompts("a\n\n b \n") == ["a", "b"]
    with pytest.raises(ConfigError, match="write a prompt"):
        logic.split_prompts(" \n")


# ------------------------------------------------------------------------------------------------
# masks from the page


def _layer(h, w, box, alpha=255):
    layer = np.zeros((h, w, 4), np.uint8)
    y0, y1, x0, x1 = box
    layer[y0:y1, x0:x1] = (230, 25, 75, alpha)
    return layer


def test_brush_layers_become_masks():
    painted = _layer(40, 60, (5, 15, 10, 30))
    painted[15, 10:30, 3] = 60  # a faint anti-aliased edge does not count
    empty = np.zeros((40, 60, 4), np.uint8)
    second = _layer(40, 60, (20, 30, 40, 50), alpha=128)
    masks = logic.masks_from_layers([painted, empty, None, second], (60, 40))
    assert len(masks) == 2 and all(m.dtype == bool and m.shape == (40, 60) for m in masks)
    assert masks[0].sum() == 10 * 20 and masks[0][5:15, 10:30].all()
    assert masks[1].sum() == 10 * 10
    # a canvas of another size (the editor's) is brought to the photo's size
    big = logic.masks_from_layers([_layer(80, 120, (10, 30, 20, 60))], (60, 40))[0]
    assert big.shape == (40, 60) and big[5:15, 10:30].all() and big.sum() == 200
    assert logic.mask_from_layer(np.full((4, 4, 3), 200, np.uint8)).all()
    with pytest.raises(SceneError, match="nothing is painted"):
        logic.masks_from_layers([empty], (60, 40))
    with pytest.raises(SceneError, match="nothing is painted"):
        logic.masks_from_layers(None, (60, 40))


def test_mask_files_are_only_read(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    good = np.zeros((40, 60), np.uint8)
    good[10:20, 10:20] = 255
    paths = [folder / "..evil name.png", folder / "mask1.png"]
    for path in paths:
        Image.fromarray(good).save(path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    masks = logic.masks_from_files([str(p) for p in paths], (60, 40))
    assert [m.sum() for m in masks] == [100, 100]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(folder / "black.png")
    with pytest.raises(SceneError, match="mask file 2 is empty"):
        logic.masks_from_files([str(paths[0]), str(folder / "black.png")], (60, 40))
    with pytest.raises(SceneError, match="mask file 1 is 60x40 but the photo is 50x40"):
        logic.masks_from_files([str(paths[0])], (50, 40))
    with pytest.raises(SceneError, match="no mask files"):
        logic.masks_from_files([], (60, 40))


def test_clicks_become_sam_prompts():
    points, boxes = logic.add_click("", "", 10, 20, "add to last concept (+)")  # first click: a new concept anyway
    assert (points, boxes) == ("10,20", "")
    points, boxes = logic.add_click(points, boxes, 30, 40, "add to last concept (+)")
    points, boxes = logic.add_click(points, boxes, 5, 6, "exclude from last concept (-)")
    points, boxes = logic.add_click(points, boxes, 70, 80, "new concept")
    assert points == "10,20+30,40-5,6\n70,80"
    points, boxes = logic.add_click(points, boxes, 50, 60, "box corner")
    assert boxes == "50,60"
    points, boxes = logic.add_click(points, boxes, 20, 90, "box corner")
    assert boxes == "20,60,50,90"  # corners in any order
    from breakascene.segment import check_request, MaskRequest

    request = MaskRequest(points=points.splitlines(), boxes=boxes.splitlines())
    groups, parsed_boxes, _ = check_request(request, (100, 100))
    assert groups == [[(10, 20, 1), (30, 40, 1), (5, 6, 0)], [(70, 80, 1)]] and parsed_boxes == [(20, 60, 50, 90)]
    drawn = logic.draw_prompts(Image.new("RGB", (100, 100)), points + "\n12,", boxes)  # half-typed lines are skipped
    assert drawn.size == (100, 100) and np.asarray(drawn).any()


# ------------------------------------------------------------------------------------------------
# runs, jobs, zips


def _fake_run(folder):
    folder.mkdir(parents=True)
    (folder / "scene.json").write_text("{}")
    (folder / "model_index.json").write_text("{}")
    (folder / "unet").mkdir()
    (folder / "unet" / "weights.safetensors").write_bytes(b"\0" * 1000)


def test_list_runs_and_finished_run(tmp_path):
    _fake_run(tmp_path / "done")
    (tmp_path / "not-a-run").mkdir()
    for name in ("mine", "cli"):
        (tmp_path / f"{name}.partial" / "checkpoint").mkdir(parents=True)
        (tmp_path / f"{name}.partial" / "checkpoint" / "state.json").write_text("{}")
    (tmp_path / "early.partial").mkdir()  # no checkpoint: nothing to resume
    logic.save_job(logic.job_dir(tmp_path, "mine"), Image.new("RGB", (8, 8)), [np.ones((8, 8), bool)], {"seed": 1})
    runs = logic.list_runs(tmp_path)
    assert (runs.finished, runs.resumable, runs.interrupted_elsewhere) == (["done"], ["mine"], ["cli"])
    assert logic.list_runs(tmp_path / "missing").finished == []
    assert logic.finished_run(tmp_path, "done") == tmp_path / "done"
    for bad in ("../done", "not-a-run", "mine", "", None):
        with pytest.raises(RunError):
            logic.finished_run(tmp_path, bad)


def test_job_round_trip(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8))
    masks = [np.zeros((20, 30), bool), np.ones((20, 30), bool)]
    masks[0][2:5, 3:9] = True
    logic.save_job(tmp_path / "job", photo, masks, {"phase1_steps": 3, "names": ["a", "b"]})
    logic.save_job(tmp_path / "job", photo, masks, {"phase1_steps": 3, "names": ["a", "b"]})  # replaces
    back, mask_images, config = logic.load_job(tmp_path / "job")
    assert np.array_equal(np.asarray(back), np.asarray(photo))
    assert [np.array_equal(np.asarray(m) > 127, want) for m, want in zip(mask_images, masks)] == [True, True]
    assert config == {"phase1_steps": 3, "names": ["a", "b"]}
    with pytest.raises(RunError, match="missing or damaged"):
        logic.load_job(tmp_path / "nothing")


def test_zip_folder(tmp_path):
    _fake_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoint").mkdir()
    (tmp_path / "run" / "checkpoint" / "state.json").write_text("{}")
    path = logic.zip_folder(tmp_path / "run", tmp_path / "out" / "run.zip")
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert names == ["run/model_index.json", "run/scene.json", "run/unet/weights.safetensors"]
        assert archive.getinfo("run/unet/weights.safetensors").compress_type == zipfile.ZIP_STORED
        assert archive.read("run/scene.json") == b"{}"


# ------------------------------------------------------------------------------------------------
# progress and the worker


def test_progress_line_and_eta():
    assert logic.eta_seconds(10.0, 5, 5) == 10.0 and logic.eta_seconds(1.0, 0, 5) is None
    assert logic.format_duration(75) == "1:15" and logic.format_duration(3725) == "1:02:05"
    status = logic.TrainingStatus(run="r", state="training", phase="phase1", step=3, phase_steps=10, global_step=3,
                                  total_steps=20, losses={"rec": 0.5}, eta=61)
    line = logic.progress_line(status)
    assert line == "r: training · phase1 step 3/10 · 3/20 steps · 15 % · losses rec 0.5 · ETA 1:01"
    done = logic.TrainingStatus(run="r", state="finished", global_step=20, total_steps=20, elapsed=5)
    assert "100 %" in logic.progress_line(done) and "took 0:05" in logic.progress_line(done)


class _Config:
    total_steps = 4


def test_worker_runs_one_training_at_a_time(tmp_path):
    release = threading.Event()

    def slow_extract(scene, config, out, *, callback, **kwargs):
        from breakascene.recipe import Progress

        callback(Progress("phase1", 1, 4, 1, 4, {"rec": 1.0}, 0.5))
        release.wait(10)

    worker = logic.TrainingWorker(slow_extract)
    worker.start(None, _Config(), tmp_path / "first")
    with pytest.raises(logic.Busy, match="busy: the run 'first' is training"):
        worker.start(None, _Config(), tmp_path / "second")
    release.set()
    assert worker.wait(10)
    status = worker.status()
    assert (status.state, status.global_step, status.fraction) == ("finished", 4, 1.0)
    assert status.attention_dir == str(tmp_path / "first" / "attention")
    assert not worker.cancel()  # nothing to cancel


def test_worker_reports_failures_in_one_line(tmp_path):
    def bad_extract(*args, **kwargs):
        raise ConfigError("--phase1-lr must be > 0")

    def broken_extract(*args, **kwargs):
        raise KeyError("oops")

    for fn, message in ((bad_extract, "--phase1-lr must be > 0"), (broken_extract, "KeyError: 'oops'")):
        worker = logic.TrainingWorker(fn)
        worker.start(None, _Config(), tmp_path / "run")
        worker.wait(10)
        assert (worker.status().state, worker.status().message) == ("failed", message)


def test_worker_cancel_raises_in_the_callback(tmp_path):
    steps = []

    def extract(scene, config, out, *, callback, **kwargs):
        from breakascene.recipe import Progress

        for step in range(1, 1000):
            steps.append(step)
            callback(Progress("phase1", step, 999, step, 999, None, step * 0.01))
            time.sleep(0.01)

    worker = logic.TrainingWorker(extract)
    worker.start(None, _Config(), tmp_path / "run")
    while worker.status().global_step < 3:
        time.sleep(0.01)
    assert worker.cancel()
    worker.wait(10)
    status = worker.status()
    assert status.state == "cancelled" and "nothing was kept" in status.message and len(steps) < 999
    partial = tmp_path / "run.partial" / "checkpoint"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps({"phase_index": 1, "step": 4}))
    assert "checkpoint at step 4 of phase 2 is kept" in logic._cancel_message(tmp_path / "run")
