"""The shapes world: the generator's contract, the judge, benchmark scenes and scoring (no model needed)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from breakascene.models.shapes import build_shapes_tokenizer
from breakascene.scene import load_scene_folder
from breakascene.shapes_world import (
    BACKGROUNDS, COLOURS, GROUND_TRUTH_FILE, SHAPES, SOLID, TEXTURES, WORDS, WorldScene, caption, random_scene,
    read_ground_truth, render,
)
from breakascene.world import judge
from breakascene.world.bench import bench_prompts, method_row, score_picture, to_markdown
from breakascene.world.check import judge_accuracy
from breakascene.world.train import HELD_OUT, training_caption

from helpers.cli import assert_nothing_written, assert_one_error, run_cli


def test_scenes_are_deterministic_by_seed_and_captioned_in_plain_english():
    a = random_scene(np.random.default_rng(3), num_objects=2)
    b = random_scene(np.random.default_rng(3), num_objects=2)
    assert a == b
    assert np.array_equal(np.asarray(render(a)[0]), np.asarray(render(b)[0]))
    assert a != random_scene(np.random.default_rng(4), num_objects=2)
    first, second = a.objects
    assert a.caption() == (f"a photo of a {first.colour} {first.shape} and a {second.colour} {second.shape} "
                           f"on a {a.background} background")
    assert caption(["<asset0>", "<asset1>"], "striped") == "a photo of <asset0> and <asset1> on a striped background"


def test_the_vocabulary_is_the_issues_and_each_word_is_one_token():
    assert {"red", "green", "blue", "yellow"} <= set(COLOURS)
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert {"striped", "checkered", "dotted", "plain"} <= set(BACKGROUNDS)
    tokenizer = build_shapes_tokenizer()
    for word in WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    rng = np.random.default_rng(0)
    for _ in range(50):  # every caption the model trains on uses only the world's words
        text = training_caption(random_scene(rng), rng)
        assert set(text.split()) <= set(WORDS), text


def test_scenes_hold_one_to_three_separate_objects_of_distinct_colours():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(60):
        scene = random_scene(rng, textured=True, distinct_shapes=True)
        counts.add(len(scene.objects))
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        assert len({o.shape for o in scene.objects}) == len(scene.objects)
        assert all(o.texture in TEXTURES for o in scene.objects)
        image, coverages = render(scene)
        assert image.size == (64, 64)
        inside = [c >= 0.5 for c in coverages]
        for i in range(len(inside)):
            for j in range(i + 1, len(inside)):
                assert not (inside[i] & inside[j]).any()
    assert counts == {1, 2, 3}
    assert all(o.texture == SOLID for o in random_scene(rng, num_objects=3).objects)


def test_the_judge_reads_drawn_scenes():
    accuracy = judge_accuracy(num=120, seed=5)
    assert accuracy.background >= 0.97, accuracy
    assert accuracy.count >= 0.95, accuracy
    assert min(accuracy.colour, accuracy.shape) >= 0.97, accuracy
    assert accuracy.texture >= 0.93, accuracy


def test_the_judge_sees_no_object_in_an_empty_picture_and_tells_backgrounds_apart():
    rng = np.random.default_rng(1)
    for background in BACKGROUNDS:
        scene = dataclasses.replace(random_scene(rng, background=background), objects=())
        reading = judge.read(render(scene)[0])
        assert reading.objects == ()
        assert reading.background == background
    noise = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    assert judge.read(noise).objects == ()  # scattered saturated pixels are not objects


def _drifting(pattern: str, period: float, wobble: float) -> np.ndarray:
    """(64, 64, 3) uint8: a two-tone background, no objects, whose period is ``period`` instead of the world's 8
    and whose phase wobbles by up to ``2 * wobble`` pixels across the picture, as a generated picture's does."""
    y, x = np.mgrid[0:64, 0:64] + 0.5
    shift = wobble * (np.sin(2 * np.pi * x / 64) + np.sin(2 * np.pi * y / 64))
    if pattern == "striped":
        dark = ((x + y + shift) % period) < period / 2
    else:
        dark = (np.floor((x + shift) / period) + np.floor((y + shift) / period)) % 2 == 1
    return np.where(dark[..., None], [70, 70, 70], [200, 200, 200]).astype(np.uint8)


