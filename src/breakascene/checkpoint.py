"""Resumable checkpoints, in safetensors and JSON only (nothing is unpickled on resume).

A checkpoint folder holds:
    state.json              phase index, steps done in it, the config fingerprint, optimiser hyper-parameters
    trainable.safetensors   the handle vectors, and in phase 2 the UNet and text encoder weights
    optimizer.safetensors   the optimiser's per-parameter tensors (Adam moments and step counts)
    rng.safetensors         the random generators' states, so a resumed run draws the same numbers

It is written to ``checkpoint.tmp`` and renamed over ``checkpoint``, so a kill while saving leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
    """Atomically replaces ``folder`` with a checkpoint of the given tensors and JSON-able ``state``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    save_file(_optimizer_tensors(optimizer), str(tmp / "optimizer.safetensors"))
    save_file({k: g.get_state() for k, g in generators.items()}, str(tmp / "rng.safetensors"))
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_state(folder: Path) -> dict | None:
    """The checkpoint's ``state.json``, or None when there is no complete checkpoint."""
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "trainable.safetensors"))


def restore_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    _load_optimizer_tensors(optimizer, load_file(str(Path(folder) / "optimizer.safetensors")))


def restore_rng(folder: Path, generators: dict[str, torch.Generator]) -> None:
    for name, value in load_file(str(Path(folder) / "rng.safetensors")).items():
        generators[name].set_state(value)
