"""``python tests/fault_inject.py ARGS``: ``xlt-run ARGS`` with a fault injected at an exact point.

Test-only harness (nothing here ships with the package). It adds one Lightning callback to
the runner's source training, driven by environment variables:

``XLT_FAULT=<SIGNAL>@<where>:<step>``
    Send ``SIGNAL`` (``SIGTERM``, ``SIGKILL``, ``SIGINT``; ``NAN`` instead sets every trainable
    weight to NaN) to this process at optimiser step ``step`` of the source training, where
    ``where`` is
    ``train`` (at the start of the training batch that would make step ``step + 1``),
    ``val`` (at the first batch of the validation that runs at step ``step``),
    ``test`` (at the first test batch; ``step`` is the final step count),
    ``write`` (SIGKILL half-way through writing ``resume.ckpt`` at step ``step``: the file
    being written, its temporary file or ``resume.ckpt`` itself for a writer that writes in
    place, holds the first half of the checkpoint's bytes when the process dies).
    ``<SIGNAL>@random`` instead picks a fault (SIGTERM or SIGKILL at train/val, SIGKILL at
    write) at random from ``XLT_FAULT_SEED`` and the run id, for a fraction ``XLT_FAULT_P``
    (default 0.5) of the runs.
``XLT_LOSS_LOG=<path>``
    Append ``{"run_id", "step", "loss", "lr", "param_sum", "pid"}`` after each optimiser step
    (JSON lines; ``param_sum``: :func:`param_sum` of the weights after the step; ``pid`` tells
    the attempts apart).
``XLT_VAL_LOG=<path>``
    Append ``{"run_id", "step", "metrics", "pid"}`` after each validation of the source training
    (``metrics``: every ``val/*`` value the trainer holds then, as floats), so that a test can
    tell a validation that a resumed run skipped or computed differently.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import zlib

import torch

FAULT = os.environ.get("XLT_FAULT", "")
LOSS_LOG = os.environ.get("XLT_LOSS_LOG")
VAL_LOG = os.environ.get("XLT_VAL_LOG")
WHERES = ("train", "val", "write")


def parse_fault(spec: str, run_id: str, max_steps: int, val_every: int) -> tuple[str, str, int] | None:
    """``(signal name, where, step)`` for this run, or None for no fault."""
    if not spec:
        return None
    sig, _, rest = spec.partition("@")
    if rest != "random":
        where, _, step = rest.partition(":")
        return sig, where, int(step)
    rng = random.Random(zlib.crc32(f"{os.environ.get('XLT_FAULT_SEED', '0')}|{run_id}".encode()))
    if rng.random() >= float(os.environ.get("XLT_FAULT_P", "0.5")):
        return None
    where = rng.choice(WHERES)
    if where == "train":
        return rng.choice(["SIGTERM", "SIGKILL"]), where, rng.randrange(0, max_steps)
    validations = list(range(val_every, max_steps + 1, val_every))
    if where == "val":
        return rng.choice(["SIGTERM", "SIGKILL"]), where, rng.choice(validations)
    return "SIGKILL", where, rng.choice(validations[:-1] or validations) + 1  # the save after a validation


def param_sum(module) -> float:
    """Sum of every trainable parameter (float64): a fingerprint of the weights after a step."""
    return float(sum(p.detach().double().sum() for p in module.parameters() if p.requires_grad))


def fault_callback(run_id: str, max_steps: int, val_every: int):
    import pytorch_lightning as pl

    fault = parse_fault(FAULT, run_id, max_steps, val_every)

    class Fault(pl.Callback):
        def __init__(self) -> None:
            self.fired = False

        def _fire(self, where: str, step: int, pl_module) -> None:
            if fault and not self.fired and fault[1] == where and fault[2] == step:
                self.fired = True
                print(f"[fault] {fault[0]} at {where}:{step}", flush=True)
                if fault[0] == "NAN":
                    with torch.no_grad():
                        for p in pl_module.parameters():
                            if p.requires_grad:
                                p.fill_(float("nan"))
                else:
                    os.kill(os.getpid(), getattr(signal, fault[0]))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._fire("train", trainer.global_step, pl_module)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            if batch_idx == 0 and not trainer.sanity_checking:
                self._fire("val", trainer.global_step, pl_module)

        def on_validation_end(self, trainer, pl_module) -> None:
            if VAL_LOG and not trainer.sanity_checking:
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
                with open(VAL_LOG, "a", encoding="utf-8") as log:
                    log.write(json.dumps({"run_id": run_id, "step": trainer.global_step, "metrics": metrics,
                                          "pid": os.getpid()}) + "\n")

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            if batch_idx == 0:
                self._fire("test", trainer.global_step, pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if LOSS_LOG and outputs is not None:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                with open(LOSS_LOG, "a", encoding="utf-8") as log:
                    log.write(json.dumps({"run_id": run_id, "step": trainer.global_step - 1, "loss": float(loss),
                                          "lr": trainer.optimizers[0].param_groups[0]["lr"],
                                          "param_sum": param_sum(pl_module), "pid": os.getpid()}) + "\n")

    callback = Fault()
    if fault and fault[1] == "write":
        original = pl.Trainer.save_checkpoint

        def save_then_die(trainer, filepath, *args, **kwargs):
            original(trainer, filepath, *args, **kwargs)
            # the file rank 0 writes (resume.ckpt's temporary file, or resume.ckpt itself for a
            # writer that writes in place), not the best weights; other ranks call this but write nothing
            if "resume.ckpt" in os.path.basename(filepath) and trainer.is_global_zero \
                    and trainer.global_step == fault[2] and not callback.fired:
                callback.fired = True
                with open(filepath, "r+b") as handle:
                    handle.truncate(os.path.getsize(filepath) // 2)
                print(f"[fault] SIGKILL while writing {filepath} at step {fault[2]}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        pl.Trainer.save_checkpoint = save_then_die
    return callback


def install() -> None:
    """Wrap ``runner.build_callbacks`` so that the source training gets the fault callback."""
    from xlt_runner import runner
    from xlt_runner.identity import run_id

    original = runner.build_callbacks

    def build_callbacks(cfg, method, monitor, mode, max_steps, val_check_interval, patience):
        callbacks = original(cfg, method, monitor, mode, max_steps, val_check_interval, patience)
        if max_steps == cfg.trainer.max_steps:  # the source training, not a per-target phase
            callbacks.append(fault_callback(run_id(cfg), max_steps, cfg.trainer.val_check_interval))
        return callbacks

    runner.build_callbacks = build_callbacks


if __name__ == "__main__":
    install()
    from xlt_runner.cli import run_main
    run_main()  # sys.argv[0] stays this file: DDP re-executes it for the other ranks
