"""Resumable checkpoints, in safetensors and JSON only (nothing is unpickled on resume).

A checkpoint folder holds:
    state.json              phase index, steps done in it, the config fingerprint, the training log so far,
                            and under "files" the folder that holds the tensors:
    files-N/trainable.safetensors   the handle vectors, and in phase 2 the UNet and text encoder weights
    files-N/optimizer.safetensors   the optimiser's per-parameter tensors (Adam moments and step counts)
    files-N/rng.safetensors         the random generators' states, so a resumed run draws the same numbers

A save writes the tensors into a new ``files-N+1/`` and then replaces ``state.json`` in one atomic rename
(``versioned_folder.py``), so a process killed at any instant of it leaves the previous checkpoint or the new
one, complete, and ``state.json`` exists exactly when there is a checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ExtractConfig
from ..errors import ConfigError, RunError, RunFailure, SceneError, first_line
from ..handles import handle_table_names
from ..scene import Scene
from ..versioned_folder import files_folder, read_record, write_version

STATE_FILE = "state.json"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            flat[f"{index}.{key}"] = value.detach().contiguous().cpu()
    return flat


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    # The param groups (lr, betas, ...) come from the config, which --resume has checked is unchanged.
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(
    folder: Path,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    state: dict,
) -> None:
    """Replaces the checkpoint in ``folder`` with one of the given tensors and JSON-able ``state``, atomically:
    a crash at any instant leaves the old checkpoint or the new one."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in trainable.items()}

    def write_files(files: Path) -> None:
        save_file(tensors, str(files / "trainable.safetensors"))
        save_file(_optimizer_tensors(optimizer), str(files / "optimizer.safetensors"))
        save_file({k: g.get_state() for k, g in generators.items()}, str(files / "rng.safetensors"))

    write_version(folder, STATE_FILE, state, write_files)


@contextlib.contextmanager
def _reading(path: Path):
    """Turns any failure to read a checkpoint file into one RunError that names it and says what to do."""
    try:
        yield path
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        # (other OSErrors, e.g. permission denied, are the disk's, not the file's, and reported as such)
        raise RunError(f"the checkpoint file {path} is damaged or incomplete ({first_line(error)}); "
                       "start the run over with --overwrite") from error


def read_checkpoint_state(folder: Path) -> dict | None:
    """The checkpoint's ``state.json``, or None when there is no complete checkpoint. RunError if damaged."""
    with _reading(Path(folder) / STATE_FILE):
        state = read_record(folder, STATE_FILE)
        if state is None:
            return None
        for key in ("phase_index", "step", "fingerprint", "loss_log", "attention_scores"):
            state[key]  # noqa: B018 - a KeyError here means a damaged file
        return state


def checkpoint_file(folder: Path, name: str) -> Path:
    """Where the checkpoint in ``folder`` keeps its file ``name`` (e.g. ``trainable.safetensors``).

    Raises:
        RunError: there is no checkpoint, or its state.json is damaged.
    """
    with _reading(Path(folder) / STATE_FILE):
        state = read_record(folder, STATE_FILE)
        if state is None:
            raise FileNotFoundError(f"no {STATE_FILE}")
        return files_folder(folder, state) / name


def load_checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with _reading(checkpoint_file(folder, "trainable.safetensors")) as path:
        return load_file(str(path))


def restore_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    with _reading(checkpoint_file(folder, "optimizer.safetensors")) as path:
        _load_optimizer_tensors(optimizer, load_file(str(path)))


def restore_rng(folder: Path, generators: dict[str, torch.Generator]) -> None:
    with _reading(checkpoint_file(folder, "rng.safetensors")) as path:
        for name, value in load_file(str(path)).items():
            generators[name].set_state(value)


