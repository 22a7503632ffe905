"""``world scenes``: benchmark scenes of the shapes world, in the folder layout ``extract`` reads.

Each scene folder holds ``img.png`` (64 px), ``mask0.png`` ... (each object grown by 2 px, as a user's quick
mask) and ``world.json``, the ground truth: background, caption, and each object's colour, shape, texture, place
and mask file. Every object carries a texture (a novel concept the base model has no word for); no two objects of
a scene share a colour, a shape or a texture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..run_folder import written_atomically
from ..scene_folder import write_scene_folder
from ..shapes_world import GROUND_TRUTH_FILE, ground_truth, loose_mask, random_scene, render

MASK_GROW = 2


def write_world_scenes(out: Path, num: int, seed: int, *, objects: int = 2, overwrite: bool = False) -> list[Path]:
    """Writes ``num`` scenes ``scene-000`` ... into ``out`` (all or nothing); returns their folders."""
    out = Path(out)
    if num < 1:
        raise RunError(f"--num must be >= 1, got {num}")
    if objects not in (1, 2, 3):
        raise RunError(f"--objects must be 1, 2 or 3, got {objects}")
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    rng = np.random.default_rng([seed, 5])
    with written_atomically(out) as partial:
        for i in range(num):
            scene = random_scene(rng, num_objects=objects, textured=True, distinct_shapes=True)
            image, coverages = render(scene)
            folder = partial / f"scene-{i:03d}"
            write_scene_folder(folder, image, [loose_mask(c, MASK_GROW) for c in coverages])
            files = [f"mask{k}.png" for k in range(len(coverages))]
            (folder / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth(scene, files), indent=2) + "\n")
    return [out / f"scene-{i:03d}" for i in range(num)]
