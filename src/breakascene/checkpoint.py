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

import contextlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import RunError, first_line

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


@contextlib.contextmanager
def _reading(folder: Path, name: str):
    """Turns any failure to read a checkpoint file into one RunError that names it and says what to do."""
    try:
        yield Path(folder) / name
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        # (other OSErrors, e.g. permission denied, are the disk's, not the file's, and reported as such)
        raise RunError(f"the checkpoint file {Path(folder) / name} is damaged or incomplete ({first_line(error)}); "
                       "start the run over with --overwrite") from error


def read_checkpoint_state(folder: Path) -> dict | None:
    """The checkpoint's ``state.json``, or None when there is no complete checkpoint. RunError if damaged."""
    with _reading(folder, STATE_FILE) as path:
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        for key in ("phase_index", "step", "fingerprint", "loss_log", "attention_scores"):
            state[key]  # noqa: B018 - a KeyError here means a damaged file
        return state


def load_checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with _reading(folder, "trainable.safetensors") as path:
        return load_file(str(path))


def restore_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    with _reading(folder, "optimizer.safetensors") as path:
        _load_optimizer_tensors(optimizer, load_file(str(path)))


def restore_rng(folder: Path, generators: dict[str, torch.Generator]) -> None:
    with _reading(folder, "rng.safetensors") as path:
        for name, value in load_file(str(path)).items():
            generators[name].set_state(value)
