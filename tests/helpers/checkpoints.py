"""Checkpoint saves cut short at a chosen file operation, for the crash tests (tests/test_checkpoint_crash.py).

Every file operation a save makes goes through one of ``FILE_OPERATIONS``: :func:`intercept` counts them and,
at the k-th, raises (an exception in the saving process) or calls ``at_stop`` (a child process waits there to be
SIGKILLed). The savers write a version whose every part (weights, optimiser state, random state, the step in
the JSON) is a function of its step, and read a folder back checking that all the parts agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

# (module, attribute): what writes, fsyncs, renames and deletes. shutil.rmtree goes through os.unlink and
# os.rmdir, so a crash half-way through deleting a folder is among the points too.
FILE_OPERATIONS = [(os, "mkdir"), (os, "rmdir"), (os, "unlink"), (os, "open"), (os, "fsync"), (os, "replace"),
                   (os, "rename")]


class InjectedCrash(Exception):
    """Raised in place of the file operation a test cut the save at."""


def intercept(monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None,
              at_stop: Callable[[str], None] | None = None) -> list[str]:
    """Wraps every file operation; returns the list that records their names in order as they are called.

    Args:
        stop_at: the 1-based number of the operation to stop at, before it runs; None: none (just count).
        at_stop: what happens there, given the operation's name; by default InjectedCrash is raised.
    """
    import safetensors.torch

    from breakascene.training import checkpoint

    calls: list[str] = []

    def wrap(name: str, real):
        def operation(*args, **kwargs):
            calls.append(name)
            if len(calls) == stop_at:
                if at_stop is None:
                    raise InjectedCrash(f"injected before {name} (operation {stop_at})")
                at_stop(name)
            return real(*args, **kwargs)
        return operation

    for module, attribute in FILE_OPERATIONS:
        monkeypatch.setattr(module, attribute, wrap(f"os.{attribute}", getattr(module, attribute)))
    # safetensors writes in Rust, past the os module: its save_file is one operation (training binds it at import)
    monkeypatch.setattr(checkpoint, "save_file", wrap("save_file", checkpoint.save_file))
    monkeypatch.setattr(safetensors.torch, "save_file", wrap("save_file", safetensors.torch.save_file))
    return calls


def _stepped_optimizer(params: list[torch.nn.Parameter], step: int) -> torch.optim.Optimizer:
    """An AdamW whose moments come from one update with every gradient equal to ``step``."""
    optimizer = torch.optim.AdamW(params, lr=0.1)
    for param in params:
        param.grad = torch.full_like(param, float(step))
    optimizer.step()
    return optimizer


class TrainingSaver:
    """``extract``'s checkpoint (training/checkpoint.py): handle-like weights, AdamW, a random generator."""

    name, record = "training", "state.json"

    @staticmethod
    def _parts(step: int):
        param = torch.nn.Parameter(torch.full((3, 2), float(step)))
        generator = torch.Generator().manual_seed(step)
        return param, _stepped_optimizer([param], step), generator

    def parts(self, step: int):
        """What a save at ``step`` writes (made before a test intercepts the save's file operations)."""
        return step, self._parts(step)

    def save(self, folder: Path, parts) -> None:
        from breakascene.training.checkpoint import save_checkpoint

        step, (param, optimizer, generator) = parts
        state = {"phase_index": 0, "step": step, "fingerprint": {}, "loss_log": [], "attention_scores": {}}
        save_checkpoint(folder, trainable={"p": param}, optimizer=optimizer, generators={"host": generator},
                        state=state)

    def read(self, folder: Path) -> int | None:
        """The step of the checkpoint a resume finds in ``folder`` (None: none), after checking every part of
        it was saved at that step."""
        from breakascene.training.checkpoint import (load_checkpoint_tensors, read_checkpoint_state, restore_optimizer,
                                                     restore_rng)

        state = read_checkpoint_state(folder)
        if state is None:
            return None
        step = state["step"]
        param, expected_optimizer, generator = self._parts(step)
        assert torch.equal(load_checkpoint_tensors(folder)["p"], param.detach())
        restored = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)
        restore_optimizer(folder, restored)
        for key, value in expected_optimizer.state_dict()["state"][0].items():
            assert torch.equal(restored.state_dict()["state"][0][key], value), key
        host = torch.Generator()
        restore_rng(folder, {"host": host})
        assert torch.equal(host.get_state(), generator.get_state())
        return step


class WorldSaver:
    """``world train``'s checkpoint (world/checkpoint.py): three models, their EMA, two AdamWs, the progress."""

    name, record = "world", "progress.json"

    @staticmethod
    def _parts(step: int):
        from diffusers.training_utils import EMAModel

        components = {name: torch.nn.Linear(2, 2) for name in ("text_encoder", "unet", "vae")}
        with torch.no_grad():
            for i, model in enumerate(components.values()):
                for param in model.parameters():
                    param.fill_(step + i / 10)
        params = [p for name in ("text_encoder", "unet") for p in components[name].parameters()]
        optimizers = {"vae": _stepped_optimizer(list(components["vae"].parameters()), step),
                      "denoiser": _stepped_optimizer(params, step)}
        ema = EMAModel(params, decay=0.9)
        for shadow in ema.shadow_params:
            shadow.mul_(2)  # the EMA differs from the weights it follows
        return components, optimizers, ema

    def parts(self, step: int):
        """What a save at ``step`` writes (made before a test intercepts the save's file operations)."""
        return step, self._parts(step)

    def save(self, folder: Path, parts) -> None:
        from breakascene.world.checkpoint import save_checkpoint

        step, (components, optimizers, ema) = parts
        save_checkpoint(folder, components, optimizers, ema, {"stage": "denoiser", "step": step})

    def read(self, folder: Path) -> int | None:
        from breakascene.world.checkpoint import has_checkpoint, load_checkpoint

        if not has_checkpoint(folder):
            return None
        components, optimizers, ema = self._parts(0)
        progress = load_checkpoint(folder, components, optimizers, ema)
        step = progress["step"]
        expected_components, expected_optimizers, expected_ema = self._parts(step)
        for name, model in components.items():
            for key, value in expected_components[name].state_dict().items():
                assert torch.equal(model.state_dict()[key], value), (name, key)
        for restored, shadow in zip(ema.shadow_params, expected_ema.shadow_params):
            assert torch.equal(restored, shadow)
        for name, optimizer in optimizers.items():
            expected = expected_optimizers[name].state_dict()["state"]
            for index, state in optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected[index][key])), (name, key)
        return step


SAVERS = {saver.name: saver for saver in (TrainingSaver(), WorldSaver())}
