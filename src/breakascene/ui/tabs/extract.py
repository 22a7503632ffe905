"""The Extract tab: model, preset and steps (their defaults follow the model) -> Start / Cancel, with the run's
estimated duration next to them; the live progress line (phase, step, losses, ETA) and the end-of-phase attention
maps; interrupted runs -> Resume."""

from __future__ import annotations

import html
import shutil

import gradio as gr
from PIL import Image

from ...config import PRESETS, ExtractConfig
from ...errors import RunError, SceneError
from ..estimate import estimate_text
from ..mask_inputs import mask_image
from ..messages import markdown_code
from ..names import parse_word_list, sanitize_run_name
from ..runs import RunList, attention_files, job_dir, list_runs, load_job, save_job
from ..training_defaults import TrainingDefaults, follow_model, scaled_settings, training_defaults
from ..training_status import TrainingStatus, progress_line
from .scene import scene_photo
from .toasts import guarded, show_warning


def progress_html(status: TrainingStatus) -> str:
    """The progress bar and its line (:func:`breakascene.ui.training_status.progress_line`) as HTML;
    ``data-state`` is for tests."""
    percent = int(round(100 * status.fraction))
    return (
        f'<div class="bas-progress" data-state="{status.state}" data-percent="{percent}">'
        f'<div style="width:{percent}%"></div></div>'
        f'<div class="bas-progress-text">{html.escape(progress_line(status))}</div>'
    )


def interrupted_choices(runs: RunList) -> list[tuple[str, str]]:
    """The *Interrupted runs* list: (label, run name); runs interrupted on the command line are listed too, so
    that choosing one says how to resume it."""
    return [(name, name) for name in runs.resumable] + [
        (f"{name} (started on the command line)", name) for name in runs.interrupted_elsewhere
    ]


