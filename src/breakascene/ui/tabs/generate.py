"""The Generate tab: prompt + handle chips, seed, number of images -> gallery (prompt and seed under each image),
the attention view on demand; the Variations and Background-scene buttons."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from ...errors import BreakASceneError
from ...inference.options import SD_GUIDANCE, SD_STEPS, GenerationOptions
from ..messages import markdown_code, markdown_text
from ..names import background_prompt, insert_handle, split_prompts
from ..runs import finished_run, stamp
from .toasts import guarded


def _gallery(images):
    """(image, caption) pairs for the gallery, the attention views, and a list of prompt and seed."""
    items = [(Image.open(i.path), f"{i.prompt} · seed {i.seed}") for i in images]
    attention = [(Image.open(i.attention_path), f"{i.prompt} · seed {i.seed}: attention per handle")
                 for i in images if i.attention_path]
    listing = "\n".join(f"{k}. {i.prompt} · seed {i.seed}" for k, i in enumerate(images, start=1))
    return items, gr.Gallery(value=attention, visible=bool(attention)), listing


def _generation_kwargs(seed, num_images, steps, guidance, scheduler, attention):
    return dict(num_images=int(num_images), seed=int(seed), steps=int(steps), guidance=float(guidance),
                scheduler=scheduler, attention_maps=bool(attention), progress=False)


def _tokens(run: Path) -> tuple[list[str], object]:
    from ...run_info import RunInfo

    info = RunInfo.read(run)
    return info.tokens, info


class GenerateHandlers:
    """The Generate tab's handlers, part of :class:`breakascene.ui.app.App`: they use its ``runs_dir`` and
    ``pipelines`` (:class:`breakascene.ui.loaded_models.PipelineCache`)."""

    def on_run_selected(self, name):
        """The handle chips, a line about the chosen run, and its model's steps and guidance (50 and 7.5 for SD
        and SDXL, 28 and 3.5 for FLUX.1-dev), for the Generate and the Edit tab's fields."""
        from ...inference.generation import run_sampling_defaults

        try:
            run = finished_run(self.runs_dir, name)
            tokens, info = _tokens(run)
        except BreakASceneError:
            return gr.Dataset(samples=[]), "no run chosen", *[gr.skip()] * 4
        handles = ", ".join(markdown_code(t) for t in tokens)
        about = (f"{markdown_code(name)}: {handles} · base model {markdown_code(info.base_model)}"
                 f" · {markdown_text(info.resolution)} px")
        steps, guidance = run_sampling_defaults(run, info)
        return gr.Dataset(samples=[[t] for t in tokens]), about, steps, guidance, steps, guidance

    @staticmethod
    def on_chip(sample, prompt):
        token = sample[0] if isinstance(sample, (list, tuple)) else sample
        return insert_handle(prompt, str(token))

    @guarded
    def on_generate(self, name, prompt, seed, num_images, steps, guidance, scheduler, attention):
        from ...inference.generation import generate

        run = finished_run(self.runs_dir, name)
        prompts = split_prompts(prompt)
        with self.pipelines.lock:
            images = generate(run, prompts, out=run / "samples" / stamp(), pipeline=self.pipelines.get(run),
                              **_generation_kwargs(seed, num_images, steps, guidance, scheduler, attention))
        return _gallery(images)

    @guarded
    def on_variations(self, name, seed, num_images, steps, guidance, scheduler, attention):
        from ...inference.generation import variations

        run = finished_run(self.runs_dir, name)
        with self.pipelines.lock:
            images = variations(run, out=run / "variations" / stamp(), pipeline=self.pipelines.get(run),
                                **_generation_kwargs(seed, num_images, steps, guidance, scheduler, attention))
        return _gallery(images)

    @guarded
    def on_background(self, name, thing, seed, num_images, steps, guidance, scheduler, attention):
        from ...inference.generation import generate

        run = finished_run(self.runs_dir, name)
        prompt = background_prompt(thing, _tokens(run)[0])
        with self.pipelines.lock:
            images = generate(run, [prompt], out=run / "samples" / stamp(), pipeline=self.pipelines.get(run),
                              **_generation_kwargs(seed, num_images, steps, guidance, scheduler, attention))
        return _gallery(images)


def build_generate_tab(app, run_choice: gr.Dropdown) -> tuple:
    """The Generate tab, wired to ``app``'s handlers for the run chosen in ``run_choice``. Returns the handle chips,
    the line about the run, and the steps and guidance fields (which follow the chosen run)."""
    defaults = GenerationOptions()
    with gr.Tab("Generate", id="generate"):
        about_run = gr.Markdown("no run chosen", elem_id="about-run", latex_delimiters=[])
        chips = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[], elem_id="chips",
                           label="Handles (click to insert)", layout="gallery")
        prompt = gr.Textbox(label="Prompt (one per line)", lines=2, elem_id="prompt",
                            placeholder="a photo of <asset0> at the beach")
        with gr.Row():
            seed = gr.Number(defaults.seed, label="Seed of the first image", precision=0, elem_id="gen-seed")
            num_images = gr.Number(2, label="Images per prompt", precision=0, minimum=1, elem_id="num-images")
            # SD's and SDXL's until a run is chosen, then its model's (gradio sends an emptied field as 0, so the
            # field cannot be left empty to mean "the model's")
            steps = gr.Number(SD_STEPS, label="Steps", precision=0, minimum=1, elem_id="gen-steps")
            guidance = gr.Number(SD_GUIDANCE, label="Guidance", elem_id="guidance")
            scheduler = gr.Dropdown(["default", "ddim", "dpm"], value=defaults.scheduler, label="Sampler")
        show_attention = gr.Checkbox(False, label="show where each handle looks (attention view)",
                                     elem_id="show-attention")
        with gr.Row():
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            variations_button = gr.Button("Variations (all concepts)", elem_id="variations")
            thing = gr.Textbox("a car", label="new in the background", scale=1, elem_id="thing")
            background_button = gr.Button("Background scene: … at <bg>", elem_id="background")
        gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery", object_fit="contain")
        listing = gr.Textbox(label="Prompt and seed of each image", lines=3, interactive=False, elem_id="listing")
        attention_view = gr.Gallery(label="Attention per handle", columns=2, format="png", visible=False,
                                    elem_id="attention-view", object_fit="contain")

    chips.click(app.on_chip, [chips, prompt], prompt)
    options = [seed, num_images, steps, guidance, scheduler, show_attention]
    outputs = [gallery, attention_view, listing]
    generate_button.click(app.on_generate, [run_choice, prompt, *options], outputs)
    variations_button.click(app.on_variations, [run_choice, *options], outputs)
    background_button.click(app.on_background, [run_choice, thing, *options], outputs)
    return chips, about_run, steps, guidance
