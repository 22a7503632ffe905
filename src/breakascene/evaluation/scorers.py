"""The three models behind the metrics, loaded lazily through transformers, and the class-name matching.

* CLIP ViT-L/14 (``CLIPModel`` + its tokenizer and image processor): projected image and text embeddings.
* DINO ViT-B/16 (``ViTModel``, no pooler): the CLS token of the last layer.
* Mask2Former COCO panoptic (``Mask2FormerForUniversalSegmentation`` + its image processor's
  ``post_process_panoptic_segmentation``): which pixels of a generated image show a class.

The paper used MaskFormer Swin-L (COCO panoptic); we default to Mask2Former Swin-B, a stronger, smaller model of the
same family with the same 133 COCO-panoptic classes (``--segmenter-model`` picks another).

Image processors come through ``AutoImageProcessor``, which uses the PIL backend when torchvision is missing.
Mask2Former builds its training loss (a Hungarian matcher) in ``__init__``, which needs scipy (in the ``eval``
extra) even though scoring only runs inference.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, first_line
from ..hub import hub_options, not_downloadable

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_DINO_MODEL = "facebook/dino-vitb16"
DEFAULT_SEGMENTER_MODEL = "facebook/mask2former-swin-base-coco-panoptic"

LABEL_ALIASES = {
    # other spellings of COCO's thing classes (Pascal VOC, older label maps) -> the COCO 2017 instance name
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "television": "tv",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "hair dryer": "hair drier",
    "cellphone": "cell phone",
    "mobile phone": "cell phone",
}


def normalize_label(name: str) -> str:
    """A class name in one spelling: lower case, '_'/'-' as spaces, single spaces, then :data:`LABEL_ALIASES`."""
    text = re.sub(r"\s+", " ", re.sub(r"[_-]", " ", str(name).lower())).strip()
    return LABEL_ALIASES.get(text, text)


def label_ids_for_class(class_name: str, id2label: dict) -> list[int]:
    """The segmenter's label ids that mean the COCO instance class ``class_name`` (explicit name matching).

    Raises:
        ConfigError: no label matches (a segmenter not trained on COCO's thing classes).
    """
    wanted = normalize_label(class_name)
    ids = sorted(int(i) for i, label in id2label.items() if normalize_label(label) == wanted)
    if not ids:
        raise ConfigError(
            f"the segmenter has no label for the COCO class {class_name!r}; use a COCO-panoptic model "
            "(--segmenter-model facebook/mask2former-swin-base-coco-panoptic)"
        )
    return ids


def to_pil(image: torch.Tensor):
    """(3, H, W) float in [0, 1] -> PIL RGB."""
    from PIL import Image

    array = (image.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def read_image(path: str | Path) -> torch.Tensor:
    """An image file -> (3, H, W) float in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_mask(path: str | Path) -> torch.Tensor:
    """A 0/255 mask file -> (H, W) float in {0, 1}."""
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy((np.asarray(image.convert("L")) >= 128).astype(np.float32))


def _load_error(what: str, model: str, error: Exception, hub: dict) -> ConfigError:
    if hub.get("local_files_only"):
        return not_downloadable(model, f"--{what.split()[0].lower()}-model", what)
    return ConfigError(f"could not load the {what} {model}: {first_line(error)} (a Hub id needs network access once; "
                       "or give a local folder)")


class ClipScorer:
    """Prompt similarity: cosine of CLIP's projected image and text embeddings."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        hub = hub_options(model)
        try:
            self.model = CLIPModel.from_pretrained(model, **hub).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model, **hub)
            self.processor = AutoImageProcessor.from_pretrained(model, **hub)
        except (OSError, ValueError) as error:
            raise _load_error("CLIP model", model, error, hub) from error
        self.device = torch.device(device)

    @torch.no_grad()
    def image_embeddings(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) images in [0, 1] -> (B, D) projected image embeddings."""
        pixels = self.processor(images=[to_pil(i) for i in images], return_tensors="pt").pixel_values.to(self.device)
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output).float().cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, D) projected text embeddings (truncated to the tokenizer's 77 tokens)."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        hidden = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return self.model.text_projection(hidden.pooler_output).float().cpu()


class DinoEmbedder:
    """Identity embeddings: DINO's CLS token (last layer, no pooler)."""

    def __init__(self, model: str = DEFAULT_DINO_MODEL, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, ViTModel

        hub = hub_options(model)
        try:
            self.model = ViTModel.from_pretrained(model, add_pooling_layer=False, **hub).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(model, **hub)
        except (OSError, ValueError) as error:
            raise _load_error("DINO model", model, error, hub) from error
        self.device = torch.device(device)

    @torch.no_grad()
    def embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) images in [0, 1] -> (B, D) CLS embeddings."""
        pixels = self.processor(images=[to_pil(i) for i in images], return_tensors="pt").pixel_values.to(self.device)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()


class PanopticSegmenter:
    """COCO-panoptic segmentation of generated images, and the mask of one class in it."""

    def __init__(self, model: str = DEFAULT_SEGMENTER_MODEL, device: str | torch.device = "cpu", threshold: float = 0.5):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        hub = hub_options(model)
        try:
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model, **hub).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(model, **hub)
        except (OSError, ValueError) as error:
            raise _load_error("segmenter model", model, error, hub) from error
        self.device = torch.device(device)
        self.threshold = threshold
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}

    @torch.no_grad()
    def segment(self, image: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """(3, H, W) in [0, 1] -> (segmentation (H, W) int segment ids, -1 or 0 where none; segments_info)."""
        inputs = self.processor(images=[to_pil(image)], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = self.model(**inputs)
        result = self.processor.post_process_panoptic_segmentation(
            outputs, threshold=self.threshold, target_sizes=[tuple(image.shape[-2:])], label_ids_to_fuse=set()
        )[0]
        return result["segmentation"].cpu(), result["segments_info"]

    def class_mask(self, image: torch.Tensor, label_ids: list[int]) -> torch.Tensor:
        """(3, H, W) -> (H, W) float: 1 on every segment whose label is in ``label_ids``."""
        segmentation, segments = self.segment(image)
        return segments_mask(segmentation, segments, label_ids)


def segments_mask(segmentation: torch.Tensor, segments: list[dict], label_ids: list[int]) -> torch.Tensor:
    """The union of the segments whose ``label_id`` is in ``label_ids``: (H, W) float in {0, 1}."""
    ids = [s["id"] for s in segments if int(s["label_id"]) in set(label_ids)]
    if not ids:
        return torch.zeros(segmentation.shape, dtype=torch.float32)
    return torch.isin(segmentation.long(), torch.tensor(ids, dtype=torch.long)).float()
