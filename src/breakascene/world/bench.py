"""``world bench``: every method of the evaluation on shapes-world scenes, scored by the judge (paper Fig. 5).

For each method (ours, TI-m, DB-m, CD-m and the four ablations, :data:`~breakascene.evaluation.methods.METHODS`)
and each scene, the method trains through the real ``extract`` path with the scaled settings of
``builtin:shapes`` (:data:`~breakascene.models.shapes.SCALED_SETTINGS`), then generates
``a photo of {handles} on a {background} background`` for every non-empty subset of the scene's handles and every
background but the scene's own. The judge reads every picture:

- **identity** of a concept in a picture that asks for it: its best-matching object's colour, shape and texture
  matches (:func:`~breakascene.world.judge.identity`), averaged per concept, then over concepts;
- **prompt**: the asked background and the asked number of objects, each right or wrong, averaged;
- **whole concept**: of the pictures that ask for one handle, the share where its best-matching object has the
  concept's colour, shape and texture all right (issue 32's extraction target: 60 %);
- **leakage**: of the pictures that ask for one handle, the share with a trace (:data:`~breakascene.world.judge.TRACE_AREA`
  pixels) of another concept's colour;
- **all concepts**: of the pictures that ask for several handles, the share where every asked concept's colour is
  an object;
- **own-mask attention**: each concept handle's share of its cross-attention map inside its own mask after the
  run's last phase (what ``extract`` prints, from the run's ``scene.json``), lowest and mean over the concepts.

Layout (a re-run skips what is done; ``--rescore`` judges the saved pictures again)::

    OUT/scenes/scene-000/ ...          the scenes, when --scenes is not given
    OUT/<method>/<scene>/run/          the trained run
    OUT/<method>/<scene>/scores.json   one record per picture (written last)
    OUT/report/summary.md, summary.csv, fig5.png
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, SceneError
from ..evaluation.common import write_json_atomic
from ..evaluation.methods import METHODS, TrainRequest, extract_config, get_method
from ..evaluation.metrics import pareto_front, summarize
from ..evaluation.report import plot
from ..evaluation.settings import EvalSettings
from ..models.shapes import SCALED_SETTINGS, SHAPES_MODEL_ID, SHAPES_RESOLUTION
from ..run_folder import written_atomically
from ..shapes_world import BACKGROUNDS, GROUND_TRUTH_FILE, caption, read_ground_truth
from . import judge
from .scenes import write_world_scenes

SCORES_FILE = "scores.json"


@dataclass
class WorldBenchSettings:
    methods: tuple = tuple(METHODS)
    model: str = SHAPES_MODEL_ID
    phase1_steps: int = SCALED_SETTINGS["phase1_steps"]
    phase2_steps: int = SCALED_SETTINGS["phase2_steps"]
    phase1_lr: float = SCALED_SETTINGS["phase1_lr"]
    phase2_lr: float = SCALED_SETTINGS["phase2_lr"]
    images_per_prompt: int = 4
    steps: int = 25  # sampling steps
    guidance: float = 4.0
    seed: int = 0
    collection_size: int = 10  # the masked baselines' collection
    device: str | None = None
    overrides: dict = field(default_factory=dict)  # ExtractConfig fields set after the scaled settings (a tuning run's)

    def validate(self) -> None:
        for name in self.methods:
            get_method(name)
        for name in ("phase1_steps", "phase2_steps", "images_per_prompt", "steps", "collection_size"):
            if getattr(self, name) < (0 if name.endswith("_steps") else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def bench_prompts(tokens: list[str], own_background: str) -> list[dict]:
    """Every non-empty subset of ``tokens`` on every background but the scene's own."""
    prompts = []
    for size in range(1, len(tokens) + 1):
        for subset in itertools.combinations(range(len(tokens)), size):
            for background in (b for b in BACKGROUNDS if b != own_background):
                prompts.append({"prompt": caption([tokens[i] for i in subset], background),
                                "concepts": list(subset), "background": background})
    return prompts


def score_picture(image, asked: dict, targets: list) -> dict:
    """The judge's record of one picture made for ``asked`` (a :func:`bench_prompts` entry)."""
    reading = judge.read(image)
    concepts = asked["concepts"]
    identities = {str(i): judge.identity(judge.best_match(reading, targets[i]), targets[i]) for i in concepts}
    others = [t for i, t in enumerate(targets) if i not in concepts]
    return {
        **asked,
        "seen": [dataclasses.asdict(o) for o in reading.objects], "seen_background": reading.background,
        "identity": identities,
        "prompt": (float(reading.background == asked["background"]) + float(len(reading.objects) == len(concepts))) / 2,
        "leak": any(reading.colour_area[t.colour] >= judge.TRACE_AREA for t in others) if len(concepts) == 1 else None,
        "all_concepts": all(any(o.colour == targets[i].colour for o in reading.objects) for i in concepts)
        if len(concepts) > 1 else None,
    }