def test_the_judge_reads_a_pattern_that_drifts_but_not_a_smooth_shading():
    for pattern, period, wobble in (("striped", 8.7, 0), ("striped", 7.3, 0), ("striped", 8, 3), ("checkered", 8, 3)):
        assert judge.read(_drifting(pattern, period, wobble)).background == pattern, (pattern, period, wobble)
    y, x = np.mgrid[0:64, 0:64]
    shading = np.repeat((80 + (x + y))[..., None], 3, axis=-1).astype(np.uint8)  # varies a lot, but no pattern
    assert judge.read(shading).background == "plain"


def _scene_with(objects, background="plain") -> WorldScene:
    return WorldScene(background, ((200, 200, 200), (70, 70, 70)), (0, 0), tuple(objects))


def test_a_picture_is_scored_for_identity_prompt_and_leakage():
    truth = random_scene(np.random.default_rng(2), num_objects=2, textured=True, distinct_shapes=True)
    a, b = truth.objects
    asked_a = {"prompt": "", "concepts": [0], "background": "dotted"}
    exact = score_picture(render(_scene_with([a], "dotted"))[0], asked_a, truth.objects)
    assert exact["identity"] == {"0": 1.0} and exact["prompt"] == 1.0 and exact["leak"] is False
    solid = score_picture(render(_scene_with([dataclasses.replace(a, texture=SOLID)], "dotted"))[0], asked_a,
                          truth.objects)
    assert solid["identity"]["0"] == pytest.approx(2 / 3)  # colour and shape, not the texture
    leaked = score_picture(render(_scene_with([a, b], "plain"))[0], asked_a, truth.objects)
    assert leaked["leak"] is True and leaked["prompt"] == 0.0  # wrong background, two objects for one
    both = score_picture(render(_scene_with([a, b], "striped"))[0],
                         {"prompt": "", "concepts": [0, 1], "background": "striped"}, truth.objects)
    assert both["all_concepts"] is True and both["identity"] == {"0": 1.0, "1": 1.0} and both["leak"] is None

    # The method's row: a whole concept is a single-handle picture with colour, shape and texture all right.
    records = [{**r, "scene": "scene-000"} for r in (exact, solid, leaked, both)]
    row = method_row("ours", records, [0.6, 0.3], num_resamples=10)
    assert row["whole_concept"] == pytest.approx(2 / 3)  # exact and leaked, not solid; both asks for two
    assert row["leakage"] == pytest.approx(1 / 3) and row["all_concepts"] == 1.0
    assert (row["attention_own_min"], row["attention_own_mean"]) == (0.3, pytest.approx(0.45))
    assert "| 67% | 33% | 100% | 0.30 / 0.45 |" in to_markdown([row])


def test_bench_prompts_are_every_subset_on_every_other_background():
    prompts = bench_prompts(["<asset0>", "<asset1>"], "striped")
    assert len(prompts) == 3 * 3
    assert {tuple(p["concepts"]) for p in prompts} == {(0,), (1,), (0, 1)}
    assert "striped" not in {p["background"] for p in prompts}
    assert prompts[-1]["prompt"] == "a photo of <asset0> and <asset1> on a plain background"


def test_held_out_prompts_never_appear_in_training_scenes():
    from breakascene.world.train import WorldTrainConfig, batch_rng, draw_training_scene

    for step in range(30):
        rng, _ = batch_rng(WorldTrainConfig(), 2, step)
        scene = draw_training_scene(rng, textured=False)
        assert not any((o.colour, o.shape, scene.background) in HELD_OUT for o in scene.objects)


