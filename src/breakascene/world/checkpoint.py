"""``world train``'s checkpoints: the models, the EMA and the optimisers' state as safetensors, the progress as
JSON (nothing is unpickled).

    checkpoint/progress.json                 the stage, its steps, the log, and under "files" the folder of:
    checkpoint/files-N/weights.safetensors   the models, the EMA and the optimisers' state

Written as ``versioned_folder.py`` writes, so a process killed at any instant of a save leaves the previous
checkpoint or the new one, complete, and ``progress.json`` exists exactly when there is one to resume.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..versioned_folder import files_folder, read_record, write_version

PROGRESS_FILE = "progress.json"


def _optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{i}.{key}"] = value.cpu() if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict, prefix: str) -> None:
    state = optimizer.state_dict()
    found: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, index, key = name.split(".", 2)
            found.setdefault(int(index), {})[key] = value
    state["state"] = found
    optimizer.load_state_dict(state)


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a complete checkpoint to resume from."""
    return (Path(folder) / PROGRESS_FILE).is_file()


def save_checkpoint(folder: Path, components: dict, optimizers: dict, ema, progress: dict) -> None:
    """Replaces the checkpoint in ``folder`` (models, EMA, optimiser state and the JSON-able ``progress``),
    atomically: a crash at any instant leaves the old checkpoint or the new one."""
    from safetensors.torch import save_file

    tensors = {}
    for name in ("text_encoder", "unet", "vae"):
        tensors.update({f"{name}.{k}": v.cpu().contiguous() for k, v in components[name].state_dict().items()})
    tensors.update({f"ema.{i}": p.cpu().contiguous() for i, p in enumerate(ema.shadow_params)})
    for name, optimizer in optimizers.items():
        tensors.update(_optimizer_tensors(optimizer, f"optim_{name}"))
    write_version(folder, PROGRESS_FILE, progress, lambda files: save_file(tensors, files / "weights.safetensors"))


def load_checkpoint(folder: Path, components: dict, optimizers: dict, ema) -> dict:
    """Puts the checkpoint's weights, EMA and optimiser state in place; returns its progress."""
    from safetensors.torch import load_file

    progress = read_record(folder, PROGRESS_FILE)
    tensors = load_file(files_folder(folder, progress) / "weights.safetensors")
    for name in ("text_encoder", "unet", "vae"):
        prefix = name + "."
        components[name].load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for i, shadow in enumerate(ema.shadow_params):
        shadow.copy_(tensors[f"ema.{i}"])
    for name, optimizer in optimizers.items():
        _load_optimizer_tensors(optimizer, tensors, f"optim_{name}")
    return progress
