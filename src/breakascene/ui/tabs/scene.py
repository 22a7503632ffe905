"""The Scene tab: a photo, and its masks by painting layers, clicking or boxing (SAM), phrases (OWLv2 + SAM) or
mask files; the handle names and init words; the coloured preview and the area/overlap stats."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from ...errors import SceneError
from ..clicks import CLICK_MODES, add_click, draw_prompts
from ..mask_inputs import describe_masks, masks_from_files, masks_from_layers
from ..names import mask_labels
from .toasts import guarded

PAINT_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#0082c8"]


def scene_photo(state) -> Image.Image:
    """The photo in the Scene tab's state (``{"photo": ..., "masks": ...}``).

    Raises:
        SceneError: no photo was uploaded yet.
    """
    if not state or state.get("photo") is None:
        raise SceneError("upload a photo first (Scene tab)")
    return state["photo"]


def show_masks(state, names: str):
    """(preview image, stats text) of the masks in ``state``."""
    from ...segmentation.preview import preview

    masks = state.get("masks") if state else None
    if not masks:
        return None, ""
    labels = mask_labels(names, len(masks))
    return preview(state["photo"], masks, labels), describe_masks(masks, labels)


class SceneHandlers:
    """The Scene tab's handlers, part of :class:`breakascene.ui.app.App`: they use its ``segmenters``
    (:class:`breakascene.ui.loaded_models.SegmenterCache`)."""

    @guarded
    def on_photo(self, photo):
        """A new photo: reset the masks, put the photo into the painter and the click view."""
        from ...segmentation.make import open_photo

        if photo is None:
            return None, None, None, None, "", "", ""
        photo = open_photo(photo)
        state = {"photo": photo, "masks": None}
        editor = {"background": photo, "layers": [], "composite": photo}
        return state, editor, photo, None, "no masks yet: paint, click, type phrases or upload mask files", "", ""

    @guarded
    def on_use_layers(self, state, editor, names):
        photo = scene_photo(state)
        masks = masks_from_layers((editor or {}).get("layers"), photo.size)
        state = {"photo": photo, "masks": masks}
        return (state, *show_masks(state, names))

    @guarded
    def on_use_files(self, state, files, names):
        photo = scene_photo(state)
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (files or [])]
        state = {"photo": photo, "masks": masks_from_files(paths, photo.size)}
        return (state, *show_masks(state, names))

    @guarded
    def on_click(self, state, points, boxes, mode, evt: gr.SelectData):
        photo = scene_photo(state)
        x, y = evt.index[0], evt.index[1]
        points, boxes = add_click(points, boxes, x, y, mode)
        return points, boxes, draw_prompts(photo, points, boxes)

    @guarded
    def on_prompts_typed(self, state, points, boxes):
        return draw_prompts(scene_photo(state), points, boxes)

    @guarded
    def on_sam(self, state, points, boxes, sam_model, names):
        from ...segmentation.make import make_masks
        from ...segmentation.prompts import MaskRequest, check_request

        photo = scene_photo(state)
        lines = lambda text: [line.strip() for line in str(text or "").splitlines() if line.strip()]  # noqa: E731
        request = MaskRequest(points=lines(points), boxes=lines(boxes), sam_model=(sam_model or "").strip())
        if not request.given:
            raise SceneError("click on the photo first: each click in 'new concept' mode starts a mask")
        check_request(request, photo.size)  # malformed or outside the photo: before loading SAM
        with self.segmenters.lock:
            result = make_masks(photo, request, sam=self.segmenters.get("sam", request.sam_model))
        state = {"photo": photo, "masks": result.masks}
        return (state, *show_masks(state, names))

    @guarded
    def on_text(self, state, phrases, threshold, sam_model, detector_model):
        from ...segmentation.make import make_masks
        from ...segmentation.prompts import MaskRequest, check_request, phrase_name

        photo = scene_photo(state)
        request = MaskRequest(text=phrases or "", detection_threshold=float(threshold),
                              sam_model=(sam_model or "").strip(), detector_model=(detector_model or "").strip())
        check_request(request, photo.size)
        with self.segmenters.lock:
            sam = self.segmenters.get("sam", request.sam_model)
            result = make_masks(photo, request, sam=sam, detector=self.segmenters.get("detector",
                                                                                     request.detector_model))
        names = ", ".join(phrase_name(p) for p in result.labels)
        state = {"photo": photo, "masks": result.masks}
        scores = ", ".join(f"{p}: score {s:.2f}" for p, s in zip(result.labels, result.scores or []))
        preview, stats = show_masks(state, names)
        return state, names, ", ".join(result.labels), preview, f"{scores}\n{stats}"

    @guarded
    def on_names(self, state, names):
        return show_masks(state, names)


def build_scene_tab(app, scene_state: gr.State) -> tuple[gr.Textbox, gr.Textbox]:
    """The Scene tab, wired to ``app``'s handlers. Returns the names and init-words boxes (the Extract tab's
    Start reads them)."""
    with gr.Tab("Scene", id="scene"):
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.Image(type="pil", label="Photo", sources=["upload", "clipboard"], elem_id="photo")
                names = gr.Textbox(label="Handle names, one per mask (empty: asset0, asset1, …); Enter "
                                   "updates the preview", placeholder="dog, shirt", elem_id="names")
                init_words = gr.Textbox(label="Init words, comma-separated (empty: the names)",
                                        placeholder="dog, red shirt", elem_id="init-words")
            with gr.Column(scale=2), gr.Tabs():
                with gr.Tab("Paint"):
                    gr.Markdown("Paint each concept on **its own layer** (add layers in the layer menu, "
                                "bottom right of the editor).")
                    editor = gr.ImageEditor(type="numpy", image_mode="RGBA", sources=[],  # the Photo box uploads
                                            label="Paint the concepts", elem_id="painter",
                                            brush=gr.Brush(colors=PAINT_COLOURS, color_mode="fixed"))
                    use_layers = gr.Button("Use the painted layers as masks", elem_id="use-layers")
                with gr.Tab("Click or box (SAM)"):
                    click_view = gr.Image(type="pil", label="Click on the photo", interactive=False,
                                          elem_id="click-view", format="png")
                    mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click")
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
                                         label="One mask image per concept, white = concept", elem_id="mask-files")
                    use_files = gr.Button("Use these mask files", elem_id="use-files")
        with gr.Row():
            mask_preview = gr.Image(type="pil", label="Masks", interactive=False, format="png", elem_id="mask-preview")
            mask_stats = gr.Textbox(label="Mask stats (area, overlaps)", lines=6, interactive=False,
                                    elem_id="mask-stats")

    shown = [scene_state, mask_preview, mask_stats]
    photo.change(app.on_photo, photo, [scene_state, editor, click_view, mask_preview, mask_stats, points, boxes])
    use_layers.click(app.on_use_layers, [scene_state, editor, names], shown)
    use_files.click(app.on_use_files, [scene_state, mask_files, names], shown)
    click_view.select(app.on_click, [scene_state, points, boxes, mode], [points, boxes, click_view])
    for box in (points, boxes):  # typing (not clicking) redraws the prompts; only the last keystroke counts
        box.input(app.on_prompts_typed, [scene_state, points, boxes], click_view, trigger_mode="always_last",
                  show_progress="hidden")
    use_sam.click(app.on_sam, [scene_state, points, boxes, sam_model, names], shown)
    use_text.click(app.on_text, [scene_state, phrases, threshold, sam_model_text, detector_model],
                   [scene_state, names, init_words, mask_preview, mask_stats])
    # Enter only, not blur: a blur fires when a mask button is clicked and could land after (over) its result.
    names.submit(app.on_names, [scene_state, names], [mask_preview, mask_stats])
    return names, init_words