def test_world_scenes_writes_scene_folders_that_extract_reads(tmp_path):
    out = tmp_path / "scenes"
    code, stdout, err = run_cli(["world", "scenes", "--out", str(out), "--num", "2", "--seed", "1"])
    assert code == 0, err
    folders = sorted(out.iterdir())
    assert [f.name for f in folders] == ["scene-000", "scene-001"]
    data = json.loads((folders[0] / GROUND_TRUTH_FILE).read_text())
    assert data["background"] in BACKGROUNDS
    assert [o["mask"] for o in data["objects"]] == ["mask0.png", "mask1.png"]
    assert {"colour", "shape", "texture"} <= set(data["objects"][0])
    assert read_ground_truth(folders[0]).caption() in stdout
    scene = load_scene_folder(folders[0], 64)
    assert scene.masks.shape == (2, 64, 64)
    # Again: the same scenes; without --overwrite, one error line and nothing touched.
    before = (folders[0] / "img.png").read_bytes()
    code, _, err = run_cli(["world", "scenes", "--out", str(out), "--num", "2", "--seed", "1"])
    assert_one_error(code, err, "already exists", "--overwrite")
    assert (folders[0] / "img.png").read_bytes() == before
    code, _, err = run_cli(["world", "scenes", "--out", str(tmp_path / "none"), "--num", "0"])
    assert_one_error(code, err, "--num")
    assert_nothing_written(tmp_path / "none")


TINY_TRAINING = dict(vae_steps=2, steps=4, one_object_steps=4, batch=2, warmup=1, one_object_warmup=1,
                     checkpoint_every=2, sample_grids=False)


