"""``break-a-scene ui``: the web app (gradio). Mark the concepts of a photo, watch training, play with prompts.

Layout (built in :func:`build_app`, top to bottom):

    Run: [finished runs v] [refresh]                      used by Generate, Edit and Download
    Scene     photo -> masks by painting layers, clicking/boxing (SAM), phrases (OWLv2 + SAM) or mask files;
              names; coloured preview and area/overlap stats
    Extract   model, preset, steps (their defaults follow the model) -> Start / Cancel, with the run's estimated
              duration next to them; live progress line (phase, step, losses, ETA) and the end-of-phase
              attention maps; interrupted runs -> Resume
    Generate  prompt + handle chips, seed, number of images -> gallery (prompt and seed under each image),
              attention view on demand; Variations and Background-scene buttons
    Edit      another photo, one painted layer per region, one prompt per region -> applied in order (BLD)
    Download  the run folder as a zip, or the textual-inversion export

What runs where: training runs in one background thread (:class:`breakascene.ui_logic.TrainingWorker`, one run
at a time); the page polls its status once a second. Generation, variations and edits run in the request's
worker thread, one at a time (they share one loaded pipeline). Uploads are read from gradio's cache and saved
under names this module chooses; a file name from the browser never becomes a path. Every message is shown as
text: toasts get it HTML-escaped (:func:`page_error`, :func:`show_warning`), Markdown lines as code spans or
backslash-escaped text.

Everything the app does goes through the library (``load_scene``, ``ExtractConfig``, ``extract``,
``generate``/``variations``, ``edit``, ``export``, ``segment.make_masks``); the logic that is not layout lives in
:mod:`breakascene.ui_logic`, where it is tested without a browser.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home (and no hang on a closed network)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from . import ui_logic as logic  # noqa: E402
from .config import DEFAULT_MODEL, PRESETS, ExtractConfig  # noqa: E402
from .errors import BreakASceneError, RunError, SceneError  # noqa: E402
from .segment import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL  # noqa: E402

CSS = """
.bas-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.bas-progress > div { height: 100%; background: var(--color-accent); transition: width 0.4s; }
.bas-progress-text { font-family: var(--font-mono); font-size: 0.9em; margin-top: 4px; }
"""
# System fonts only: the default theme fetches Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
POLL_SECONDS = 1.0
MAX_UPLOAD = "200mb"
DOWNLOAD_KEEP_SECONDS = 3600
GRADIO_CACHE_CLEANUP = (3600, 24 * 3600)  # every hour, drop gradio's cached uploads and outputs older than a day


def show_warning(message: object) -> None:
    """A yellow toast showing ``message`` as text. Gradio renders a toast's message as HTML, so it is escaped:
    unescaped, a handle like ``<asset0>`` would be taken for a tag and the message cut there."""
    gr.Warning(logic.message_html(message))


def page_error(message: object) -> gr.Error:
    """The ``gr.Error`` (a red toast) that shows ``message`` as text, escaped like :func:`show_warning`'s."""
    return gr.Error(logic.message_html(message), print_exception=False)


def _guarded(fn):
    """Turns every failure of a handler into one line in the page (a toast), never a traceback.

    Bad input (the library's ``BreakASceneError``) shows its message; anything else shows its type and message,
    and the traceback goes to the server's log. The library's warnings (e.g. "mask is tiny") become toasts.
    Every message is shown as text (:func:`page_error`, :func:`show_warning`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                result = fn(*args, **kwargs)
            for warning in caught:
                if issubclass(warning.category, UserWarning):
                    show_warning(warning.message)
            return result
        except gr.Error:
            raise
        except BreakASceneError as error:
            raise page_error(error) from None
        except Exception as error:  # noqa: BLE001
            import traceback

            from .failures import describe_failure

            traceback.print_exc()
            raise page_error(describe_failure(error, traceback_hint="")[0]) from None

    return wrapper


def progress_html(status: logic.TrainingStatus) -> str:
    """The progress bar and its line (``ui_logic.progress_line``) as HTML; ``data-state`` is for tests."""
    import html

    percent = int(round(100 * status.fraction))
    return (
        f'<div class="bas-progress" data-state="{status.state}" data-percent="{percent}">'
        f'<div style="width:{percent}%"></div></div>'
        f'<div class="bas-progress-text">{html.escape(logic.progress_line(status))}</div>'
    )


def interrupted_choices(runs: logic.RunList) -> list[tuple[str, str]]:
    """The *Interrupted runs* list: (label, run name); runs interrupted on the command line are listed too, so
    that choosing one says how to resume it."""
    return [(name, name) for name in runs.resumable] + [
        (f"{name} (started on the command line)", name) for name in runs.interrupted_elsewhere
    ]


def _warm_up() -> None:
    import importlib

    for module in ("recipe", "generation", "editing"):
        importlib.import_module(f".{module}", __package__)


class PipelineCache:
    """One loaded pipeline (the last run used), and a lock so one generation or edit runs at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self._key = None
        self._pipe = None

    def get(self, run: Path):
        """The run's pipeline; call with :attr:`lock` held."""
        from .generation import load_pipeline

        key = (str(run.resolve()), (run / "scene.json").stat().st_mtime_ns)
        if key != self._key:
            self._pipe, self._key = None, None  # free the old one before loading the next
            self._pipe = load_pipeline(run)[0]
            self._key = key
        return self._pipe