class ExtractHandlers:
    """The Extract tab's handlers, part of :class:`breakascene.ui.app.App`: they use its ``runs_dir``, ``model``
    (``--model``) and ``worker`` (:class:`breakascene.ui.training_worker.TrainingWorker`)."""

    _device: str | None = None

    def device_type(self) -> str:
        """Where training will run: ``cuda``, ``mps`` or ``cpu``, as ``extract`` picks it (no ``--device`` here)."""
        if self._device is None:
            from ...models.loading import default_device

            self._device = default_device().type
        return self._device

    def _model(self, model) -> str:
        """The model box, or the app's ``--model`` when it is empty (as Start reads it)."""
        return (model or "").strip() or self.model

    def estimate(self, model, preset, resolution, phase1_steps, phase2_steps) -> str:
        """The estimated duration next to Start (:func:`breakascene.ui.estimate.estimate_text`) for these settings."""
        return estimate_text(self._model(model), resolution, phase1_steps, phase2_steps, self.device_type(), preset)

    @guarded
    def on_settings(self, model, preset, resolution, phase1_steps, phase2_steps):
        """A resolution, steps or preset changed: a new estimate."""
        return self.estimate(model, preset, resolution, phase1_steps, phase2_steps)

    @guarded
    def on_model_changed(self, shown_for: TrainingDefaults, model, preset, resolution, phase1_steps, phase2_steps):
        """The model box changed: the resolution and steps still at the previous model's defaults take the new
        model's (:func:`breakascene.ui.training_defaults.follow_model`), and the estimate follows.

        Returns:
            (the defaults now shown, resolution, phase 1 steps, phase 2 steps, estimate)
        """
        defaults = training_defaults(self._model(model))
        resolution, phase1_steps, phase2_steps = follow_model(
            shown_for or defaults, defaults, resolution, phase1_steps, phase2_steps)
        estimate = self.estimate(model, preset, resolution, phase1_steps, phase2_steps)
        return defaults, resolution, phase1_steps, phase2_steps, estimate

    @guarded
    def on_start(self, state, names, init_words, model, preset, resolution, phase1_steps, phase2_steps,
                 checkpoint_every, seed, run_name, overwrite):
        from ...run_folder import partial_path
        from ...scene import load_scene
        from ...training.preflight import preflight

        if self.worker.busy():
            message = self.worker.status().run
            show_warning(f"busy: {message!r} is training; one training runs at a time")
            return (f"**Busy:** the run {markdown_code(message)} is training; one training runs at a time. "
                    "Wait or cancel it.")
        photo = scene_photo(state)
        masks = state.get("masks")
        if not masks:
            raise SceneError("make the masks first (Scene tab): paint layers, click, type phrases or upload files")
        name = sanitize_run_name(run_name)
        model = self._model(model)
        config = ExtractConfig.from_preset(
            preset, **scaled_settings(model), model=model, resolution=int(resolution),
            names=parse_word_list(names, len(masks), "names"),
            init_words=parse_word_list(init_words, len(masks), "init words", commas_only=True),
            phase1_steps=int(phase1_steps), phase2_steps=int(phase2_steps),
            checkpoint_every=int(checkpoint_every), seed=int(seed),
        )
        scene = load_scene(photo, [mask_image(m) for m in masks], config.resolution)
        out = self.runs_dir / name
        preflight(scene, config, out, overwrite=bool(overwrite))  # every check extract makes, before it starts
        if out.exists() and not overwrite:
            raise RunError(f"a run named {name!r} exists; tick 'replace an existing run' or choose another name")
        if partial_path(out).exists() and not overwrite:
            raise RunError(f"an interrupted run named {name!r} exists; resume it under 'Interrupted runs' or tick "
                           "'replace an existing run'")
        job = job_dir(self.runs_dir, name)
        save_job(job, photo, masks, config.to_dict())
        self.worker.start(scene, config, out, overwrite=bool(overwrite),
                          on_finished=lambda: shutil.rmtree(job, ignore_errors=True))
        return (f"started {markdown_code(name)}: {config.total_steps} steps of "
                f"{markdown_code(config.model)} at {config.resolution} px")

    @guarded
    def on_cancel(self):
        if self.worker.cancel():
            return "cancelling: the run stops after the current step"
        return "nothing is training"

    @guarded
    def on_resume(self, name):
        from ...scene import load_scene
        from ...training.preflight import preflight

        runs = list_runs(self.runs_dir)
        if name in runs.interrupted_elsewhere:
            raise RunError(f"{name!r} was started on the command line; resume it there with the same command plus "
                           f"--resume (its output folder is {self.runs_dir / name})")
        if not name or name not in runs.resumable:
            raise RunError("choose an interrupted run from the list (press refresh)")
        photo, masks, values = load_job(job_dir(self.runs_dir, name))
        config = ExtractConfig(**values)
        scene = load_scene(photo, masks, config.resolution)
        preflight(scene, config, self.runs_dir / name, resume=True)
        job = job_dir(self.runs_dir, name)
        self.worker.start(scene, config, self.runs_dir / name, resume=True,
                          on_finished=lambda: shutil.rmtree(job, ignore_errors=True))
        return f"resuming {markdown_code(name)}"

    def poll(self, shown: str):
        """Once a second: the progress line always; the attention maps and run lists only when they change."""
        status = self.worker.status()
        files = attention_files(status.attention_dir) if status.attention_dir else []
        key = f"{status.run}|{status.state}|{','.join(f.name for f in files)}"
        if key == shown:
            return progress_html(status), gr.skip(), shown, gr.skip(), gr.skip()
        gallery = [(Image.open(f), f"end of {f.stem}: each handle's mask and cross-attention") for f in files]
        runs = list_runs(self.runs_dir)
        run_choice = gr.Dropdown(choices=runs.finished, value=status.run) if status.state == "finished" \
            else gr.Dropdown(choices=runs.finished)
        return progress_html(status), gallery, key, run_choice, gr.Dropdown(choices=interrupted_choices(runs))


