"""The optimiser step fused into the backward pass (``extract --optimizer-in-backward``), as torchtune does it.

Each trained parameter gets its own optimiser and a post-accumulate-grad hook that steps it and drops its
gradient the moment the backward pass has produced it, so a full phase 2 never holds every gradient at once:
at most one layer's worth lives at a time instead of the whole UNet's (3.5 GB in fp32 for SD 2.1, 10 GB for
SDXL). Adam and AdamW update every element on its own, so the weights are those of one optimiser over all
parameters (tested). What needs every gradient at once cannot run this way: clipping the global gradient norm
(``--max-grad-norm``, the official preset) and fp16's loss scaling; ``ExtractConfig.validate`` refuses both.

:class:`OptimizerInBackward` looks like one optimiser to the training loop: ``step`` and ``zero_grad`` do
nothing (the hooks did it), and ``state_dict`` / ``load_state_dict`` use the layout of one optimiser over the
same parameters, so a checkpoint written with it resumes without it and the other way round.
"""

from __future__ import annotations

from typing import Callable

import torch


class OptimizerInBackward:
    """One ``make_optimizer([p])`` per parameter of ``params``, stepped by hooks in the backward pass."""

    def __init__(self, params: list[torch.nn.Parameter],
                 make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]):
        self.optimizers = [make_optimizer([p]) for p in params]
        self.handles = [p.register_post_accumulate_grad_hook(self._hook(k)) for k, p in enumerate(params)]

    def _hook(self, index: int):
        optimizer = self.optimizers[index]

        def step(param: torch.nn.Parameter) -> None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # the gradient is gone as soon as it is used

        return step

    def step(self) -> None:
        """Nothing: every parameter was stepped in the backward pass."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing: every gradient was dropped in the backward pass."""

    def state_dict(self) -> dict:
        """As one optimiser over the parameters would have it: ``state`` keyed by the parameter's index."""
        state = {k: opt.state_dict()["state"][0] for k, opt in enumerate(self.optimizers) if opt.state_dict()["state"]}
        return {"state": state, "param_groups": [group for opt in self.optimizers for group in opt.state_dict()["param_groups"]]}

    def load_state_dict(self, state_dict: dict) -> None:
        for k, optimizer in enumerate(self.optimizers):
            if k in state_dict["state"]:
                own = optimizer.state_dict()
                optimizer.load_state_dict({"state": {0: state_dict["state"][k]}, "param_groups": own["param_groups"]})

    def remove(self) -> None:
        """Takes the hooks off the parameters (at the end of a phase)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
