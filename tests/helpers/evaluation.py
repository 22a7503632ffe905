"""Helpers (no tests) for the evaluation tests, all made in code: a tiny COCO-format data set, CLIP, DINO, Mask2Former."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def box_mask(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def polygon(x0, y0, x1, y1) -> list[list[float]]:
    """A rectangle as a COCO polygon (pixel-corner coordinates, so it rasterises to [x0, x1) x [y0, y1))."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 24, "name": "zebra", "supercategory": "animal"},
    {"id": 52, "name": "banana", "supercategory": "food"},
    {"id": 62, "name": "tv", "supercategory": "electronic"},
]


def make_coco(root: Path) -> tuple[Path, Path]:
    """A COCO instances file and its image folder. Eligible: images 1 and 2 only.

    1 (128x96, crop x 16..112): dog (compressed RLE, 26 %) and cat (polygon, 22 %); a crowd person (uncompressed
      RLE) and a large banana (dropped class) are ignored.  -> [dog, cat]
    2 (96x96): two persons (27 % and 17 %: the smaller is dropped) and a tv (uncompressed RLE, 17 %). -> [person, tv]
    3: a cat and a too-small dog (10 %).  4: two persons only (same class).  5: a cat and a zebra (dropped).
    6 (192x96): a cat in the crop and a dog outside it.
    """
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    rng = np.random.default_rng(0)

    def add_image(image_id, width, height):
        name = f"{image_id:012d}.jpg"
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})

    def add(ann_id, image_id, category, segmentation, iscrowd=0, area=None):
        ann = {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
               "iscrowd": iscrowd, "bbox": [0, 0, 1, 1]}
        if area is not None:
            ann["area"] = area
        annotations.append(ann)

    add_image(1, 128, 96)
    add(10, 1, 17, polygon(20, 10, 60, 60), area=2000.0)  # cat: 40x50 inside the crop = 21.7 %
    add(11, 1, 18, compressed_rle(box_mask(96, 128, 60, 30, 100, 90)))  # dog: 40x60 = 26 %
    add(12, 1, 1, uncompressed_rle(box_mask(96, 128, 16, 0, 112, 96)), iscrowd=1)  # crowd: ignored
    add(13, 1, 52, polygon(16, 60, 112, 96))  # banana: dropped class
    add_image(2, 96, 96)
    add(20, 2, 1, polygon(0, 0, 50, 50))  # person 27 %
    add(21, 2, 1, polygon(50, 50, 90, 90))  # person 17 %: same class, smaller -> not a concept
    add(22, 2, 62, uncompressed_rle(box_mask(96, 96, 0, 56, 40, 96)))  # tv 17 %
    add_image(3, 96, 96)
    add(30, 3, 17, polygon(0, 0, 60, 60))
    add(31, 3, 18, polygon(60, 60, 90, 90))  # 9.8 %: too small
    add_image(4, 96, 96)
    add(40, 4, 1, polygon(0, 0, 50, 50))
    add(41, 4, 1, polygon(50, 50, 96, 96))
    add_image(5, 96, 96)
    add(50, 5, 17, polygon(0, 0, 50, 50))
    add(51, 5, 24, polygon(50, 50, 96, 96))
    add_image(6, 192, 96)
    add(60, 6, 17, polygon(60, 10, 120, 70))
    add(61, 6, 18, polygon(0, 0, 40, 90))  # outside the centred crop (x 48..144)

    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path, images_dir


# ----------------------------------------------------------------------------------------------------------
# tiny metric models, saved and loaded like the real ones

SEGMENTER_LABELS = ["person", "cat", "dog", "tv", "wall-other-merged"]


def make_metric_models(root: Path) -> dict[str, str]:
    """Random tiny CLIP, DINO (ViT) and Mask2Former (Swin) saved with save_pretrained; returns their folders."""
    import torch
    from transformers import CLIPConfig, CLIPModel, Mask2FormerConfig, SwinConfig, ViTConfig, ViTModel

    from breakascene.models.tiny import build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    clip.save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    _processor(root / "clip", "CLIPImageProcessor", size={"shortest_edge": 32}, do_center_crop=True,
               crop_size={"height": 32, "width": 32}, image_mean=[0.4815, 0.4578, 0.4082],
               image_std=[0.2686, 0.2613, 0.2758], resample=3)

    ViTModel(ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(root / "dino")
    _processor(root / "dino", "ViTImageProcessor", size={"height": 32, "width": 32})

    backbone = SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, feature_size=32, mask_feature_size=32, encoder_feedforward_dim=32,
        dim_feedforward=32, num_queries=8, decoder_layers=2, encoder_layers=1, num_attention_heads=2,
        id2label=dict(enumerate(SEGMENTER_LABELS)), label2id={n: i for i, n in enumerate(SEGMENTER_LABELS)},
    )
    from transformers import Mask2FormerForUniversalSegmentation

    Mask2FormerForUniversalSegmentation(config).save_pretrained(root / "m2f")
    _processor(root / "m2f", "Mask2FormerImageProcessor", size={"shortest_edge": 64, "longest_edge": 64},
               size_divisor=32, ignore_index=255, num_labels=len(SEGMENTER_LABELS))
    return {"clip": str(root / "clip"), "dino": str(root / "dino"), "segmenter": str(root / "m2f")}


def _processor(folder: Path, kind: str, **values) -> None:
    """A preprocessor_config.json as the Hub's: AutoImageProcessor picks the PIL or torchvision backend from it."""
    config = {"image_processor_type": kind, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
              "resample": 2}
    config.update(values)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