class App:
    """The handlers behind the page, with what they share: the runs folder, the training worker, the loaded
    pipeline and segmentation models. Methods named ``on_*`` are wired to the page in :func:`build_app`."""

    def __init__(self, runs_dir: str | Path = "runs", model: str = DEFAULT_MODEL, sam_model: str = DEFAULT_SAM_MODEL,
                 detector_model: str = DEFAULT_DETECTOR_MODEL, worker: logic.TrainingWorker | None = None):
        self.runs_dir = Path(runs_dir)
        self.model, self.sam_model, self.detector_model = model, sam_model, detector_model
        self.worker = worker or logic.TrainingWorker()
        self.pipelines = PipelineCache()
        self._segmenters: dict[tuple[str, str], object] = {}
        self._segment_lock = threading.Lock()
        self.downloads = Path(tempfile.mkdtemp(prefix="breakascene-ui-"))  # zips are made here, served from here
        self._device: str | None = None
        # The page's defaults need the model's native size (breakascene.models, which imports torch and diffusers:
        # seconds), so that is imported here, before the warm-up thread: diffusers' lazy imports are not safe from
        # two threads at once (building the page while the thread imported gave "cannot import name
        # 'AutoencoderKL' from 'diffusers'").
        from . import models  # noqa: F401

        # Import the training and generation code now, in the background, so the first click does not wait for it.
        threading.Thread(target=_warm_up, name="ui-warm-up", daemon=True).start()

    # -- Scene ------------------------------------------------------------------------------------------
    @staticmethod
    def _photo(state) -> Image.Image:
        if not state or state.get("photo") is None:
            raise SceneError("upload a photo first (Scene tab)")
        return state["photo"]

    def _show_masks(self, state, names: str):
        """(preview image, stats text) of the masks in ``state``."""
        from .mask_tools import preview

        masks = state.get("masks") if state else None
        if not masks:
            return None, ""
        labels = logic.mask_labels(names, len(masks))
        return preview(state["photo"], masks, labels), logic.describe_masks(masks, labels)

    @_guarded
    def on_photo(self, photo):
        """A new photo: reset the masks, put the photo into the painter and the click view."""
        from .segment import open_photo

        if photo is None:
            return None, None, None, None, "", "", ""
        photo = open_photo(photo)
        state = {"photo": photo, "masks": None}
        editor = {"background": photo, "layers": [], "composite": photo}
        return state, editor, photo, None, "no masks yet: paint, click, type phrases or upload mask files", "", ""

    @_guarded
    def on_use_layers(self, state, editor, names):
        photo = self._photo(state)
        masks = logic.masks_from_layers((editor or {}).get("layers"), photo.size)
        state = {"photo": photo, "masks": masks}
        return (state, *self._show_masks(state, names))

    @_guarded
    def on_use_files(self, state, files, names):
        photo = self._photo(state)
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (files or [])]
        state = {"photo": photo, "masks": logic.masks_from_files(paths, photo.size)}
        return (state, *self._show_masks(state, names))

    def _segmenter(self, kind: str, model: str):
        """A loaded SAM (``kind="sam"``) or OWLv2 (``"detector"``) model, kept for the next click."""
        from .segment import Detector, Segmenter

        key = (kind, model)
        if key not in self._segmenters:
            self._segmenters[key] = (Segmenter if kind == "sam" else Detector).load(model)
        return self._segmenters[key]

    @_guarded
    def on_click(self, state, points, boxes, mode, evt: gr.SelectData):
        photo = self._photo(state)
        x, y = evt.index[0], evt.index[1]
        points, boxes = logic.add_click(points, boxes, x, y, mode)
        return points, boxes, logic.draw_prompts(photo, points, boxes)

    @_guarded
    def on_prompts_typed(self, state, points, boxes):
        return logic.draw_prompts(self._photo(state), points, boxes)

    @_guarded
    def on_sam(self, state, points, boxes, sam_model, names):
        from .segment import MaskRequest, check_request, make_masks

        photo = self._photo(state)
        lines = lambda text: [line.strip() for line in str(text or "").splitlines() if line.strip()]  # noqa: E731
        request = MaskRequest(points=lines(points), boxes=lines(boxes), sam_model=(sam_model or "").strip())
        if not request.given:
            raise SceneError("click on the photo first: each click in 'new concept' mode starts a mask")
        check_request(request, photo.size)  # malformed or outside the photo: before loading SAM
        with self._segment_lock:
            result = make_masks(photo, request, sam=self._segmenter("sam", request.sam_model))
        state = {"photo": photo, "masks": result.masks}
        return (state, *self._show_masks(state, names))

    @_guarded
    def on_text(self, state, phrases, threshold, sam_model, detector_model):
        from .segment import MaskRequest, check_request, make_masks, phrase_name

        photo = self._photo(state)
        request = MaskRequest(text=phrases or "", detection_threshold=float(threshold),
                              sam_model=(sam_model or "").strip(), detector_model=(detector_model or "").strip())
        check_request(request, photo.size)
        with self._segment_lock:
            sam = self._segmenter("sam", request.sam_model)
            result = make_masks(photo, request, sam=sam, detector=self._segmenter("detector", request.detector_model))
        names = ", ".join(phrase_name(p) for p in result.labels)
        state = {"photo": photo, "masks": result.masks}
        scores = ", ".join(f"{p}: score {s:.2f}" for p, s in zip(result.labels, result.scores or []))
        preview, stats = self._show_masks(state, names)
        return state, names, ", ".join(result.labels), preview, f"{scores}\n{stats}"

    @_guarded
    def on_names(self, state, names):
        return self._show_masks(state, names)

    # -- Extract ----------------------------------------------------------------------------------------
    def device_type(self) -> str:
        """Where training will run: ``cuda``, ``mps`` or ``cpu``, as ``extract`` picks it (no ``--device`` here)."""
        if self._device is None:
            from .models import default_device

            self._device = default_device().type
        return self._device

    def _model(self, model) -> str:
        """The model box, or the app's ``--model`` when it is empty (as Start reads it)."""
        return (model or "").strip() or self.model

    def estimate(self, model, preset, resolution, phase1_steps, phase2_steps) -> str:
        """The estimated duration next to Start (``ui_logic.estimate_text``) for these settings."""
        return logic.estimate_text(self._model(model), resolution, phase1_steps, phase2_steps, self.device_type(),
                                   preset)

    @_guarded
    def on_settings(self, model, preset, resolution, phase1_steps, phase2_steps):
        """A resolution, steps or preset changed: a new estimate."""
        return self.estimate(model, preset, resolution, phase1_steps, phase2_steps)

    @_guarded
    def on_model_changed(self, shown_for: logic.TrainingDefaults, model, preset, resolution, phase1_steps,
                         phase2_steps):
        """The model box changed: the resolution and steps still at the previous model's defaults take the new
        model's (``ui_logic.follow_model``), and the estimate follows.

        Returns:
            (the defaults now shown, resolution, phase 1 steps, phase 2 steps, estimate)
        """
        defaults = logic.training_defaults(self._model(model))
        resolution, phase1_steps, phase2_steps = logic.follow_model(
            shown_for or defaults, defaults, resolution, phase1_steps, phase2_steps)
        estimate = self.estimate(model, preset, resolution, phase1_steps, phase2_steps)
        return defaults, resolution, phase1_steps, phase2_steps, estimate

    @_guarded
    def on_start(self, state, names, init_words, model, preset, resolution, phase1_steps, phase2_steps,
                 checkpoint_every, seed, run_name, overwrite):
        from .handles import make_handles
        from .models import check_model_reference
        from .run_folder import partial_path
        from .scene import load_scene

        if self.worker.busy():
            message = self.worker.status().run
            show_warning(f"busy: {message!r} is training; one training runs at a time")
            return (f"**Busy:** the run {logic.markdown_code(message)} is training; one training runs at a time. "
                    "Wait or cancel it.")
        photo = self._photo(state)
        masks = state.get("masks")
        if not masks:
            raise SceneError("make the masks first (Scene tab): paint layers, click, type phrases or upload files")
        name = logic.sanitize_run_name(run_name)
        config = ExtractConfig.from_preset(
            preset, model=self._model(model), resolution=int(resolution),
            names=logic.parse_word_list(names, len(masks), "names"),
            init_words=logic.parse_word_list(init_words, len(masks), "init words", commas_only=True),
            phase1_steps=int(phase1_steps), phase2_steps=int(phase2_steps),
            checkpoint_every=int(checkpoint_every), seed=int(seed),
        )
        check_model_reference(config.model)
        make_handles(len(masks), config.names, config.init_words, config.background)
        scene = load_scene(photo, [logic.mask_image(m) for m in masks], config.resolution)
        out = self.runs_dir / name
        if out.exists() and not overwrite:
            raise RunError(f"a run named {name!r} exists; tick 'replace an existing run' or choose another name")
        if partial_path(out).exists() and not overwrite:
            raise RunError(f"an interrupted run named {name!r} exists; resume it under 'Interrupted runs' or tick "
                           "'replace an existing run'")
        job = logic.job_dir(self.runs_dir, name)
        logic.save_job(job, photo, masks, config.to_dict())
        self.worker.start(scene, config, out, overwrite=bool(overwrite),
                          on_finished=lambda: shutil.rmtree(job, ignore_errors=True))
        return (f"started {logic.markdown_code(name)}: {config.total_steps} steps of "
                f"{logic.markdown_code(config.model)} at {config.resolution} px")

    @_guarded
    def on_cancel(self):
        if self.worker.cancel():
            return "cancelling: the run stops after the current step"
        return "nothing is training"

    @_guarded
    def on_resume(self, name):
        from .scene import load_scene

        runs = logic.list_runs(self.runs_dir)
        if name in runs.interrupted_elsewhere:
            raise RunError(f"{name!r} was started on the command line; resume it there with the same command plus "
                           f"--resume (its output folder is {self.runs_dir / name})")
        if not name or name not in runs.resumable:
            raise RunError("choose an interrupted run from the list (press refresh)")
        photo, masks, values = logic.load_job(logic.job_dir(self.runs_dir, name))
        config = ExtractConfig(**values)
        config.validate()
        scene = load_scene(photo, masks, config.resolution)
        job = logic.job_dir(self.runs_dir, name)
        self.worker.start(scene, config, self.runs_dir / name, resume=True,
                          on_finished=lambda: shutil.rmtree(job, ignore_errors=True))
        return f"resuming {logic.markdown_code(name)}"

    def poll(self, shown: str):
        """Once a second: the progress line always; the attention maps and run lists only when they change."""
        status = self.worker.status()
        files = logic.attention_files(status.attention_dir) if status.attention_dir else []
        key = f"{status.run}|{status.state}|{','.join(f.name for f in files)}"
        if key == shown:
            return progress_html(status), gr.skip(), shown, gr.skip(), gr.skip()
        gallery = [(Image.open(f), f"end of {f.stem}: each handle's mask and cross-attention") for f in files]
        runs = logic.list_runs(self.runs_dir)
        run_choice = gr.Dropdown(choices=runs.finished, value=status.run) if status.state == "finished" \
            else gr.Dropdown(choices=runs.finished)
        return progress_html(status), gallery, key, run_choice, gr.Dropdown(choices=interrupted_choices(runs))

    def on_refresh(self, current):
        runs = logic.list_runs(self.runs_dir)
        value = current if current in runs.finished else (runs.finished[-1] if runs.finished else None)
        return gr.Dropdown(choices=runs.finished, value=value), gr.Dropdown(choices=interrupted_choices(runs))

    # -- Generate ---------------------------------------------------------------------------------------
    def _tokens(self, run: Path) -> tuple[list[str], dict]:
        from .run_folder import read_scene_json

        info = read_scene_json(run)
        return [h["token"] for h in info["handles"]], info

    def on_run_selected(self, name):
        """The handle chips and a line about the chosen run."""
        try:
            run = logic.finished_run(self.runs_dir, name)
            tokens, info = self._tokens(run)
        except BreakASceneError:
            return gr.Dataset(samples=[]), "no run chosen"
        handles = ", ".join(logic.markdown_code(t) for t in tokens)
        about = (f"{logic.markdown_code(name)}: {handles} · base model {logic.markdown_code(info.get('base_model'))}"
                 f" · {logic.markdown_text(info.get('resolution'))} px")
        return gr.Dataset(samples=[[t] for t in tokens]), about

    @staticmethod
    def on_chip(sample, prompt):
        token = sample[0] if isinstance(sample, (list, tuple)) else sample
        return logic.insert_handle(prompt, str(token))

    def _gallery(self, images):
        """(image, caption) pairs for the gallery, the attention views, and a list of prompt and seed."""
        items = [(Image.open(i.path), f"{i.prompt} · seed {i.seed}") for i in images]
        attention = [(Image.open(i.attention_path), f"{i.prompt} · seed {i.seed}: attention per handle")
                     for i in images if i.attention_path]
        listing = "\n".join(f"{k}. {i.prompt} · seed {i.seed}" for k, i in enumerate(images, start=1))
        return items, gr.Gallery(value=attention, visible=bool(attention)), listing

    def _generation_kwargs(self, seed, num_images, steps, guidance, scheduler, attention):
        return dict(num_images=int(num_images), seed=int(seed), steps=int(steps), guidance=float(guidance),
                    scheduler=scheduler, attention_maps=bool(attention), progress=False)

    @_guarded
    def on_generate(self, name, prompt, seed, num_images, steps, guidance, scheduler, attention):
        from .generation import generate

        run = logic.finished_run(self.runs_dir, name)
        prompts = logic.split_prompts(prompt)
        with self.pipelines.lock:
            images = generate(run, prompts, out=run / "samples" / logic.stamp(), pipeline=self.pipelines.get(run),
                              **self._generation_kwargs(seed, num_images, steps, guidance, scheduler, attention))
        return self._gallery(images)

    @_guarded
    def on_variations(self, name, seed, num_images, steps, guidance, scheduler, attention):
        from .generation import variations

        run = logic.finished_run(self.runs_dir, name)
        with self.pipelines.lock:
            images = variations(run, out=run / "variations" / logic.stamp(), pipeline=self.pipelines.get(run),
                                **self._generation_kwargs(seed, num_images, steps, guidance, scheduler, attention))
        return self._gallery(images)

    @_guarded
    def on_background(self, name, thing, seed, num_images, steps, guidance, scheduler, attention):
        from .generation import generate

        run = logic.finished_run(self.runs_dir, name)
        prompt = logic.background_prompt(thing, self._tokens(run)[0])
        with self.pipelines.lock:
            images = generate(run, [prompt], out=run / "samples" / logic.stamp(), pipeline=self.pipelines.get(run),
                              **self._generation_kwargs(seed, num_images, steps, guidance, scheduler, attention))
        return self._gallery(images)

    # -- Edit -------------------------------------------------------------------------------------------
    @_guarded
    def on_edit(self, name, editor, prompts, seed, steps, guidance, blend_start):
        from .editing import edit

        run = logic.finished_run(self.runs_dir, name)
        background = (editor or {}).get("background")
        if background is None:
            raise SceneError("upload the photo to edit into the editor first")
        photo = Image.fromarray(np.asarray(background)).convert("RGB")
        masks = logic.masks_from_layers(editor.get("layers"), photo.size)
        prompts = logic.split_prompts(prompts)
        if len(prompts) != len(masks):
            raise SceneError(f"{len(masks)} painted regions but {len(prompts)} prompts; write one prompt per line, "
                             "line 1 for layer 1, and so on")
        regions = [(logic.mask_image(m), p) for m, p in zip(masks, prompts)]
        with self.pipelines.lock:
            paths = edit(run, photo, regions, seed=int(seed), steps=int(steps), guidance=float(guidance),
                         blend_start=float(blend_start), out=run / "edits" / logic.stamp(),
                         pipeline=self.pipelines.get(run), progress=False)
        captions = [f"after region {k}: {p}" for k, p in enumerate(prompts, start=1)] + ["final"]
        return [(Image.open(p), c) for p, c in zip(paths, captions)]

    # -- Download ---------------------------------------------------------------------------------------
    def _download_folder(self) -> Path:
        """A new folder for one zip. Gradio copies a returned file into its own cache, so our copies of earlier
        downloads are dropped after an hour rather than piling up (a run's zip is as large as the run)."""
        for old in self.downloads.iterdir():
            if time.time() - old.stat().st_mtime > DOWNLOAD_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.downloads))

    @_guarded
    def on_zip(self, name):
        run = logic.finished_run(self.runs_dir, name)
        folder = self._download_folder()
        return str(logic.zip_folder(run, folder / f"{run.name}.zip"))

    @_guarded
    def on_export(self, name):
        from .exports import export

        run = logic.finished_run(self.runs_dir, name)
        folder = self._download_folder()
        out = export(run, folder / f"{run.name}-textual-inversion", format="textual-inversion")
        return str(logic.zip_folder(out, folder / f"{out.name}.zip"))


