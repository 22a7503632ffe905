"""End to end through the CLI: build-scenes -> run (ours and one ablation) -> score -> report, then resume.

2 scenes, 2 templates, 1 image per prompt, 1 + 1 training steps and 1 sampling step of the built-in tiny model at
64 px; tiny random CLIP, DINO and Mask2Former saved to folders and loaded like the real ones.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from helpers.evaluation import make_coco, make_metric_models

from breakascene.cli import main
from breakascene.errors import RunError
from breakascene.evaluation.run import results_folder, run_eval
from breakascene.evaluation.settings import EvalSettings

RUN = ["--model", "builtin:tiny", "--resolution", "64", "--phase1-steps", "1", "--phase2-steps", "1",
       "--templates", "2", "--images-per-prompt", "1", "--steps", "1", "--prompts-per-batch", "4", "--quiet"]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    annotations, images = make_coco(root / "coco")
    scenes, results = root / "scenes", root / "results"
    code, out, err = _cli(["eval", "build-scenes", "--coco-annotations", str(annotations), "--coco-images",
                           str(images), "--out", str(scenes), "--num", "2"])
    assert code == 0, err
    for method in ("ours", "ours-no-phase1"):
        code, out, err = _cli(["eval", "run", "--scenes", str(scenes), "--method", method, "--out", str(results), *RUN])
        assert code == 0, err
        assert "trained 2 scenes (0 already done), generated 4 batches (0 already done)" in out
    models = make_metric_models(root / "models")
    score = ["eval", "score", str(results), "--clip-model", models["clip"], "--dino-model", models["dino"],
             "--segmenter-model", models["segmenter"], "--quiet"]
    code, out, err = _cli(score)
    assert code == 0, err
    assert "scored 8 batches (0 already done)" in out
    code, out, err = _cli(["eval", "report", str(results)])
    assert code == 0, err
    return {"root": root, "scenes": scenes, "results": results, "score": score, "report_stdout": out}


def _method_folders(results: Path) -> dict[str, Path]:
    return {json.loads((p / "config.json").read_text())["method"]: p for p in results.iterdir() if (p / "config.json").is_file()}


def test_results_prompts_scores_and_report(pipeline):
    folders = _method_folders(pipeline["results"])
    assert set(folders) == {"ours", "ours-no-phase1"}
    config = json.loads((folders["ours-no-phase1"] / "config.json").read_text())
    assert config["extract_config"]["phase1"] is False and config["extract_config"]["phase2_steps"] == 1
    assert json.loads((folders["ours"] / "config.json").read_text())["extract_config"]["phase1"] is True
    scene = folders["ours"] / "coco-000000000001"
    assert json.loads((scene / "scene.json").read_text())["classes"] == ["dog", "cat"]
    records = [r for b in sorted((scene / "batches").glob("*.json")) for r in json.loads(b.read_text())["images"]]
    assert [r["prompt"] for r in records] == [
        "a photo of <asset0> at the beach", "a photo of <asset0> in the jungle",
        "a photo of <asset1> at the beach", "a photo of <asset1> in the jungle",
        "a photo of <asset0> and <asset1> at the beach", "a photo of <asset0> and <asset1> in the jungle",
    ]
    assert records[4]["class_prompt"] == "a photo of a dog and a cat at the beach"
    assert sorted(p.name for p in (scene / "images").iterdir()) == [f"{i:04d}-seed0.png" for i in range(6)]
    assert Image.open(scene / "images" / "0000-seed0.png").size == (64, 64)
    assert not list(scene.glob(".batch-*"))  # no temporary batch folder left

    [scores] = list(folders["ours"].glob("scores-*"))
    scored = [r for f in sorted(scores.glob("*/*.json")) for r in json.loads(f.read_text())["images"]]
    assert len(scored) == 12  # 2 scenes x 6 images
    for r in scored:
        assert -1 <= r["prompt_similarity"] <= 1 and set(r["identity"]) == {str(i) for i in r["subset"]}

    report = pipeline["results"] / "report"
    rows = list(csv.DictReader((report / "summary.csv").open()))
    assert sorted(r["method"] for r in rows) == ["ours", "ours-no-phase1"]
    assert all(r["images"] == "12" and r["concepts"] == "4" and r["complete"] == "True" for r in rows)
    assert "| Ours |" in (report / "summary.md").read_text() and "| Ours |" in pipeline["report_stdout"]
    assert Image.open(report / "fig5.png").size[0] > 100
    code, _, err = _cli(["eval", "report", str(pipeline["results"])])
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert _cli(["eval", "report", str(pipeline["results"]), "--overwrite"])[0] == 0


def test_rerun_resumes_without_training(pipeline, monkeypatch):
    import breakascene.training.recipe

    def no_training(*args, **kwargs):
        raise AssertionError("a re-run must not train")

    monkeypatch.setattr(breakascene.training.recipe, "extract", no_training)
    args = ["eval", "run", "--scenes", str(pipeline["scenes"]), "--method", "ours", "--out", str(pipeline["results"]), *RUN]
    code, out, err = _cli(args)
    assert code == 0, err
    assert "trained 0 scenes (2 already done), generated 0 batches (4 already done)" in out
    # An interrupted batch (its record missing) is made again, and only it.
    folder = _method_folders(pipeline["results"])["ours"]
    (folder / "coco-000000000002" / "batches" / "0001.json").unlink()
    code, out, err = _cli(args)
    assert code == 0, err
    assert "generated 1 batches (3 already done)" in out
    code, out, err = _cli(pipeline["score"])
    assert code == 0 and "scored 0 batches (8 already done)" in out


def test_other_settings_never_mix(pipeline, tmp_path):
    base = EvalSettings(method="ours", model="builtin:tiny", resolution=64, phase1_steps=1, phase2_steps=1, templates=2,
                        steps=1, prompts_per_batch=4)
    out = pipeline["results"]
    assert results_folder(out, base) == _method_folders(out)["ours"]  # the CLI's run is found again
    assert results_folder(out, EvalSettings(**{**base.__dict__, "device": "cpu"})) == results_folder(out, base)
    for change in ({"templates": 3}, {"seed": 1}, {"phase2_lr": 1e-5}, {"method": "ours-no-masked-loss"}):
        assert results_folder(out, EvalSettings(**{**base.__dict__, **change})) != results_folder(out, base)
    # A scene that changed under finished results is an error, not a silent mix.
    scenes, results = tmp_path / "scenes", tmp_path / "results"
    shutil.copytree(pipeline["scenes"], scenes)
    shutil.copytree(out, results)
    mask = scenes / "coco-000000000001" / "mask1.png"
    Image.fromarray(255 - __import__("numpy").asarray(Image.open(mask))).save(mask)
    with pytest.raises(RunError, match="changed"):
        run_eval(scenes, results, base, progress=False)


@pytest.mark.parametrize("method", ["ti-m", "db-m", "cd-m"])
def test_masked_baselines_train_on_the_collection_with_our_steps(pipeline, tmp_path, method):
    out = tmp_path / "r"
    code, stdout, err = _cli(["eval", "run", "--scenes", str(pipeline["scenes"]), "--method", method, "--out", str(out),
                              "--collection-size", "3", *RUN])
    assert code == 0, err
    assert "trained 2 scenes (0 already done), generated 4 batches (0 already done)" in stdout
    held = json.loads((_method_folders(out)[method] / "config.json").read_text())
    config = held["extract_config"]
    # The baselines' own loss: plain diffusion on the collection's whole images, and the results say so.
    assert config["background"] is False and config["attention_loss"] is False and config["masked_loss"] is False
    assert held["training_loss"] == "plain diffusion loss"
    if method == "ti-m":  # embeddings only, all 1 + 1 steps at the phase-1 rate
        assert (config["phase1_steps"], config["phase2_steps"]) == (2, 0)
    else:  # one model phase of 1 + 1 steps at the phase-2 rate
        assert config["phase1"] is False and config["phase2_steps"] == 2 and not config["train_text_encoder"]
        assert config["phase2_params"] == ("cross_attention_kv" if method == "cd-m" else "full")
    run = _method_folders(out)[method] / "coco-000000000001" / "run"
    handles = json.loads((run / "scene.json").read_text())["handles"]
    assert [h["token"] for h in handles] == ["<asset0>", "<asset1>"]  # no <bg>
    assert len({h["init_word"] for h in handles}) == 2  # each from its own rare word


def test_scores_of_other_settings_are_kept_apart(pipeline, tmp_path):
    code, out, err = _cli([*pipeline["score"], "--missing-concept", "zero"])
    assert code == 0, err
    assert "scored 8 batches (0 already done)" in out  # a new score set; the first one is untouched
    folder = _method_folders(pipeline["results"])["ours"]
    keys = sorted(p.name.removeprefix("scores-") for p in folder.glob("scores-*"))
    assert len(keys) == 2
    code, _, err = _cli(["eval", "report", str(pipeline["results"]), "--out", str(tmp_path / "rep")])
    assert code == 2 and err.count("\n") == 1 and "--scores" in err and not (tmp_path / "rep").exists()
    code, _, err = _cli(["eval", "report", str(pipeline["results"]), "--out", str(tmp_path / "rep"), "--scores", keys[0]])
    assert code == 0, err
    code, _, err = _cli([*pipeline["score"], "--missing-concept", "skip"])
    assert code == 2 and err.count("\n") == 1 and "--missing-concept" in err
