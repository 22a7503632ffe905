"""Two measurements that the shapes world's numbers rest on.

- :func:`judge_accuracy`: how often the judge reads fresh generator scenes right (drawn, or drawn and passed
  through the model's VAE, which blurs a little as every generated picture is blurred).
- :func:`knowledge_check`: whether ``builtin:shapes`` knows its world: on the held-out prompts (a colour, a shape
  and a background never drawn together in training), how often the judge finds the asked background, one
  object, and that object's colour and shape.
- :func:`two_object_check`: on prompts that ask for two objects, how often both (colour, shape) pairs are there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..shapes_world import caption, random_scene, render
from . import judge
from .train import HELD_OUT

TWO_OBJECT_PROMPTS = (
    (("red", "circle"), ("blue", "triangle"), "striped"), (("yellow", "square"), ("green", "circle"), "plain"),
    (("green", "triangle"), ("red", "square"), "dotted"), (("blue", "circle"), ("yellow", "triangle"), "checkered"),
    (("yellow", "circle"), ("red", "triangle"), "plain"), (("blue", "square"), ("green", "triangle"), "striped"),
)
"""((colour, shape), (colour, shape), background): two objects of distinct colours and shapes, named left to right."""


@dataclass(frozen=True)
class Accuracy:
    """Fractions in [0, 1] and how many pictures (objects) they are over."""

    background: float
    count: float
    colour: float
    shape: float
    texture: float | None
    images: int
    objects: int

    def lines(self) -> list[str]:
        texture = "" if self.texture is None else f", texture {self.texture:.0%}"
        return [f"background {self.background:.0%}, object count {self.count:.0%} ({self.images} pictures); "
                f"colour {self.colour:.0%}, shape {self.shape:.0%}{texture} ({self.objects} objects)"]


def judge_accuracy(num: int = 400, seed: int = 1, vae=None) -> Accuracy:
    """The judge on ``num`` fresh scenes (half of them with textured objects); through ``vae`` if given."""
    rng = np.random.default_rng([seed, 77])
    scores = {"background": 0, "count": 0, "colour": 0, "shape": 0, "texture": 0}
    objects = 0
    for _ in range(num):
        scene = random_scene(rng, textured=rng.random() < 0.5)
        image = render(scene)[0]
        if vae is not None:
            with torch.no_grad():
                pixels = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
                decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample[0]
            image = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        reading = judge.read(image)
        scores["background"] += reading.background == scene.background
        scores["count"] += len(reading.objects) == len(scene.objects)
        for target in scene.objects:
            seen = judge.best_match(reading, target)
            objects += 1
            if seen is not None:
                scores["colour"] += seen.colour == target.colour
                scores["shape"] += seen.shape == target.shape
                scores["texture"] += seen.texture == target.texture
    return Accuracy(scores["background"] / num, scores["count"] / num, scores["colour"] / objects,
                    scores["shape"] / objects, scores["texture"] / objects, num, objects)


def generated_readings(pipe, prompt: str, count: int, steps: int, guidance: float, seed: int) -> list:
    """The judge's readings of ``count`` pictures of ``prompt`` drawn by ``pipe`` from one generator of ``seed``."""
    images = pipe([prompt] * count, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed), output_type="np").images
    return [judge.read((image * 255).round().astype(np.uint8)) for image in images]


def knowledge_check(pipe, *, images_per_prompt: int = 8, steps: int = 25, guidance: float = 4.0,
                    seed: int = 0, prompts=HELD_OUT) -> Accuracy:
    """Generates ``images_per_prompt`` pictures of each ``(colour, shape, background)`` prompt with ``pipe`` (a
    ``StableDiffusionPipeline`` of ``builtin:shapes``) and judges them. Colour and shape are judged on the largest
    object (counted as wrong when there is none)."""
    scores = {"background": 0, "count": 0, "colour": 0, "shape": 0}
    for i, (colour, shape, background) in enumerate(prompts):
        prompt = caption([f"{colour} {shape}"], background)
        for reading in generated_readings(pipe, prompt, images_per_prompt, steps, guidance, seed + i):
            scores["background"] += reading.background == background
            scores["count"] += len(reading.objects) == 1
            largest = reading.objects[0] if reading.objects else None
            scores["colour"] += largest is not None and largest.colour == colour
            scores["shape"] += largest is not None and largest.shape == shape
    n = len(prompts) * images_per_prompt
    return Accuracy(scores["background"] / n, scores["count"] / n, scores["colour"] / n, scores["shape"] / n,
                    None, n, n)


@dataclass(frozen=True)
class PairAccuracy:
    """Fractions in [0, 1] over ``images`` pictures of two-object prompts."""

    background: float
    count: float  # exactly two objects
    colours: float  # both asked colours among the objects
    pairs: float  # both asked (colour, shape) pairs among the objects
    images: int

    def lines(self) -> list[str]:
        return [f"background {self.background:.0%}, two objects {self.count:.0%}, both colours {self.colours:.0%}, "
                f"both (colour, shape) pairs {self.pairs:.0%} ({self.images} pictures)"]


def two_object_check(pipe, *, images_per_prompt: int = 8, steps: int = 25, guidance: float = 4.0, seed: int = 0,
                     prompts=TWO_OBJECT_PROMPTS) -> PairAccuracy:
    """Generates ``images_per_prompt`` pictures of each two-object prompt and judges whether each asked
    (colour, shape) pair is among the objects read (anywhere in the picture)."""
    scores = {"background": 0, "count": 0, "colours": 0, "pairs": 0}
    for i, (first, second, background) in enumerate(prompts):
        prompt = caption([" ".join(first), " ".join(second)], background)
        for reading in generated_readings(pipe, prompt, images_per_prompt, steps, guidance, seed + 1000 + i):
            seen = {(o.colour, o.shape) for o in reading.objects}
            scores["background"] += reading.background == background
            scores["count"] += len(reading.objects) == 2
            scores["colours"] += {first[0], second[0]} <= {c for c, _ in seen}
            scores["pairs"] += {first, second} <= seen
    n = len(prompts) * images_per_prompt
    return PairAccuracy(*(scores[k] / n for k in ("background", "count", "colours", "pairs")), n)
