"""The training recipe end to end on the tiny model: what trains, what is written, resume, ablations."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from breakascene.config import ExtractConfig
from breakascene.errors import ConfigError, RunError, SceneError
from breakascene.training.recipe import extract
from breakascene.training.trainer import Trainer
from breakascene.handles import make_handles
from breakascene.run_folder import partial_path

from helpers.resume import Killed, stop_at
from helpers.tiny import tiny, tiny_config


def test_phase1_changes_only_the_handle_rows(tmp_path, scene128):
    base = tiny()
    table_before = base.text_encoder.get_input_embeddings().weight.detach().clone()
    result = extract(scene128, tiny_config(phase1_steps=3, phase2_steps=0, phase1_lr=1e-2), tmp_path / "run",
                     components=base, progress=False)
    fresh = tiny()
    trained = StableDiffusionPipeline.from_pretrained(tmp_path / "run")
    table = trained.text_encoder.get_input_embeddings().weight.detach()
    vocab = table_before.shape[0]
    assert torch.equal(table[:vocab], table_before)  # every pre-existing row, bit for bit
    ids = trained.tokenizer.convert_tokens_to_ids(result.tokens)
    assert ids == list(range(vocab, vocab + 3))
    assert torch.equal(table[ids], result.handle_vectors)
    for name, p in fresh.unet.state_dict().items():
        assert torch.equal(p, trained.unet.state_dict()[name]), name
    for name, p in fresh.text_encoder.state_dict().items():
        if "token_embedding" not in name:
            assert torch.equal(p, trained.text_encoder.state_dict()[name]), name
    # The handles did move away from their initial words.
    word = result.handles[0].init_word  # a rare word of the vocabulary: no init words were given
    init = fresh.text_encoder.get_input_embeddings().weight[fresh.tokenizer(word, add_special_tokens=False).input_ids[0]]
    assert not torch.allclose(result.handle_vectors[0], init)


def test_phase2_trains_unet_and_text_encoder_but_not_other_words(tmp_path, scene128):
    extract(scene128, tiny_config(phase1_steps=1, phase2_steps=2, phase2_lr=1e-3), tmp_path / "run", components=tiny(), progress=False)
    fresh, trained = tiny(), StableDiffusionPipeline.from_pretrained(tmp_path / "run")
    unet_changed = [n for n, p in fresh.unet.state_dict().items() if not torch.equal(p, trained.unet.state_dict()[n])]
    assert len(unet_changed) > 0.9 * len(fresh.unet.state_dict())
    text_state = trained.text_encoder.state_dict()
    text_changed = [n for n, p in fresh.text_encoder.state_dict().items()
                    if "token_embedding" not in n and not torch.equal(p, text_state[n])]
    assert any("encoder.layers" in n for n in text_changed)
    vocab = fresh.text_encoder.get_input_embeddings().weight.shape[0]
    assert torch.equal(trained.text_encoder.get_input_embeddings().weight[:vocab],
                       fresh.text_encoder.get_input_embeddings().weight)


def test_run_folder_loads_in_stock_diffusers_and_is_complete(tmp_path, scene128):
    out = tmp_path / "run"
    result = extract(scene128, tiny_config(), out, components=tiny(), progress=False)
    assert not partial_path(out).exists()
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model_index.json", "handles.safetensors", "scene.json", "attention/phase1.png", "attention/phase2.png",
            "scene/img.png", "scene/mask0.png", "scene/mask1.png", "scene/mask_names.txt", "scene/background.png"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)  # safetensors only
    assert any(f.startswith("unet/") and f.endswith(".safetensors") for f in files)

    info = json.loads((out / "scene.json").read_text())
    assert info["base_model"] == "builtin:tiny" and info["resolution"] == 128 and info["seed"] == 0
    assert [h["token"] for h in info["handles"]] == ["<asset0>", "<asset1>", "<bg>"]
    assert info["steps"] == {"phase1": 2, "phase2": 2} and info["config"]["lambda_attn"] == 0.01
    assert {"torch", "diffusers", "transformers"} <= set(info["versions"])

    pipe = StableDiffusionPipeline.from_pretrained(out)
    ids = pipe.tokenizer("a photo of <asset0> and <bg>").input_ids
    assert pipe.tokenizer.convert_tokens_to_ids("<asset0>") in ids and pipe.tokenizer.convert_tokens_to_ids("<bg>") in ids
    handles = load_file(out / "handles.safetensors")["embeddings"]
    rows = pipe.tokenizer.convert_tokens_to_ids(result.tokens)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[rows].detach(), handles)
    image = pipe("a photo of <asset0> at <bg>", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (128, 128, 3)


def test_background_mask_is_the_complement_of_the_union(tmp_path, scene128):
    trainer = Trainer(scene128, tiny_config(), tiny(), make_handles(2), "cpu")
    trainer.setup()
    masks = trainer.pixel_masks[0, 0]  # the scene, as is: (3, R, R): asset0, asset1, bg
    assert torch.equal(masks[2], 1 - torch.maximum(masks[0], masks[1]))
    assert torch.equal(trainer.pixel_masks[0, 1], masks.flip(-1))  # the flipped copy for the random flip


def _weights(folder):
    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(path).items():
            tensors[f"{path.relative_to(folder)}:{key}"] = value
    return tensors


# in phase 1 after its checkpoint; mid phase 2 after one; mid phase 2 training LoRA adapters (the last two: slow)
@pytest.mark.parametrize("kill_at, lora_rank", [(2, 0), pytest.param(5, 0, marks=pytest.mark.slow),
                                                pytest.param(5, 4, marks=pytest.mark.slow)])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(bitwise_reproducible, tmp_path, scene128, kill_at, lora_rank):
    cfg = tiny_config(phase1_steps=3, phase2_steps=4, phase2_lr=1e-4, checkpoint_every=2, lora_rank=lora_rank)
    extract(scene128, cfg, tmp_path / "straight", components=tiny(), progress=False)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        extract(scene128, cfg, out, components=tiny(), progress=False, callback=stop_at(kill_at))
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(RunError, match="--resume"):
        extract(scene128, cfg, out, components=tiny(), progress=False)
    steps_seen = []
    extract(scene128, cfg, out, components=tiny(), progress=False, resume=True,
            callback=lambda p: steps_seen.append(p.global_step))
    assert steps_seen[0] == (2 if kill_at == 2 else 5) + 1  # continued after the last checkpoint
    straight, resumed = _weights(tmp_path / "straight"), _weights(out)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_refuses_changed_settings(tmp_path, scene128):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        extract(scene128, tiny_config(checkpoint_every=1), out, components=tiny(), progress=False, callback=stop_at(3))
    with pytest.raises(ConfigError, match="phase2_lr"):
        extract(scene128, tiny_config(checkpoint_every=1, phase2_lr=1e-3), out, components=tiny(), progress=False, resume=True)


def test_v_prediction_model_trains_on_velocity(tmp_path, scene128):
    components = tiny(prediction_type="v_prediction")
    trainer = Trainer(scene128, tiny_config(), components, make_handles(2), "cpu")
    trainer.setup()
    seen = {}
    original = trainer.noise_scheduler.get_velocity
    trainer.noise_scheduler.get_velocity = lambda *a: seen.setdefault("v", original(*a))
    trainer.trainable_parameters("handles")
    trainer.loss_step(trainer.sample_batch())["total"].backward()
    assert "v" in seen
    result = extract(scene128, tiny_config(), tmp_path / "run", components=tiny(prediction_type="v_prediction"), progress=False)
    assert json.loads((result.out / "scene.json").read_text())["prediction_type"] == "v_prediction"


def _prompts_seen(monkeypatch, cfg, scene, steps=60):
    import breakascene.training.trainer as trainer_module

    prompts = []
    original = trainer_module.build_prompt
    monkeypatch.setattr(trainer_module, "build_prompt", lambda tokens: prompts.append(tokens) or original(tokens))
    trainer = Trainer(scene, cfg, tiny(), make_handles(2), "cpu")
    trainer.setup()
    trainer.trainable_parameters("handles")
    terms = [trainer.loss_step(trainer.sample_batch()) for _ in range(steps)]
    return prompts, terms, trainer


def test_union_sampling_in_training_and_its_ablation(monkeypatch, scene128):
    prompts, _, _ = _prompts_seen(monkeypatch, tiny_config(), scene128, steps=40)
    assert len({len(p) for p in prompts}) == 3 and len({tuple(p) for p in prompts}) > 6
    # The paper's ablation (w/o union sampling): one concept per step, every handle in turn.
    prompts, _, _ = _prompts_seen(monkeypatch, tiny_config(subset_sampling="single"), scene128, steps=30)
    assert all(len(p) == 1 for p in prompts) and {p[0] for p in prompts} == {"<asset0>", "<asset1>", "<bg>"}
    prompts, _, _ = _prompts_seen(monkeypatch, tiny_config(subset_sampling="all"), scene128, steps=5)
    assert all(p == ["<asset0>", "<asset1>", "<bg>"] for p in prompts)


def test_attention_and_masked_loss_ablations(monkeypatch, scene128):
    _, terms, trainer = _prompts_seen(monkeypatch, tiny_config(attention_loss=False), scene128, steps=2)
    assert all("attention" not in t for t in terms) and trainer.store.maps == []
    _, terms, _ = _prompts_seen(monkeypatch, tiny_config(), scene128, steps=2)
    assert all(t["attention"] > 0 for t in terms)
    assert all(torch.allclose(t["total"], t["rec"] + 0.01 * t["attention"]) for t in terms)


def test_no_phase1_ablation_skips_it(tmp_path, scene128):
    result = extract(scene128, tiny_config(phase1=False), tmp_path / "run", components=tiny(), progress=False)
    info = json.loads((result.out / "scene.json").read_text())
    assert info["steps"] == {"phase2": 2} and set(result.attention_scores) == {"phase2"}


@pytest.mark.slow  # two runs and class-image generation (about 5 s): `make test-slow`
def test_prior_preservation_with_given_and_generated_class_images(tmp_path, scene128):
    from PIL import Image

    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (300, 200), (40 * i, 90, 200)).save(folder / f"{i}.png")
    cfg = tiny_config(prior_preservation=True, class_images=str(folder), num_class_images=2)
    result = extract(scene128, cfg, tmp_path / "given", components=tiny(), progress=False)
    # phase 1 trains only the handles, which the class prompt cannot reach: its prior loss is not computed
    assert [(e["phase"], "prior" in e) for e in result.losses] == [("phase1", False), ("phase2", True)]

    cfg = tiny_config(preset="official", prior_preservation=True, num_class_images=1, optimizer="adamw", max_grad_norm=1.0)
    result = extract(scene128, cfg, tmp_path / "generated", components=tiny(), progress=False)
    assert len(list((tmp_path / "generated" / "class_images").glob("*.png"))) == 1  # generated once, kept
    # phase 1 trains only the handles, which the class prompt cannot reach: its prior loss is not computed
    assert [(e["phase"], "prior" in e) for e in result.losses] == [("phase1", False), ("phase2", True)]


def test_progress_callback_reports_every_step(tmp_path, scene128):
    seen = []
    extract(scene128, tiny_config(), tmp_path / "run", components=tiny(), progress=False, callback=seen.append)
    assert [p.global_step for p in seen] == [1, 2, 3, 4]
    assert [p.phase for p in seen] == ["phase1", "phase1", "phase2", "phase2"]
    assert seen[-1].losses is not None and seen[-1].total_steps == 4


def test_gradient_checkpointing_learns_the_same_handles(tmp_path, scene128):
    plain = extract(scene128, tiny_config(phase2_lr=1e-4), tmp_path / "plain", components=tiny(), progress=False)
    checkpointed = extract(scene128, tiny_config(phase2_lr=1e-4, gradient_checkpointing=True), tmp_path / "ckpt",
                           components=tiny(), progress=False)
    assert torch.allclose(plain.handle_vectors, checkpointed.handle_vectors, atol=1e-5)


def test_bf16_mixed_precision_runs_and_keeps_fp32_weights(tmp_path, scene128):
    result = extract(scene128, tiny_config(mixed_precision="bf16"), tmp_path / "run", components=tiny(), progress=False)
    assert all(entry["total"] == entry["total"] for entry in result.losses)  # finite, not NaN
    pipe = StableDiffusionPipeline.from_pretrained(result.out)
    assert pipe.unet.dtype == torch.float32 and result.handle_vectors.dtype == torch.float32


def _item(image, masks, present):
    from types import SimpleNamespace

    keep = torch.zeros(masks.shape[0])
    keep[present] = 1
    return SimpleNamespace(image=image, masks=masks * keep[:, None, None], present=present)


def test_training_on_a_collection_prompts_with_each_images_concepts(scene128, monkeypatch):
    """The masked baselines' path: every step is one collection image, its prompt names what it holds."""
    items = [_item(scene128.image.flip(-1), scene128.masks.flip(-1), [1]), _item(scene128.image, scene128.masks, [0, 1])]
    cfg = tiny_config(background=False, attention_loss=False)
    trainer = Trainer(scene128, cfg, tiny(), make_handles(2, background=False), "cpu", collection=items)
    trainer.setup()
    assert trainer.latent_mean.shape[:2] == (3, 2)  # the scene, then the two items; each with its mirror image
    prompts = []
    with torch.no_grad():
        for _ in range(8):
            batch = trainer.sample_batch()
            prompts.extend(batch.prompts)
            trainer.loss_step(batch)
    assert set(prompts) == {"a photo of <asset1>", "a photo of <asset0> and <asset1>"}