def training_inputs(scene: Scene, collection: list | None = None) -> dict:
    """What a run trains on, as content hashes: the scene as used, and a collection's images and masks."""
    from ..scene import tensor_digest

    inputs = scene.fingerprint()
    if collection:
        inputs["collection"] = [[tensor_digest(item.image), tensor_digest(item.masks)] for item in collection]
    return inputs


def check_resume(state: dict, config: ExtractConfig, inputs: dict, folder: Path) -> None:
    """Refuses ``--resume`` when the checkpoint was made with other settings, another photo or other masks.

    Raises:
        ConfigError: the settings differ (named). SceneError: the photo, a mask, the number of masks or the
            collection differs (named), or the checkpoint records no inputs (written by an older version).
    """
    if state["fingerprint"] != config.training_fingerprint():
        changed = sorted(k for k, v in config.training_fingerprint().items() if state["fingerprint"].get(k) != v)
        raise ConfigError(f"--resume with different settings ({', '.join(changed)}); use the interrupted run's options")
    held = state.get("inputs")
    if held is None:
        raise SceneError(f"the checkpoint in {folder} does not record the photo and masks it was trained on (an "
                         "older break-a-scene wrote it); start over with --overwrite")
    if held["image"] != inputs["image"]:
        raise SceneError("--resume with another photo than the checkpoint was trained on (compared as resized and "
                         "cropped); give the same photo and masks, or start over with --overwrite")
    if len(held["masks"]) != len(inputs["masks"]):
        raise SceneError(f"--resume with {len(inputs['masks'])} masks, but the checkpoint was trained on "
                         f"{len(held['masks'])}; give the same masks, or start over with --overwrite")
    for i, (old, new) in enumerate(zip(held["masks"], inputs["masks"])):
        if old != new:
            raise SceneError(f"--resume with another mask {i} ({inputs['mask_names'][i]}) than the checkpoint was "
                             "trained on; give the same masks in the same order, or start over with --overwrite")
    if held.get("collection") != inputs.get("collection"):
        raise SceneError("--resume with another training collection than the checkpoint's; start over with --overwrite")


def stop_if_not_finite(records: list[dict], steps: int, folder: Path, phase_names: list[str]) -> None:
    """Raises RunFailure if a loss of these training-log ``records`` was NaN or infinite, before anything of
    them is saved, saying which checkpoint in ``folder`` is kept (``phase_names``: the config's phases)."""
    bad = next((r for r in records if not math.isfinite(r["total"])), None)
    if bad is None:
        return
    state = read_checkpoint_state(folder)
    if state is None:
        kept = "no checkpoint was written before it (use --checkpoint-every N to keep one)"
    else:
        kept = (f"the last good checkpoint ({phase_names[state['phase_index']]} step {state['step']}) "
                f"is kept in {folder.parent}")
    raise RunFailure(
        f"the loss became non-finite at {bad['phase']} step {bad['step']} of {steps}; {kept}. The same settings "
        "fail the same way: lower the learning rate or --lambda-attn and start over (--overwrite)"
    )


def load_trained_weights(tensors: dict[str, torch.Tensor], embeddings: list, unet, text_encoders: list[tuple[str, object]],
                         *, whole_unet: bool) -> None:
    """Puts a checkpoint's trained tensors back in place: the handle vectors into ``embeddings`` (one
    HandleEmbedding per text encoder), and the UNet's and the ``text_encoders``' ((name, model) pairs) weights
    (all of the UNet when ``whole_unet``, after a full phase 2; else only what trained)."""
    with torch.no_grad():
        for name, embedding in zip(handle_table_names(len(embeddings)), embeddings):
            embedding.handle_vectors.copy_(tensors[name])
    unet_state = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    if unet_state:
        unexpected = unet.load_state_dict(unet_state, strict=whole_unet).unexpected_keys
        if unexpected:
            raise RunError(f"the checkpoint does not fit this model (e.g. {unexpected[0]}); start the run again")
    for name, encoder in text_encoders:
        state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if state:
            encoder.load_state_dict(state, strict=False)
