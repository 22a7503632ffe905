"""The trainer the bench times: the library's own, keeping each step's loss for a check after the timed region."""

from __future__ import annotations

import torch

from ..training.trainer import TrainBatch, Trainer


class MeasuredTrainer(Trainer):
    """:class:`Trainer` whose :meth:`loss_step` also keeps the total loss (detached, on the device), so that
    whether every loss was finite is read back after the timed steps: no extra synchronisation inside."""

    def setup(self, class_images: torch.Tensor | None = None) -> None:
        super().setup(class_images)
        self.measured_losses: list[torch.Tensor] = []

    def loss_step(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        terms = super().loss_step(batch)
        self.measured_losses.append(terms["total"].detach())
        return terms