def test_cross_attention_kv_phase2_trains_only_those_projections(tmp_path, scene128):
    components = tiny()
    before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    cfg = tiny_config(phase2_params="cross_attention_kv", train_text_encoder=False, phase2_lr=1e-3)
    extract(scene128, cfg, tmp_path / "run", components=components, progress=False)
    changed = {k for k, v in components.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)


def test_collection_is_checked_before_training(tmp_path, scene128):
    bad = [_item(scene128.image[:, :64], scene128.masks[:, :64], [0])]
    with pytest.raises(SceneError, match="collection item 0"):
        extract(scene128, tiny_config(background=False), tmp_path / "run", components=tiny(), progress=False, collection=bad)
    with pytest.raises(ConfigError, match="background"):
        extract(scene128, tiny_config(), tmp_path / "run", components=tiny(), progress=False, collection=bad)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["ours", "ti-m", "db-m", "cd-m", "ours-no-phase1", "ours-no-masked-loss",
                                    "ours-no-attention-loss", "ours-no-union-sampling"])
def test_every_methods_handles_start_apart(scene128, method):
    """No two concept handles of any evaluated method start from one vector (the old default: "object" for all)."""
    from breakascene.evaluation.methods import extract_config, get_method
    from breakascene.evaluation.settings import EvalSettings

    settings = EvalSettings(method=method, model="builtin:tiny", resolution=128)
    cfg = extract_config(settings, get_method(method))
    trainer = Trainer(scene128, cfg, tiny(), make_handles(2, background=cfg.background), "cpu")
    trainer.setup()
    vectors = torch.nn.functional.normalize(trainer.embedding.handle_vectors.detach()[:2], dim=1)
    assert float(vectors[0] @ vectors[1]) < 0.9
    assert cfg.subset_sampling == ("single" if method == "ours-no-union-sampling" else "union")
    assert cfg.masked_loss is (method not in ("ti-m", "db-m", "cd-m", "ours-no-masked-loss"))


def test_non_finite_numbers_are_refused_for_every_float_field():
    import dataclasses

    floats = [f.name for f in dataclasses.fields(ExtractConfig) if isinstance(getattr(ExtractConfig(), f.name), float)]
    assert {"lambda_attn", "phase1_lr", "phase2_lr", "weight_decay", "flip_probability"} <= set(floats)
    for name in floats + ["lora_alpha", "max_grad_norm"]:  # (these two default to None)
        for bad in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ConfigError, match="finite"):
                ExtractConfig(**{name: bad}).validate()
