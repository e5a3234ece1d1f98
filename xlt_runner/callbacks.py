"""Lightning callbacks the runner adds to every trainer."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback, EarlyStopping

#: Metadata keys of a best-weights file (strings in the safetensors header).
BEST_STEP_KEY, BEST_MONITOR_KEY, BEST_MODE_KEY, BEST_SCORE_KEY = "best_step", "best_monitor", "best_mode", "best_score"


class BestWeights(Callback):
    """Keeps the weights of the best source-dev ``monitor`` so far (``mode`` ``min`` or ``max``) in
    one safetensors file at ``path``: the method's trainable state (for full fine-tuning the whole
    model; no optimiser state, unlike a Lightning checkpoint, which for AdamW is 3x the weights),
    with the step, monitor, mode and score in its header. The file is written only when a
    validation improves strictly on the best, atomically (a kill mid-write leaves the previous
    best), by rank 0. ``best_step``/``best_score`` are in the resume checkpoint, so a resumed run
    compares against the best of the attempt before it."""

    def __init__(self, path: str | Path, monitor: str, mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_step: int | None = None

    @property
    def state_key(self) -> str:
        return f"BestWeights[{self.monitor}]"

    def improves(self, score: float) -> bool:
        """``score`` is finite and strictly better than the best so far."""
        if not math.isfinite(score):
            return False
        if self.best_score is None:
            return True
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise RuntimeError(f"the best checkpoint is chosen by {self.monitor}, which the validation did not "
                               f"log (logged: {sorted(trainer.callback_metrics)})")
        score = float(trainer.callback_metrics[self.monitor])
        if not self.improves(score):
            return
        self.best_score, self.best_step = score, int(trainer.global_step)
        if trainer.is_global_zero:
            pl_module.save_trainable(self.path, metadata={
                BEST_STEP_KEY: str(self.best_step), BEST_MONITOR_KEY: self.monitor, BEST_MODE_KEY: self.mode,
                BEST_SCORE_KEY: repr(score)})
        trainer.strategy.barrier("best_weights")

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "monitor": self.monitor,
                "mode": self.mode}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score, self.best_step = state_dict["best_score"], state_dict["best_step"]

    @property
    def saved(self) -> Path | None:
        """The best-weights file, once a validation has written one."""
        return self.path if self.best_step is not None and self.path.is_file() else None


def read_best_facts(path: str | Path) -> dict[str, Any]:
    """``{"step", "monitor", "mode", "score"}`` from a best-weights file's header."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return {"step": int(meta[BEST_STEP_KEY]), "monitor": meta[BEST_MONITOR_KEY], "mode": meta[BEST_MODE_KEY],
            "score": float(meta[BEST_SCORE_KEY])}


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
