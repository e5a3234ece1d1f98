"""Lightning callbacks the runner adds to every trainer."""
from __future__ import annotations

import math
from typing import Any

from pytorch_lightning.callbacks import EarlyStopping


class DelayedEarlyStopping(EarlyStopping):
    """Early stopping that may only stop once ``start_step`` optimiser steps have passed.

    With a cosine schedule with hard restarts, the XPE paper allows stopping only after
    the first cycle; before ``start_step`` evaluations still update the best score but
    never count towards the patience.

    Patience is ``patience`` evaluations, or ``patience_epochs`` epochs of the training set
    (the XPE paper's unit). Epochs become evaluations when training starts, from the data
    module's ``optimizer_steps_per_epoch`` and the evaluation spacing ``val_check_steps``:
    ``ceil(patience_epochs * steps_per_epoch / val_check_steps)`` evaluations, so training
    stops after at least that many steps without improvement. :meth:`describe` records both.
    """

    def __init__(self, start_step: int = 0, patience_epochs: float | None = None, val_check_steps: int = 1,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.start_step = start_step
        self.patience_epochs = patience_epochs
        self.val_check_steps = val_check_steps
        self.steps_per_epoch: int | None = None
        self.stopped_step: int | None = None  # optimiser step at which patience ran out

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.patience_epochs is not None and stage == "fit":
            self.steps_per_epoch = trainer.datamodule.optimizer_steps_per_epoch(
                trainer.world_size, trainer.accumulate_grad_batches)
            self.patience = max(1, math.ceil(self.patience_epochs * self.steps_per_epoch / self.val_check_steps))

    def describe(self) -> dict[str, Any]:
        """The early-stopping rule as applied, for the run record."""
        return {"monitor": self.monitor, "mode": self.mode, "patience_validations": int(self.patience),
                "patience_epochs": self.patience_epochs, "steps_per_epoch": self.steps_per_epoch,
                "val_check_steps": self.val_check_steps, "start_step": self.start_step}

    def stop_reason(self) -> str:
        """Why training stopped early, for the run record."""
        return (f"early_stopping: {self.monitor} did not improve for {self.patience} validations "
                f"(best {float(self.best_score):.6g}); stopped at step {self.stopped_step}")

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.global_step < self.start_step:
            current = trainer.callback_metrics.get(self.monitor)
            if current is not None and self.monitor_op(current - self.min_delta, self.best_score.to(current.device)):
                self.best_score = current
            self.wait_count = 0
            return
        super()._run_early_stopping_check(trainer)
        if self.stopped_step is None and self.wait_count >= self.patience:
            self.stopped_step = trainer.global_step
