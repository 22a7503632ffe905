"""The Edit tab: another photo, one painted layer per region, one prompt per region -> applied in order (Blended
Latent Diffusion); outside the regions the photo is unchanged."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from ...errors import SceneError
from ...inference.options import SD_GUIDANCE, SD_STEPS, EditOptions
from ..mask_inputs import mask_image, masks_from_layers
from ..names import split_prompts
from ..runs import finished_run, stamp
from .toasts import guarded


class EditHandlers:
    """The Edit tab's handler, part of :class:`breakascene.ui.app.App`: it uses its ``runs_dir`` and
    ``pipelines`` (:class:`breakascene.ui.loaded_models.PipelineCache`)."""

    @guarded
    def on_edit(self, name, editor, prompts, seed, steps, guidance, blend_start):
        from ...inference.editing import edit

        run = finished_run(self.runs_dir, name)
        background = (editor or {}).get("background")
        if background is None:
            raise SceneError("upload the photo to edit into the editor first")
        photo = Image.fromarray(np.asarray(background)).convert("RGB")
        masks = masks_from_layers(editor.get("layers"), photo.size)
        prompts = split_prompts(prompts)
        if len(prompts) != len(masks):
            raise SceneError(f"{len(masks)} painted regions but {len(prompts)} prompts; write one prompt per line, "
                             "line 1 for layer 1, and so on")
        regions = [(mask_image(m), p) for m, p in zip(masks, prompts)]
        with self.pipelines.lock:
            paths = edit(run, photo, regions, seed=int(seed), steps=int(steps), guidance=float(guidance),
                         blend_start=float(blend_start), out=run / "edits" / stamp(),
                         pipeline=self.pipelines.get(run), progress=False)
        captions = [f"after region {k}: {p}" for k, p in enumerate(prompts, start=1)] + ["final"]
        return [(Image.open(p), c) for p, c in zip(paths, captions)]


def build_edit_tab(app, run_choice: gr.Dropdown) -> tuple[gr.Number, gr.Number]:
    """The Edit tab, wired to ``app``'s handler for the run chosen in ``run_choice``. Returns its steps and
    guidance fields (which follow the chosen run)."""
    defaults = EditOptions()
    with gr.Tab("Edit", id="edit"):
        gr.Markdown("Upload another photo, paint **one layer per region**, and write one prompt per line "
                    "(line 1 for layer 1, …). Regions are edited one after the other (Blended Latent "
                    "Diffusion); outside them the photo is unchanged.")
        editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=["upload"], label="Photo and regions",
                                elem_id="edit-painter")
        prompts = gr.Textbox(label="Prompt per region", lines=3, placeholder="a photo of <asset0>")
        with gr.Row():
            seed = gr.Number(defaults.seed, label="Seed", precision=0)
            # SD's numbers until a run is chosen, then its model's (as the Generate tab's)
            steps = gr.Number(SD_STEPS, label="Steps", precision=0, minimum=1)
            guidance = gr.Number(SD_GUIDANCE, label="Guidance")
            blend_start = gr.Slider(0, 0.95, value=defaults.blend_start, step=0.05,
                                    label="Blend start (steps skipped)")
        edit_button = gr.Button("Apply the regions in order", variant="primary")
        gallery = gr.Gallery(label="After each region, then the result", columns=4, format="png",
                             elem_id="edit-gallery", object_fit="contain")

    edit_button.click(app.on_edit, [run_choice, editor, prompts, seed, steps, guidance, blend_start], gallery)
    return steps, guidance
