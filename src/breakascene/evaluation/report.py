"""``eval report``: one row per method folder -> ``summary.csv``, ``summary.md`` and ``fig5.png`` (paper Fig. 5).

Per method: prompt similarity (mean over images) and identity similarity (mean over concepts of each concept's
mean), each with its percentile-bootstrap 95 % interval (``metrics.summarize``, fixed seed), the numbers of
images and concepts, and how often the segmenter found a prompted concept's class. The plot has one point per
method with both intervals as error bars (x: prompt similarity, y: identity similarity) and the Pareto front
(higher is better on both axes) as a dashed line through the methods no other method beats on both.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import ConfigError, RunError
from ..run_folder import check_clear_of_run, written_atomically
from .metrics import pareto_front, per_concept_identity, summarize
from .run import CONFIG_FILE
from .score import SCORES_FILE, batch_files, method_folders

COLUMNS = (
    "method", "label", "hash", "prompt_similarity", "prompt_low", "prompt_high", "images",
    "identity_similarity", "identity_low", "identity_high", "concepts", "found_rate", "complete", "training_loss",
)


def scores_folder(folder: Path, key: str | None) -> Path:
    """The ``scores-<hash>`` folder of a method folder: the one given, or the only one there."""
    if key is not None:
        path = folder / f"scores-{key}"
        if not (path / SCORES_FILE).is_file():
            raise RunError(f"{folder} has no scores {key} (run eval score with the same models)")
        return path
    found = sorted(p for p in folder.glob("scores-*") if (p / SCORES_FILE).is_file())
    if not found:
        raise RunError(f"{folder} has no scores yet; run break-a-scene eval score first")
    if len(found) > 1:
        keys = ", ".join(p.name.removeprefix("scores-") for p in found)
        raise ConfigError(f"{folder} holds scores of several model sets ({keys}); choose one with --scores HASH")
    return found[0]


def method_row(folder: Path, key: str | None, *, num_resamples: int = 1000, seed: int = 0) -> dict:
    """The summary row of one method folder (see the module docstring)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    scores = scores_folder(folder, key)
    files = sorted(scores.glob("*/*.json"))
    records = [r for f in files for r in json.loads(f.read_text())["images"]]
    if not records:
        raise RunError(f"{scores} holds no scored image; run break-a-scene eval score")
    prompt = summarize([r["prompt_similarity"] for r in records], num_resamples=num_resamples, seed=seed)
    identity = summarize(list(per_concept_identity(records).values()), num_resamples=num_resamples, seed=seed)
    found = [v for r in records for v in r["found"].values()]
    return {
        "method": config["method"], "label": config.get("label", config["method"]), "hash": config["hash"],
        "prompt_similarity": prompt.mean, "prompt_low": prompt.low, "prompt_high": prompt.high, "images": prompt.n,
        "identity_similarity": identity.mean, "identity_low": identity.low, "identity_high": identity.high,
        "concepts": identity.n, "found_rate": sum(found) / len(found) if found else 0.0,
        "complete": len(files) == len(batch_files(folder)),
        "training_loss": config.get("training_loss", "not recorded"),
    }


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in COLUMNS})
    return buffer.getvalue()


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| method | prompt similarity (95 % CI) | identity similarity (95 % CI) | images | concepts | class found | Pareto | trained with |",
        "|---|---|---|---|---|---|---|---|",
    ]
    front = set(pareto_front([(r["prompt_similarity"], r["identity_similarity"]) for r in rows]))
    for i, r in enumerate(rows):
        note = "" if r["complete"] else " (incomplete)"
        lines.append(
            f"| {r['label']}{note} | {r['prompt_similarity']:.4f} ({r['prompt_low']:.4f}–{r['prompt_high']:.4f}) | "
            f"{r['identity_similarity']:.4f} ({r['identity_low']:.4f}–{r['identity_high']:.4f}) | {r['images']} | "
            f"{r['concepts']} | {r['found_rate']:.0%} | {'yes' if i in front else ''} | {r['training_loss']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, *, xlabel: str = "prompt similarity (CLIP ViT-L/14 cosine)",
         ylabel: str = "identity similarity (DINO ViT-B/16 cosine)") -> None:
    """The Fig. 5 scatter: a point per method with CI bars, the Pareto front dashed. Uses no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    points = [(r["prompt_similarity"], r["identity_similarity"]) for r in rows]
    front = pareto_front(points)
    for i, (r, (x, y)) in enumerate(zip(rows, points)):
        ax.errorbar(
            x, y, xerr=[[x - r["prompt_low"]], [r["prompt_high"] - x]], yerr=[[y - r["identity_low"]], [r["identity_high"] - y]],
            fmt="*" if r["method"] == "ours" else "o", markersize=12 if r["method"] == "ours" else 7, capsize=3,
            label=r["label"] + (" (Pareto)" if i in front else ""),
        )
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", linewidth=1, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def write_report(results: str | Path, out: str | Path | None = None, *, scores: str | None = None,
                 overwrite: bool = False, num_resamples: int = 1000, seed: int = 0) -> Path:
    """Writes ``summary.csv``, ``summary.md`` and ``fig5.png`` to ``out`` (default ``<results>/report``), atomically.

    Raises:
        RunError: no results or scores, or ``out`` exists without ``overwrite``. ConfigError: several score sets.
    """
    out = Path(out) if out is not None else Path(results) / "report"
    check_clear_of_run(out, results, what="results folder", parts=())  # the default lies inside it
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    rows = [method_row(f, scores, num_resamples=num_resamples, seed=seed) for f in method_folders(results)]
    with written_atomically(out) as partial:
        (partial / "summary.csv").write_text(to_csv(rows))
        (partial / "summary.md").write_text(to_markdown(rows))
        plot(rows, partial / "fig5.png")
    return out