def build_extract_tab(app, scene_state: gr.State, names: gr.Textbox, init_words: gr.Textbox, runs: RunList):
    """The Extract tab, wired to ``app``'s handlers (Start reads the Scene tab's state, names and init words).

    Returns:
        (progress, attention gallery, interrupted-runs dropdown): what the page's poll and refresh update.
    """
    defaults = training_defaults(app.model)
    with gr.Tab("Extract", id="extract"):
        # The model whose defaults the resolution and steps show (see ExtractHandlers.on_model_changed); inside the
        # tab, since a child of gr.Tabs that is not a tab breaks the tabs after it.
        defaults_state = gr.State(defaults)
        with gr.Row():
            model = gr.Textbox(app.model, label="Base model (Hub id, diffusers folder, .safetensors, builtin:shapes, builtin:tiny)",
                               elem_id="model", scale=3)
            preset = gr.Dropdown(list(PRESETS), value="paper", label="Preset", scale=1, elem_id="preset")
            resolution = gr.Number(defaults.resolution, label="Resolution", precision=0, minimum=64, step=64,
                                   elem_id="resolution", scale=1)
        with gr.Row():
            phase1_steps = gr.Number(defaults.phase1_steps, label="Phase 1 steps (handles)", precision=0,
                                     minimum=0, elem_id="phase1-steps")
            phase2_steps = gr.Number(defaults.phase2_steps, label="Phase 2 steps (handles + model)", precision=0,
                                     minimum=0, elem_id="phase2-steps")
            checkpoint_every = gr.Number(100, label="Checkpoint every N steps (0: never; cancel keeps it)",
                                         precision=0, minimum=0, elem_id="checkpoint-every")
            seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
        with gr.Row():
            run_name = gr.Textbox("scene", label="Run name", elem_id="run-name", scale=3)
            overwrite = gr.Checkbox(False, label="replace an existing run of this name", scale=1)
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="start", scale=1)
            cancel = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1)
            # Before Start, how long the run will take (estimate_text); it follows the settings.
            estimate = gr.Markdown(app.estimate(app.model, "paper", defaults.resolution, defaults.phase1_steps,
                                                defaults.phase2_steps), elem_id="estimate", latex_delimiters=[],
                                   scale=2)
        extract_status = gr.Markdown(elem_id="extract-status", latex_delimiters=[])
        progress = gr.HTML(progress_html(app.worker.status()), elem_id="progress")
        attention = gr.Gallery(label="Attention maps at the end of each phase", columns=2, format="png",
                               elem_id="attention-previews", object_fit="contain")
        with gr.Accordion("Interrupted runs", open=False), gr.Row():
            resumable = gr.Dropdown(choices=interrupted_choices(runs), label="Interrupted runs", elem_id="resumable",
                                    scale=4)
            resume = gr.Button("Resume", scale=1, elem_id="resume")

    # The defaults and the estimate follow the settings as they are typed; both are quick, so they skip the
    # queue, where they would wait behind a generation. `change`, not `input`, on the model box: gradio 6's
    # Textbox fires `input` from key presses only, so a model name pasted with the mouse would not count, and
    # nothing but the user writes to that box.
    settings = [model, preset, resolution, phase1_steps, phase2_steps]
    model.change(app.on_model_changed, [defaults_state, *settings],
                 [defaults_state, resolution, phase1_steps, phase2_steps, estimate], trigger_mode="always_last",
                 show_progress="hidden", queue=False)
    for setting in (preset, resolution, phase1_steps, phase2_steps):
        setting.change(app.on_settings, settings, estimate, trigger_mode="always_last", show_progress="hidden",
                       queue=False)
    start.click(app.on_start, [scene_state, names, init_words, *settings, checkpoint_every, seed, run_name,
                               overwrite], extract_status)
    cancel.click(app.on_cancel, None, extract_status)
    resume.click(app.on_resume, resumable, extract_status)
    return progress, attention, resumable
