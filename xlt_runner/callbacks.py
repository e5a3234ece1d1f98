"""Lightning callbacks the runner adds to every trainer."""
from __future__ import annotations

from pytorch_lightning.callbacks import EarlyStopping


class DelayedEarlyStopping(EarlyStopping):
    """Early stopping that may only stop once ``start_step`` optimiser steps have passed.

    With a cosine schedule with hard restarts, the XPE paper allows stopping only after
    the first cycle; before ``start_step`` evaluations still update the best score but
    never count towards the patience.
    """

    def __init__(self, start_step: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start_step = start_step
        self.stopped_step: int | None = None  # optimiser step at which patience ran out

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