def build_app(app: App) -> gr.Blocks:
    """The page: every component and which handler of ``app`` each button calls."""
    with gr.Blocks(title="break-a-scene", analytics_enabled=False, delete_cache=GRADIO_CACHE_CLEANUP) as blocks:
        gr.Markdown(
            "# break-a-scene\nOne photo, a mask per concept → a text handle per concept (`<asset0>`, …, `<bg>`). "
            f"Runs are saved in {logic.markdown_code(app.runs_dir)}."
        )
        scene_state = gr.State(None)
        shown_key = gr.State("")
        # The model whose defaults the Extract tab's resolution and steps show (see App.on_model_changed).
        defaults = logic.training_defaults(app.model)
        defaults_state = gr.State(defaults)
        runs = logic.list_runs(app.runs_dir)
        with gr.Row():
            run_choice = gr.Dropdown(choices=runs.finished, value=runs.finished[-1] if runs.finished else None,
                                     label="Run (for Generate, Edit, Download)", elem_id="run-choice", scale=4)
            refresh = gr.Button("↻ refresh runs", scale=1, size="sm")

        with gr.Tabs():
            # ---------------------------------------------------------------------------------- Scene
            with gr.Tab("Scene", id="scene"):
                with gr.Row():
                    with gr.Column(scale=1):
                        photo = gr.Image(type="pil", label="Photo", sources=["upload", "clipboard"], elem_id="photo")
                        names = gr.Textbox(label="Handle names, one per mask (empty: asset0, asset1, …); Enter "
                                           "updates the preview", placeholder="dog, shirt", elem_id="names")
                        init_words = gr.Textbox(label="Init words, comma-separated (empty: the names)",
                                                placeholder="dog, red shirt", elem_id="init-words")
                    with gr.Column(scale=2):
                        with gr.Tabs():
                            with gr.Tab("Paint"):
                                gr.Markdown("Paint each concept on **its own layer** (add layers in the layer menu, "
                                            "bottom right of the editor).")
                                editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=[],  # the Photo box
                                                        label="Paint the concepts", elem_id="painter",
                                                        brush=gr.Brush(colors=["#e6194b", "#3cb44b", "#ffe119",
                                                                               "#0082c8"], color_mode="fixed"))
                                use_layers = gr.Button("Use the painted layers as masks", elem_id="use-layers")
                            with gr.Tab("Click or box (SAM)"):
                                click_view = gr.Image(type="pil", label="Click on the photo", interactive=False,
                                                      elem_id="click-view", format="png")
                                mode = gr.Radio(list(logic.CLICK_MODES), value=logic.CLICK_MODES[0], label="A click")
                                with gr.Row():
                                    points = gr.Textbox(label="Point groups (one mask per line)", lines=3,
                                                        placeholder="120,80+200,90-50,60", elem_id="points")
                                    boxes = gr.Textbox(label="Boxes (one mask per line)", lines=3,
                                                       placeholder="10,20,200,180", elem_id="boxes")
                                sam_model = gr.Textbox(app.sam_model, label="SAM model (Hub id or local folder)",
                                                       elem_id="sam-model")
                                use_sam = gr.Button("Segment with SAM", elem_id="use-sam")
                            with gr.Tab("Text (OWLv2 + SAM)"):
                                phrases = gr.Textbox(label="Phrases, one mask each", placeholder="dog, red shirt")
                                threshold = gr.Slider(0, 1, value=0.1, step=0.01, label="Detection threshold")
                                detector_model = gr.Textbox(app.detector_model, label="Detector (OWLv2) model")
                                sam_model_text = gr.Textbox(app.sam_model, label="SAM model")
                                use_text = gr.Button("Find and segment")
                            with gr.Tab("Mask files"):
                                mask_files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                                     label="One mask image per concept, white = concept",
                                                     elem_id="mask-files")
                                use_files = gr.Button("Use these mask files", elem_id="use-files")
                with gr.Row():
                    mask_preview = gr.Image(type="pil", label="Masks", interactive=False, format="png",
                                            elem_id="mask-preview")
                    mask_stats = gr.Textbox(label="Mask stats (area, overlaps)", lines=6, interactive=False,
                                            elem_id="mask-stats")

            # ---------------------------------------------------------------------------------- Extract
            with gr.Tab("Extract", id="extract"):
                with gr.Row():
                    model = gr.Textbox(app.model, label="Base model (Hub id, diffusers folder, .safetensors, "
                                       "builtin:tiny)", elem_id="model", scale=3)
                    preset = gr.Dropdown(list(PRESETS), value="paper", label="Preset", scale=1, elem_id="preset")
                    resolution = gr.Number(defaults.resolution, label="Resolution", precision=0, minimum=64, step=64,
                                           elem_id="resolution", scale=1)
                with gr.Row():
                    phase1_steps = gr.Number(defaults.phase1_steps, label="Phase 1 steps (handles)", precision=0,
                                             minimum=0, elem_id="phase1-steps")
                    phase2_steps = gr.Number(defaults.phase2_steps, label="Phase 2 steps (handles + model)",
                                             precision=0, minimum=0, elem_id="phase2-steps")
                    checkpoint_every = gr.Number(100, label="Checkpoint every N steps (0: never; cancel keeps it)",
                                                 precision=0, minimum=0, elem_id="checkpoint-every")
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                with gr.Row():
                    run_name = gr.Textbox("scene", label="Run name", elem_id="run-name", scale=3)
                    overwrite = gr.Checkbox(False, label="replace an existing run of this name", scale=1)
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="start", scale=1)
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1)
                    # Before Start, how long the run will take (ui_logic.estimate_text); it follows the settings.
                    estimate = gr.Markdown(app.estimate(app.model, "paper", defaults.resolution, defaults.phase1_steps,
                                                        defaults.phase2_steps), elem_id="estimate",
                                           latex_delimiters=[], scale=2)
                extract_status = gr.Markdown(elem_id="extract-status", latex_delimiters=[])
                progress = gr.HTML(progress_html(app.worker.status()), elem_id="progress")
                attention = gr.Gallery(label="Attention maps at the end of each phase", columns=2, format="png",
                                       elem_id="attention-previews", object_fit="contain")
                with gr.Accordion("Interrupted runs", open=False):
                    with gr.Row():
                        resumable = gr.Dropdown(choices=interrupted_choices(runs), label="Interrupted runs",
                                                elem_id="resumable", scale=4)
                        resume = gr.Button("Resume", scale=1, elem_id="resume")

            # ---------------------------------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate"):
                about_run = gr.Markdown("no run chosen", elem_id="about-run", latex_delimiters=[])
                chips = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[], elem_id="chips",
                                   label="Handles (click to insert)", layout="gallery")
                prompt = gr.Textbox(label="Prompt (one per line)", lines=2, elem_id="prompt",
                                    placeholder="a photo of <asset0> at the beach")
                with gr.Row():
                    gen_seed = gr.Number(0, label="Seed of the first image", precision=0, elem_id="gen-seed")
                    num_images = gr.Number(2, label="Images per prompt", precision=0, minimum=1, elem_id="num-images")
                    steps = gr.Number(50, label="Steps", precision=0, minimum=1, elem_id="gen-steps")
                    guidance = gr.Number(7.5, label="Guidance", elem_id="guidance")
                    scheduler = gr.Dropdown(["default", "ddim", "dpm"], value="default", label="Sampler")
                show_attention = gr.Checkbox(False, label="show where each handle looks (attention view)",
                                             elem_id="show-attention")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    variations_button = gr.Button("Variations (all concepts)", elem_id="variations")
                    thing = gr.Textbox("a car", label="new in the background", scale=1, elem_id="thing")
                    background_button = gr.Button("Background scene: … at <bg>", elem_id="background")
                gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery", object_fit="contain")
                listing = gr.Textbox(label="Prompt and seed of each image", lines=3, interactive=False,
                                     elem_id="listing")
                attention_view = gr.Gallery(label="Attention per handle", columns=2, format="png", visible=False,
                                            elem_id="attention-view", object_fit="contain")

            # ---------------------------------------------------------------------------------- Edit
            with gr.Tab("Edit", id="edit"):
                gr.Markdown("Upload another photo, paint **one layer per region**, and write one prompt per line "
                            "(line 1 for layer 1, …). Regions are edited one after the other (Blended Latent "
                            "Diffusion); outside them the photo is unchanged.")
                edit_editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=["upload"],
                                             label="Photo and regions", elem_id="edit-painter")
                edit_prompts = gr.Textbox(label="Prompt per region", lines=3, placeholder="a photo of <asset0>")
                with gr.Row():
                    edit_seed = gr.Number(0, label="Seed", precision=0)
                    edit_steps = gr.Number(50, label="Steps", precision=0, minimum=1)
                    edit_guidance = gr.Number(7.5, label="Guidance")
                    blend_start = gr.Slider(0, 0.95, value=0.25, step=0.05, label="Blend start (steps skipped)")
                edit_button = gr.Button("Apply the regions in order", variant="primary")
                edit_gallery = gr.Gallery(label="After each region, then the result", columns=4, format="png",
                                          elem_id="edit-gallery", object_fit="contain")

            # ---------------------------------------------------------------------------------- Download
            with gr.Tab("Download", id="download"):
                with gr.Row():
                    zip_button = gr.Button("Run folder as .zip", elem_id="zip")
                    export_button = gr.Button("Textual-inversion export as .zip", elem_id="export")
                download = gr.File(label="Download", interactive=False, elem_id="download")

        # ------------------------------------------------------------------------------------ wiring
        photo.change(app.on_photo, photo, [scene_state, editor, click_view, mask_preview, mask_stats, points, boxes])
        use_layers.click(app.on_use_layers, [scene_state, editor, names], [scene_state, mask_preview, mask_stats])
        use_files.click(app.on_use_files, [scene_state, mask_files, names], [scene_state, mask_preview, mask_stats])
        click_view.select(app.on_click, [scene_state, points, boxes, mode], [points, boxes, click_view])
        for box in (points, boxes):  # typing (not clicking) redraws the prompts; only the last keystroke counts
            box.input(app.on_prompts_typed, [scene_state, points, boxes], click_view, trigger_mode="always_last",
                      show_progress="hidden")
        use_sam.click(app.on_sam, [scene_state, points, boxes, sam_model, names],
                      [scene_state, mask_preview, mask_stats])
        use_text.click(app.on_text, [scene_state, phrases, threshold, sam_model_text, detector_model],
                       [scene_state, names, init_words, mask_preview, mask_stats])
        # Enter only, not blur: a blur fires when a mask button is clicked and could land after (over) its result.
        names.submit(app.on_names, [scene_state, names], [mask_preview, mask_stats])

        # The defaults and the estimate follow the settings as they are typed; both are quick, so they skip the
        # queue, where they would wait behind a generation. `change`, not `input`, on the model box: gradio 6's
        # Textbox fires `input` from key presses only, so a model name pasted with the mouse would not count, and
        # nothing but the user writes to that box.
        model.change(app.on_model_changed, [defaults_state, model, preset, resolution, phase1_steps, phase2_steps],
                     [defaults_state, resolution, phase1_steps, phase2_steps, estimate], trigger_mode="always_last",
                     show_progress="hidden", queue=False)
        for setting in (preset, resolution, phase1_steps, phase2_steps):
            setting.change(app.on_settings, [model, preset, resolution, phase1_steps, phase2_steps], estimate,
                           trigger_mode="always_last", show_progress="hidden", queue=False)
        start.click(app.on_start, [scene_state, names, init_words, model, preset, resolution, phase1_steps,
                                   phase2_steps, checkpoint_every, seed, run_name, overwrite], extract_status)
        cancel.click(app.on_cancel, None, extract_status)
        resume.click(app.on_resume, resumable, extract_status)
        timer = gr.Timer(POLL_SECONDS)
        timer.tick(app.poll, shown_key, [progress, attention, shown_key, run_choice, resumable],
                   show_progress="hidden", queue=False)
        refresh.click(app.on_refresh, run_choice, [run_choice, resumable])

        run_choice.change(app.on_run_selected, run_choice, [chips, about_run])
        blocks.load(app.on_run_selected, run_choice, [chips, about_run])
        chips.click(app.on_chip, [chips, prompt], prompt)
        options = [gen_seed, num_images, steps, guidance, scheduler, show_attention]
        outputs = [gallery, attention_view, listing]
        generate_button.click(app.on_generate, [run_choice, prompt, *options], outputs)
        variations_button.click(app.on_variations, [run_choice, *options], outputs)
        background_button.click(app.on_background, [run_choice, thing, *options], outputs)

        edit_button.click(app.on_edit, [run_choice, edit_editor, edit_prompts, edit_seed, edit_steps, edit_guidance,
                                        blend_start], edit_gallery)
        zip_button.click(app.on_zip, run_choice, download)
        export_button.click(app.on_export, run_choice, download)
    return blocks