def assert_same_pipeline_weights(a_folder, b_folder):
    from safetensors.torch import load_file

    for part in ("unet/diffusion_pytorch_model", "text_encoder/model", "vae/diffusion_pytorch_model"):
        a, b = load_file(a_folder / f"{part}.safetensors"), load_file(b_folder / f"{part}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part


@pytest.fixture(scope="module")
def straight_training(tmp_path_factory):
    """All three stages of a tiny ``world train`` run without a stop: its pipeline folder."""
    from breakascene.world import train

    out = tmp_path_factory.mktemp("straight")
    return train.train_world_model(out, train.WorldTrainConfig(**TINY_TRAINING), log=lambda *_: None)


@pytest.mark.slow  # three tiny world trainings each (about 16 s with the straight one): `make test-slow`
@pytest.mark.parametrize("stop_stage", [2, 3])
def test_world_train_resumes_exactly_where_it_stopped(straight_training, tmp_path, monkeypatch, stop_stage):
    from breakascene.world import train

    config = train.WorldTrainConfig(**TINY_TRAINING)
    real_step = train.train_denoiser

    def stopping(components, config, stage, start, optimizer, ema, on_step):
        def on_step_then_stop(step, values):
            on_step(step, values)
            if stage == stop_stage and step == 1:  # the checkpoint at 2 steps is written: now the machine goes down
                raise KeyboardInterrupt

        real_step(components, config, stage, start, optimizer, ema, on_step_then_stop)

    monkeypatch.setattr(train, "train_denoiser", stopping)
    with pytest.raises(KeyboardInterrupt):
        train.train_world_model(tmp_path / "resumed", config, log=lambda *_: None)
    monkeypatch.setattr(train, "train_denoiser", real_step)
    progress = json.loads((tmp_path / "resumed" / "checkpoint" / "progress.json").read_text())
    assert (progress["stage"], progress["step"]) == ({2: "denoiser", 3: "one_object"}[stop_stage], 2)
    resumed = train.train_world_model(tmp_path / "resumed", config, log=lambda *_: None)
    assert_same_pipeline_weights(straight_training, resumed)


@pytest.mark.slow  # two more tiny world trainings (about 9 s): `make test-slow`
def test_world_train_from_a_stage_two_pipeline_gives_the_weights_of_a_run_from_scratch(straight_training, tmp_path):
    """The shipped weights were made this way: stage 3 from the stage-2 pipeline folder (``--init``)."""
    from breakascene.world import train

    stage_two = train.train_world_model(
        tmp_path / "two", train.WorldTrainConfig(**{**TINY_TRAINING, "one_object_steps": 0}), log=lambda *_: None)
    with pytest.raises(AssertionError):
        assert_same_pipeline_weights(straight_training, stage_two)  # stage 3 changes the weights
    from_init = train.train_world_model(tmp_path / "three", train.WorldTrainConfig(**TINY_TRAINING), init=stage_two,
                                        log=lambda *_: None)
    assert_same_pipeline_weights(straight_training, from_init)


def test_world_train_refuses_an_existing_folder_without_resume(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(["world", "train", "--out", str(out)])
    assert_one_error(code, err, "already exists", "--resume")
    code, _, err = run_cli(["world", "train", "--out", str(out), "--resume"])
    assert_one_error(code, err, "no checkpoint")
    assert (out / "notes.txt").read_text() == "mine"
    code, _, err = run_cli(["world", "train", "--out", str(out), "--batch", "0", "--overwrite"])
    assert_one_error(code, err, "--batch")
    assert (out / "notes.txt").read_text() == "mine"  # a bad flag is refused before --overwrite clears anything
    code, _, err = run_cli(["world", "train", "--out", str(out), "--object-weight", "0", "--overwrite"])
    assert_one_error(code, err, "--object-weight")
    code, _, err = run_cli(["world", "train", "--out", str(out), "--one-object-steps", "-1", "--overwrite"])
    assert_one_error(code, err, "--one-object-steps")
    code, _, err = run_cli(["world", "train", "--out", str(tmp_path / "new"), "--init", "builtin:shapes"])
    assert_one_error(code, err, "--init", "--one-object-steps")
    steps = ["--one-object-steps", "2"]
    code, _, err = run_cli(["world", "train", "--out", str(out), "--init", str(tmp_path / "none"), "--overwrite", *steps])
    assert_one_error(code, err, "--init", "no such folder")
    code, _, err = run_cli(["world", "train", "--out", str(out), "--init", str(out), "--overwrite", *steps])
    assert_one_error(code, err, "--init", "inside --out")
    code, _, err = run_cli(["world", "train", "--out", str(tmp_path / "new"), "--init", str(out), *steps])
    assert_one_error(code, err, "--init", "model_index.json")
    assert (out / "notes.txt").read_text() == "mine"
    assert_nothing_written(tmp_path / "new")


def test_drawing_processes_give_every_step_the_batch_it_draws_alone():
    from breakascene.world.train import WorldTrainConfig, stage_batches, training_batch

    config = WorldTrainConfig(batch=3, workers=2)
    for stage in (1, 2, 3):
        drawn = list(stage_batches(config, stage, 5, 9))
        assert len(drawn) == 4
        for step, (images, captions, boxes) in enumerate(drawn, 5):
            alone, alone_captions, alone_boxes = training_batch(config, stage, step)
            assert images.shape == (3, 3, 64, 64) and torch.equal(images, alone)
            assert captions == alone_captions and (captions is None) == (stage == 1)
            assert (boxes is None) == (stage == 1) or torch.equal(boxes, alone_boxes)


def test_world_check_refuses_a_count_below_one():
    code, _, err = run_cli(["world", "check", "--judge-scenes", "0"])
    assert_one_error(code, err, "--judge-scenes")


def test_world_train_weights_the_noisiest_steps_like_a_clean_latent_loss():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from breakascene.models.shapes import SCHEDULE
    from breakascene.world.loss_weights import snr_weights

    scheduler = DDPMScheduler(**SCHEDULE)
    timesteps = torch.tensor([10, 300, 600, 900, 990])
    latents, noise = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    alpha = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    # a prediction whose clean latent (sqrt(a) x_t - sqrt(1 - a) v) is off by exactly 1 everywhere
    predicted = velocity - 1 / (1 - alpha).sqrt()
    assert torch.allclose(alpha.sqrt() * noisy - (1 - alpha).sqrt() * predicted, latents + 1, atol=1e-4)
    snr = compute_snr(scheduler, timesteps)
    loss = ((predicted - velocity) ** 2).mean(dim=(1, 2, 3)) * snr_weights(snr, 5.0)
    # min(snr, 5) + 1 on the clean latent: the noisiest steps weigh 1 (min-SNR alone: 0.03 at t = 900, 0.0002 at 990)
    assert torch.allclose(loss, torch.clamp(snr, max=5.0) + 1, rtol=1e-4)
    assert loss[-2:].min() >= 1 and loss.max() <= 6



def test_object_weights_cover_every_object_pixel_and_average_one():
    from breakascene.world.loss_weights import object_boxes, object_pixel_weights
    from breakascene.world.train import WorldTrainConfig, batch_rng, draw_training_scene

    rng, _ = batch_rng(WorldTrainConfig(), 2, 0)
    scenes = [draw_training_scene(rng, textured=False) for _ in range(8)]
    boxes = object_boxes(scenes)
    for scene, box in zip(scenes, boxes[:, 0]):
        for coverage in render(scene)[1]:
            assert (torch.from_numpy(coverage)[box == 0] == 0).all()  # every pixel of every shape is in a box
    assert 0.05 < boxes.mean() < 0.5  # ... and the boxes are not the whole picture
    weights = object_pixel_weights(boxes, 5.0)
    assert weights.shape == (8, 1, 32, 32)
    assert torch.allclose(weights.mean(dim=(1, 2, 3)), torch.ones(8))
    pooled = torch.nn.functional.avg_pool2d(boxes, 2)  # the latent grid
    ratios = [weights[i][pooled[i] == 1].min() / weights[i][pooled[i] == 0].max() for i in range(8)]
    assert torch.allclose(torch.stack(ratios), torch.tensor(5.0))


def test_training_scenes_follow_the_configured_count_sizes_and_caption_order():
    from breakascene.world.train import WorldTrainConfig, draw_training_scene

    config = WorldTrainConfig(max_objects=2, object_sizes=((30, 34), (20, 22), (15, 16)), ordered_captions=True)
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(60):
        scene = draw_training_scene(rng, False, config=config)
        counts.add(len(scene.objects))
        low, high = config.object_sizes[len(scene.objects) - 1]
        assert all(low <= o.size <= high for o in scene.objects)
        text = training_caption(scene, rng, ordered=True)
        parts = text.removeprefix("a photo of ").split(" on a ")[0].split(" and ")
        assert len(parts) == len(scene.objects)
        for part, o in zip(parts, scene.objects):  # left to right, as the scene sorts its objects
            assert part.split(" ", 1)[1] in (o.shape, f"{o.colour} object", f"{o.colour} {o.shape}"), text
    assert counts == {1, 2}


class DrawingPipeline:
    """Stands in for a model in the checks' tests: draws each prompt's objects exactly, or with the shapes
    swapped between them, so that what the check counts is known."""

    def __init__(self, swap_shapes: bool):
        self.swap_shapes = swap_shapes

    def __call__(self, prompts, generator, **_):
        words = prompts[0].split()
        colours = [w for w in words if w in COLOURS]
        shapes = [w for w in words if w in SHAPES]
        if self.swap_shapes:
            shapes = shapes[::-1]
        background = words[words.index("background") - 1]
        from breakascene.shapes_world import WorldObject

        objects = tuple(WorldObject(c, s, SOLID, 16.0 + 32 * i, 30.0, 24.0) for i, (c, s) in enumerate(zip(colours, shapes)))
        scene = WorldScene(background, ((200, 200, 200), (70, 70, 70)), (0, 0), objects)
        image = np.asarray(render(scene)[0], np.float32) / 255
        return type("Output", (), {"images": [image] * len(prompts)})()


def test_the_two_object_check_counts_pictures_where_both_pairs_are_drawn():
    from breakascene.world.check import TWO_OBJECT_PROMPTS, two_object_check

    right = two_object_check(DrawingPipeline(swap_shapes=False), images_per_prompt=1)
    assert (right.count, right.colours, right.pairs, right.images) == (1.0, 1.0, 1.0, len(TWO_OBJECT_PROMPTS))
    swapped = two_object_check(DrawingPipeline(swap_shapes=True), images_per_prompt=1)
    assert (swapped.count, swapped.colours, swapped.pairs) == (1.0, 1.0, 0.0)


def test_world_train_can_keep_the_text_encoder_as_initialised_and_train_under_bf16(tmp_path):
    from safetensors.torch import load_file

    from breakascene.world import train

    config = train.WorldTrainConfig(**{**TINY_TRAINING, "one_object_steps": 0}, train_text_encoder=False,
                                    mixed_precision="bf16")
    pipeline = train.train_world_model(tmp_path / "frozen", config, log=lambda *_: None)
    initial = train.build_world_components(config)
    saved = load_file(pipeline / "text_encoder" / "model.safetensors")
    start = {k: v.to(torch.float16).float() for k, v in initial["text_encoder"].state_dict().items()}
    assert all(torch.equal(saved[k], start[k]) for k in saved)  # only fp16 rounding, as every saved weight
    unet = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    start_unet = initial["unet"].state_dict()
    assert any(not torch.equal(unet[k].float(), start_unet[k].to(torch.float16).float()) for k in unet)