def _config(settings: WorldBenchSettings, method_name: str):
    method = get_method(method_name)
    eval_settings = EvalSettings(
        method=method_name, model=settings.model, resolution=SHAPES_RESOLUTION, phase1_steps=settings.phase1_steps,
        phase2_steps=settings.phase2_steps, phase1_lr=settings.phase1_lr, phase2_lr=settings.phase2_lr,
        seed=settings.seed, collection_size=settings.collection_size, device=settings.device,
    )
    config = extract_config(eval_settings, method)
    scaled = {"default_init_word": SCALED_SETTINGS["default_init_word"], "lambda_attn": SCALED_SETTINGS["lambda_attn"]}
    config = dataclasses.replace(config, **{**scaled, **settings.overrides})
    return method, eval_settings, config


def rescore(folder: Path, scene_dir: Path) -> list:
    """Judges the pictures of a finished ``folder`` again (after a change of the judge) and rewrites its
    ``scores.json``; nothing is trained or generated. Returns the new records."""
    from PIL import Image

    scores = json.loads((folder / SCORES_FILE).read_text())
    truth = read_ground_truth(scene_dir)
    records = []
    for old in scores["images"]:
        asked = {k: old[k] for k in ("prompt", "concepts", "background")}
        with Image.open(folder / old["file"]) as image:
            records.append({"file": old["file"], **score_picture(image.convert("RGB"), asked, truth.objects)})
    write_json_atomic(folder / SCORES_FILE, {**scores, "images": records})
    return records