def launch(blocks: gr.Blocks, options: dict, *, block: bool = True):
    """Starts the server with ``options`` from :func:`ui_logic.launch_options` (always an explicit address)."""
    blocks.queue(default_concurrency_limit=1)
    return blocks.launch(
        **options, prevent_thread_lock=not block, show_error=False, ssr_mode=False,
        quiet=not options["share"],  # gradio's own lines only for the public link, which only it knows
        max_file_size=MAX_UPLOAD, theme=THEME, css=CSS, footer_links=["gradio"],
    )


def serve(model: str | None = None, host: str | None = None, port: int = logic.DEFAULT_PORT, share: bool = False,
          runs_dir: str | Path = "runs", sam_model: str = DEFAULT_SAM_MODEL,
          detector_model: str = DEFAULT_DETECTOR_MODEL) -> int:
    """``break-a-scene ui``: checks the address, warns if it is not loopback, and serves until Ctrl-C."""
    options, notes = logic.launch_options(host, port, share)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    app = App(runs_dir, model or DEFAULT_MODEL, sam_model, detector_model)
    address = options["server_name"]
    address = f"[{address}]" if ":" in address and not address.startswith("[") else address  # IPv6
    print(f"break-a-scene ui: http://{address}:{options['server_port']} (runs in {Path(runs_dir).resolve()}); "
          "Ctrl-C stops it", flush=True)
    launch(build_app(app), options)
    return 0
