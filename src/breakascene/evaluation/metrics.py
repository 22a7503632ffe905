"""The metric arithmetic, as pure functions on tensors and lists (the models are in ``scorers.py``).

* prompt similarity of an image: ``cos(CLIP_image(image), CLIP_text(class prompt))`` (App. B.2), a raw cosine in
  [-1, 1] (no 100x or 2.5x rescaling, no clipping at 0).
* identity similarity of (image, concept): ``cos(DINO_cls(input * M_i), DINO_cls(image * S_c))`` where ``M_i`` is the
  concept's input mask, ``S_c`` the union of the segmenter's segments of the concept's class in the generated
  image, and everything outside a mask is black. A class the segmenter does not find gives an all-black image:
  the concept is missing, which counts against the method (the paper does not say; we keep the literal rule and
  also report how often a class is found).
* per method: prompt similarity is the mean over images; identity similarity is first averaged per concept
  (scene, concept index) over the images whose prompt holds it, then over concepts. Confidence intervals: the
  percentile bootstrap over those units (images; concepts), with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity: a (B, D), b (B, D) -> (B,). A zero row gives 0."""
    a, b = a.double(), b.double()
    dot = (a * b).sum(-1)
    norm = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norm > 0, dot / norm.clamp_min(1e-300), torch.zeros_like(dot)).float()


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """image (3, H, W) in [0, 1], mask (H, W) (> 0.5 inside) -> (3, H, W): the image inside, black elsewhere."""
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    return image * (mask > 0.5).to(image.dtype)


MISSING_POLICIES = ("black", "zero")


def identity_score(similarity: float, found: bool, missing: str = "black") -> float:
    """The identity value of one (image, concept): ``similarity`` as computed, or 0 under ``missing="zero"``
    when the segmenter found no segment of the concept's class (the masked image was all black)."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    return 0.0 if (missing == "zero" and not found) else float(similarity)


def mean_by_key(keys: list, values: list[float]) -> dict:
    """The mean of the values of each key, keys in first-seen order: ([a, b, a], [1, 2, 3]) -> {a: 2, b: 2}."""
    sums: dict = {}
    counts: dict = {}
    for key, value in zip(keys, values, strict=True):
        sums[key] = sums.get(key, 0.0) + float(value)
        counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def percentile(sorted_values: torch.Tensor, q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an ascending 1-D tensor, ``q`` in [0, 1]."""
    n = sorted_values.numel()
    position = q * (n - 1)
    low = int(position)
    high = min(low + 1, n - 1)
    weight = position - low
    return float(sorted_values[low] * (1 - weight) + sorted_values[high] * weight)


def bootstrap_means(values: list[float], num_resamples: int, seed: int) -> torch.Tensor:
    """(num_resamples,) means of resamples of ``values`` with replacement, from ``torch.Generator(seed)``."""
    data = torch.tensor(values, dtype=torch.float64)
    rng = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(values), (num_resamples, len(values)), generator=rng)
    return data[picks].mean(dim=1)


def bootstrap_ci(values: list[float], *, num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap confidence interval of the mean of ``values`` (fixed ``seed``: reproducible).

    One value gives (v, v); an empty list is an error.
    """
    if not values:
        raise ValueError("no values to bootstrap")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    means = bootstrap_means(values, num_resamples, seed).sort().values
    alpha = (1 - confidence) / 2
    return percentile(means, alpha), percentile(means, 1 - alpha)


@dataclass
class Summary:
    """A metric of one method: mean over its units, the bootstrap CI, and the number of units."""

    mean: float
    low: float
    high: float
    n: int


def summarize(values: list[float], *, num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Summary:
    low, high = bootstrap_ci(values, num_resamples=num_resamples, confidence=confidence, seed=seed)
    return Summary(sum(values) / len(values), low, high, len(values))


def per_concept_identity(records: list[dict]) -> dict[tuple[str, int], float]:
    """Per-image score records -> {(scene, concept index): mean identity over the images that prompt it}.

    A record is ``{"scene": str, "identity": {"0": float, "1": float, ...}, ...}`` (JSON keys are strings).
    """
    keys, values = [], []
    for record in records:
        for concept, value in record["identity"].items():
            keys.append((record["scene"], int(concept)))
            values.append(value)
    return mean_by_key(keys, values)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates higher is better), sorted by x.

    q dominates p when q >= p in both coordinates and q > p in at least one.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (qx >= x and qy >= y) and (qx > x or qy > y) for j, (qx, qy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
