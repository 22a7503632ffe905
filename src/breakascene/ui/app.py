"""``break-a-scene ui``: the web app (gradio). Mark the concepts of a photo, watch training, play with prompts.

Layout (built in :func:`build_app`, top to bottom; each tab in its module of :mod:`breakascene.ui.tabs`):

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

What runs where: training runs in one background thread (:class:`breakascene.ui.training_worker.TrainingWorker`,
one run at a time); the page polls its status once a second. Generation, variations and edits run in the
request's worker thread, one at a time (they share one loaded pipeline). Uploads are read from gradio's cache and
saved under names the app chooses; a file name from the browser never becomes a path. Every message is shown as
text: toasts get it HTML-escaped (:mod:`breakascene.ui.tabs.toasts`), Markdown lines as code spans or
backslash-escaped text.

Everything the app does goes through the library (``load_scene``, ``ExtractConfig``, ``extract``,
``generate``/``variations``, ``edit``, ``export``, ``segmentation.make.make_masks``); the logic that is not layout
lives in the gradio-free modules of :mod:`breakascene.ui`, where it is tested without a browser.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import weakref
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home (and no hang on a closed network)

import gradio as gr  # noqa: E402

from ..config import DEFAULT_MODEL  # noqa: E402
from ..segmentation.loading import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL  # noqa: E402
from .binding import DEFAULT_PORT, launch_options  # noqa: E402
from .loaded_models import PipelineCache, SegmenterCache  # noqa: E402
from .messages import markdown_code  # noqa: E402
from .runs import list_runs  # noqa: E402
from .tabs.download import DownloadHandlers, build_download_tab  # noqa: E402
from .tabs.edit import EditHandlers, build_edit_tab  # noqa: E402
from .tabs.extract import ExtractHandlers, build_extract_tab, interrupted_choices  # noqa: E402
from .tabs.generate import GenerateHandlers, build_generate_tab  # noqa: E402
from .tabs.scene import SceneHandlers, build_scene_tab  # noqa: E402
from .training_worker import TrainingWorker  # noqa: E402

CSS = """
.bas-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.bas-progress > div { height: 100%; background: var(--color-accent); transition: width 0.4s; }
.bas-progress-text { font-family: var(--font-mono); font-size: 0.9em; margin-top: 4px; }
"""
# System fonts only: the default theme fetches Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
POLL_SECONDS = 1.0
MAX_UPLOAD = "200mb"
GRADIO_CACHE_CLEANUP = (3600, 24 * 3600)  # every hour, drop gradio's cached uploads and outputs older than a day


def _warm_up() -> None:
    import importlib

    for module in ("breakascene.training.recipe", "breakascene.inference.generation", "breakascene.inference.editing"):
        importlib.import_module(module)


class App(SceneHandlers, ExtractHandlers, GenerateHandlers, EditHandlers, DownloadHandlers):
    """The handlers behind the page, with what they share: the runs folder, the training worker, the loaded
    pipeline and segmentation models. Each tab's handlers (methods named ``on_*``) are written next to its
    components in :mod:`breakascene.ui.tabs`; :func:`build_app` wires them to the page."""

    def __init__(self, runs_dir: str | Path = "runs", model: str = DEFAULT_MODEL, sam_model: str = DEFAULT_SAM_MODEL,
                 detector_model: str = DEFAULT_DETECTOR_MODEL, worker: TrainingWorker | None = None):
        self.runs_dir = Path(runs_dir)
        self.model, self.sam_model, self.detector_model = model, sam_model, detector_model
        self.worker = worker or TrainingWorker()
        self.pipelines = PipelineCache()
        self.segmenters = SegmenterCache()
        self.downloads = Path(tempfile.mkdtemp(prefix="breakascene-ui-"))  # zips are made here, served from here
        # removed with the app, or at exit: otherwise every launch (and every test's app) leaves a folder in /tmp
        weakref.finalize(self, shutil.rmtree, self.downloads, ignore_errors=True)
        # The page's defaults need the model's native size (breakascene.models, which imports torch and diffusers:
        # seconds), so that is imported here, before the warm-up thread: diffusers' lazy imports are not safe from
        # two threads at once (building the page while the thread imported gave "cannot import name
        # 'AutoencoderKL' from 'diffusers'").
        from ..models import loading as models  # noqa: F401

        # Import the training and generation code now, in the background, so the first click does not wait for it.
        threading.Thread(target=_warm_up, name="ui-warm-up", daemon=True).start()

    def on_refresh(self, current):
        """The refresh button: the finished runs (keeping the chosen one) and the interrupted ones."""
        runs = list_runs(self.runs_dir)
        value = current if current in runs.finished else (runs.finished[-1] if runs.finished else None)
        return gr.Dropdown(choices=runs.finished, value=value), gr.Dropdown(choices=interrupted_choices(runs))


def build_app(app: App) -> gr.Blocks:
    """The page: the run chooser above the tabs (:mod:`breakascene.ui.tabs`), and what the page polls."""
    with gr.Blocks(title="break-a-scene", analytics_enabled=False, delete_cache=GRADIO_CACHE_CLEANUP) as blocks:
        gr.Markdown(
            "# break-a-scene\nOne photo, a mask per concept → a text handle per concept (`<asset0>`, …, `<bg>`). "
            f"Runs are saved in {markdown_code(app.runs_dir)}."
        )
        scene_state = gr.State(None)
        shown_key = gr.State("")
        runs = list_runs(app.runs_dir)
        with gr.Row():
            run_choice = gr.Dropdown(choices=runs.finished, value=runs.finished[-1] if runs.finished else None,
                                     label="Run (for Generate, Edit, Download)", elem_id="run-choice", scale=4)
            refresh = gr.Button("↻ refresh runs", scale=1, size="sm")

        with gr.Tabs():
            names, init_words = build_scene_tab(app, scene_state)
            progress, attention, resumable = build_extract_tab(app, scene_state, names, init_words, runs)
            chips, about_run, *generate_sampling = build_generate_tab(app, run_choice)
            edit_sampling = build_edit_tab(app, run_choice)
            build_download_tab(app, run_choice)

        timer = gr.Timer(POLL_SECONDS)
        timer.tick(app.poll, shown_key, [progress, attention, shown_key, run_choice, resumable],
                   show_progress="hidden", queue=False)
        refresh.click(app.on_refresh, run_choice, [run_choice, resumable])
        about = [chips, about_run, *generate_sampling, *edit_sampling]  # the chosen run's handles and sampling
        run_choice.change(app.on_run_selected, run_choice, about)
        blocks.load(app.on_run_selected, run_choice, about)
    return blocks


def launch(blocks: gr.Blocks, options: dict, *, block: bool = True):
    """Starts the server with ``options`` from :func:`breakascene.ui.binding.launch_options` (always an explicit
    address)."""
    blocks.queue(default_concurrency_limit=1)
    return blocks.launch(
        **options, prevent_thread_lock=not block, show_error=False, ssr_mode=False,
        quiet=not options["share"],  # gradio's own lines only for the public link, which only it knows
        max_file_size=MAX_UPLOAD, theme=THEME, css=CSS, footer_links=["gradio"],
    )


def serve(model: str | None = None, host: str | None = None, port: int = DEFAULT_PORT, share: bool = False,
          runs_dir: str | Path = "runs", sam_model: str = DEFAULT_SAM_MODEL,
          detector_model: str = DEFAULT_DETECTOR_MODEL) -> int:
    """``break-a-scene ui``: checks the address, warns if it is not loopback, and serves until Ctrl-C."""
    options, notes = launch_options(host, port, share)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    app = App(runs_dir, model or DEFAULT_MODEL, sam_model, detector_model)
    address = options["server_name"]
    address = f"[{address}]" if ":" in address and not address.startswith("[") else address  # IPv6
    print(f"break-a-scene ui: http://{address}:{options['server_port']} (runs in {Path(runs_dir).resolve()}); "
          "Ctrl-C stops it", flush=True)
    launch(build_app(app), options)
    return 0
