"""``world train``'s checkpoints: the models, the EMA and the optimisers' state as safetensors, the progress as
JSON (nothing is unpickled), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch


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


def save_checkpoint(folder: Path, components: dict, optimizers: dict, ema, progress: dict) -> None:
    """``folder/weights.safetensors`` (models, EMA, optimiser state) and ``folder/progress.json``; atomic."""
    from safetensors.torch import save_file

    tensors = {}
    for name in ("text_encoder", "unet", "vae"):
        tensors.update({f"{name}.{k}": v.cpu().contiguous() for k, v in components[name].state_dict().items()})
    tensors.update({f"ema.{i}": p.cpu().contiguous() for i, p in enumerate(ema.shadow_params)})
    for name, optimizer in optimizers.items():
        tensors.update(_optimizer_tensors(optimizer, f"optim_{name}"))
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file(tensors, partial / "weights.safetensors")
    (partial / "progress.json").write_text(json.dumps(progress, indent=2))
    if folder.exists():
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    partial.rename(folder)


def load_checkpoint(folder: Path, components: dict, optimizers: dict, ema) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(folder / "weights.safetensors")
    for name in ("text_encoder", "unet", "vae"):
        prefix = name + "."
        components[name].load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for i, shadow in enumerate(ema.shadow_params):
        shadow.copy_(tensors[f"ema.{i}"])
    for name, optimizer in optimizers.items():
        _load_optimizer_tensors(optimizer, tensors, f"optim_{name}")
    return json.loads((folder / "progress.json").read_text())