def bench_scene(scene_dir: Path, folder: Path, method_name: str, settings: WorldBenchSettings, progress: bool,
                *, rescore_done: bool = False) -> list:
    """Trains one method on one scene and scores its pictures; returns the records (kept in ``scores.json``).
    A finished folder is read back as it is, or judged again with ``rescore_done``."""
    from ..inference.generation import generate
    from ..inference.pipeline import load_pipeline
    from ..run_info import RunInfo
    from ..scene import load_scene_folder

    if (folder / SCORES_FILE).is_file():
        if rescore_done:
            return rescore(folder, scene_dir)
        return json.loads((folder / SCORES_FILE).read_text())["images"]
    method, eval_settings, config = _config(settings, method_name)
    run = folder / "run"
    if not (run / "scene.json").is_file():
        scene = load_scene_folder(scene_dir, SHAPES_RESOLUTION)
        method.train(TrainRequest(scene, config, run, eval_settings, None, progress))
    truth = read_ground_truth(scene_dir)
    info = RunInfo.read(run)
    prompts = bench_prompts(info.concept_tokens, truth.background)
    pipeline = load_pipeline(run, settings.device, info=info)[0]
    tmp = folder / ".images.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    made = generate(run, [p["prompt"] for p in prompts], num_images=settings.images_per_prompt, seed=settings.seed,
                    steps=settings.steps, guidance=settings.guidance, out=tmp, pipeline=pipeline, info=info,
                    progress=progress, grid=False, batch_size=settings.images_per_prompt)
    from PIL import Image

    records = []
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for k, picture in enumerate(made):
        asked = prompts[k // settings.images_per_prompt]
        name = f"{k // settings.images_per_prompt:03d}-seed{picture.seed}.png"
        Path(picture.path).replace(images / name)
        with Image.open(images / name) as image:
            records.append({"file": f"images/{name}", **score_picture(image.convert("RGB"), asked, truth.objects)})
    shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(folder / SCORES_FILE, {"scene": scene_dir.name, "method": method_name, "images": records})
    return records


def own_mask_shares(run: Path) -> list[float]:
    """Each concept handle's share of its attention map inside its own mask after ``run``'s last phase ([] when the
    run recorded none)."""
    from ..run_info import RunInfo

    info = RunInfo.read(run)
    if not info.attention_scores:
        return []
    last = list(info.attention_scores.values())[-1]
    return [last[i][i] for i, handle in enumerate(info.handles) if not handle.background]


def method_row(method_name: str, records: list, shares: list[float] = (), *, num_resamples: int = 1000,
               seed: int = 0) -> dict:
    """One row of the table: the four scores with bootstrap 95 % intervals, and the :func:`own_mask_shares`
    of every concept of every scene (``shares``)."""
    per_concept: dict = {}
    for r in records:
        for concept, value in r["identity"].items():
            per_concept.setdefault((r["scene"], concept), []).append(value)
    identity = summarize([sum(v) / len(v) for v in per_concept.values()], num_resamples=num_resamples, seed=seed)
    prompt = summarize([r["prompt"] for r in records], num_resamples=num_resamples, seed=seed)
    whole = [float(r["identity"][str(r["concepts"][0])] == 1.0) for r in records if len(r["concepts"]) == 1]
    leaks = [float(r["leak"]) for r in records if r["leak"] is not None]
    together = [float(r["all_concepts"]) for r in records if r["all_concepts"] is not None]
    return {
        "method": method_name, "label": METHODS[method_name].label,
        "prompt_similarity": prompt.mean, "prompt_low": prompt.low, "prompt_high": prompt.high,
        "identity_similarity": identity.mean, "identity_low": identity.low, "identity_high": identity.high,
        "whole_concept": sum(whole) / len(whole) if whole else float("nan"),
        "leakage": sum(leaks) / len(leaks) if leaks else float("nan"),
        "all_concepts": sum(together) / len(together) if together else float("nan"),
        "attention_own_min": min(shares) if shares else float("nan"),
        "attention_own_mean": sum(shares) / len(shares) if shares else float("nan"),
        "images": len(records), "concepts": len(per_concept),
    }


def to_markdown(rows: list[dict]) -> str:
    front = set(pareto_front([(r["prompt_similarity"], r["identity_similarity"]) for r in rows]))
    lines = ["| method | identity (95 % CI) | prompt (95 % CI) | whole concept (single) | leakage | all concepts (multi) | "
             "own-mask attention (min / mean) | images | Pareto |", "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(
            f"| {r['label']} | {r['identity_similarity']:.3f} ({r['identity_low']:.3f}–{r['identity_high']:.3f}) | "
            f"{r['prompt_similarity']:.3f} ({r['prompt_low']:.3f}–{r['prompt_high']:.3f}) | {r['whole_concept']:.0%} | "
            f"{r['leakage']:.0%} | "
            f"{r['all_concepts']:.0%} | {r['attention_own_min']:.2f} / {r['attention_own_mean']:.2f} | {r['images']} | "
            f"{'yes' if i in front else ''} |")
    return "\n".join(lines) + "\n"


def write_world_report(rows: list[dict], out: Path) -> Path:
    """``summary.md``, ``summary.csv`` and ``fig5.png`` (identity against prompt, the Pareto front dashed)."""
    import csv
    import io

    with written_atomically(out) as partial:
        (partial / "summary.md").write_text(to_markdown(rows))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (partial / "summary.csv").write_text(buffer.getvalue())
        plot(rows, partial / "fig5.png", xlabel="prompt (judge: background and object count)",
             ylabel="identity (judge: colour, shape, texture)")
    return out


def list_world_scenes(scenes: Path) -> list[Path]:
    found = sorted(p for p in scenes.iterdir() if (p / GROUND_TRUTH_FILE).is_file()) if scenes.is_dir() else []
    if not found:
        raise SceneError(f"--scenes {scenes} holds no shapes-world scene (write some with break-a-scene world scenes)")
    return found


def run_world_bench(out: Path, settings: WorldBenchSettings, *, scenes: Path | None = None, num: int = 4,
                    scene_seed: int = 0, overwrite: bool = False, rescore_done: bool = False,
                    progress: bool = True) -> list[dict]:
    """Runs every method on every scene (module docstring); returns the table's rows, also written to
    ``out/report``. With ``rescore_done``, the pictures of finished folders are judged again."""
    settings.validate()
    out = Path(out)
    if scenes is None:
        scenes = out / "scenes"
        if not scenes.is_dir():
            write_world_scenes(scenes, num, scene_seed)
    scene_dirs = list_world_scenes(Path(scenes))
    rows = []
    for method_name in settings.methods:
        records, shares = [], []
        for scene_dir in scene_dirs:
            folder = out / method_name / scene_dir.name
            if overwrite and folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            if progress:
                print(f"{method_name}: {scene_dir.name}", file=sys.stderr)
            scored = bench_scene(scene_dir, folder, method_name, settings, progress, rescore_done=rescore_done)
            records += [{**r, "scene": scene_dir.name} for r in scored]
            shares += own_mask_shares(folder / "run")
        rows.append(method_row(method_name, records, shares))
    report = out / "report"
    if report.exists():
        shutil.rmtree(report)
    write_world_report(rows, report)
    return rows
