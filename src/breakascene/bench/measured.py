"""The trainer the bench times: the library's own, keeping each step's loss and batch size for checks after the
timed region."""

from __future__ import annotations

import torch

from ..training.batch import TrainBatch
from ..training.trainer import Trainer


class MeasuredTrainer(Trainer):
    """:class:`Trainer` whose :meth:`loss_step` also keeps the total loss (detached, on the device), so that
    whether every loss was finite is read back after the timed steps: no extra synchronisation inside; and how
    many rows each step's denoiser call had (2 with prior preservation's class row, 1 where it was skipped)."""

    def setup(self, class_images: torch.Tensor | None = None) -> None:
        super().setup(class_images)
        self.start_measuring()

    def start_measuring(self) -> None:
        self.measured_losses: list[torch.Tensor] = []
        self.measured_rows: list[int] = []

    def loss_step(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        terms = super().loss_step(batch)
        self.measured_losses.append(terms["total"].detach())
        self.measured_rows.append(batch.noisy_latents.shape[0])
        return terms
