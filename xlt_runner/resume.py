"""Never lose work: a lock per run directory, and preemption-safe checkpoints.

**Lock.** :class:`RunLock` holds ``<run_dir>/.lock`` (an ``flock``, :class:`xlt_runner.fileio.Lock`)
for the whole run, taken *before* the record is read, so two sweeps launched over the
same directory at once never execute the same run twice: the second one sees the lock
held and skips the run with a message. The kernel releases the lock when the process
dies, so a killed job leaves no stale lock. On a cluster file system the lock needs
POSIX lock support (NFSv4, Lustre mounted with ``flock``, GPFS, BeeGFS all have it).

**Preemption.** :class:`PreemptionGuard` catches SIGTERM, SIGUSR1 (Lightning's and
SLURM's ``--signal`` warning), SIGUSR2 (submitit's preemption/timeout signal) and SIGINT
(Ctrl-C) for the duration of a run. During training the signal only sets a flag;
:class:`ResumeCheckpoint` sees it at the end of the next optimiser step that no validation
follows (all DDP ranks agree on which; Lightning resumes exactly only from there), writes ``<run_dir>/checkpoints/resume.ckpt`` with ``trainer.save_checkpoint``
(trainable weights, optimisers, schedulers, loop state incl. ``global_step``,
ModelCheckpoint and early-stopping state, RNG states, the run id) and raises
:class:`RunPreempted`. The runner records ``status: "preempted"`` (``"interrupted"`` for
Ctrl-C) and the process exits with :data:`PREEMPTED_EXIT` (75, EX_TEMPFAIL; 130 for Ctrl-C)
after asking for a requeue: under submitit its own handler (which resubmits the same
Hydra job); under a plain ``sbatch`` job, ``scontrol requeue $SLURM_JOB_ID``. Outside
training (setup, final test), or at a second Ctrl-C, the signal raises :class:`RunPreempted`
at once. Relaunching the same command finds ``resume.ckpt`` and continues.

**Without warning.** With ``trainer.resume_checkpoint_every_validation`` (default) the same
checkpoint is also written at the end of the first step after every validation, so a run
killed without a signal it can catch (SIGKILL, OOM killer, node failure) resumes from its
last validation. Every write goes to a temporary file beside it, is fsynced and renamed
over ``resume.ckpt`` (:func:`xlt_runner.fileio.atomic_path`), so a kill during the write leaves the
previous checkpoint intact.

**Exactness.** Batch ``k`` of a run is a pure function of (seed, k) (the data module's
sampler), RNG states are restored at the first resumed step, and the loop counters come
from the checkpoint, so a resumed run trains exactly the steps an uninterrupted run
trains, on the same batches, to the same losses and metrics (tests/test_faults.py).

**Safety.** Checkpoints are loaded with ``weights_only=True`` only: a ``resume.ckpt`` that
would need arbitrary unpickling (code) is refused as unreadable, never executed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from xlt_runner.data.batching import TRAINING_BATCHES_KEY
from xlt_runner.fileio import Lock, atomic_path

RESUME_CHECKPOINT = "resume.ckpt"
LOCK_FILE = ".lock"
#: Keys of what a resume checkpoint belongs to, checked against the run that resumes from it:
#: the run id, the benchmark data's content fingerprint and the checkpoint directory (the
#: best-checkpoint state holds absolute paths into it).
RUN_ID_KEY = "xlt_run_id"
DATA_FINGERPRINT_KEY = "xlt_data_fingerprint"
CHECKPOINT_DIR_KEY = "xlt_checkpoint_dir"
#: Key of the RNG states in a checkpoint (restored at the first resumed step).
RNG_STATES_KEY = "rng_states"
#: Exit status of a preempted run (EX_TEMPFAIL: retry later, the run will resume).
PREEMPTED_EXIT = 75
#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT = 130
#: Signals a scheduler sends before it kills a job, and Ctrl-C.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class ResumeCheckpointError(RuntimeError):
    """``resume.ckpt`` cannot be used; the message names the file and how to discard it."""


class RunPreempted(Exception):
    """The run was asked to stop by a signal; ``checkpoint`` (if any) holds a state to resume from."""

    def __init__(self, signal_name: str, checkpoint: str | None, step: int | None = None) -> None:
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.step = step
        super().__init__(self.describe())

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C (SIGINT) rather than by a scheduler."""
        return self.signal_name == "SIGINT"

    def with_checkpoint(self, checkpoint: str | None, step: int | None) -> "RunPreempted":
        """The same stop, naming the resumable checkpoint found on disk (a periodic one)."""
        return RunPreempted(self.signal_name, checkpoint, step)

    def describe(self) -> str:
        if self.checkpoint:
            at = f" (step {self.step})" if self.step is not None else ""
            where = f"resumable checkpoint {self.checkpoint}{at}; relaunch the same command to resume from it"
        else:
            where = "no resumable checkpoint; a relaunch starts this run from the beginning"
        return f"received {self.signal_name}; {where}"


def process_rank() -> int:
    """Global rank of this process before any Trainer exists (Lightning's order of env variables)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) is not None:
            return int(os.environ[key])
    return 0


class RunLock:
    """Non-blocking exclusive lock on ``<run_dir>/.lock`` (:class:`xlt_runner.fileio.Lock`);
    ``acquire()`` is False when another process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._lock = Lock(self.path)

    def acquire(self) -> bool:
        return self._lock.try_acquire()

    def release(self) -> None:
        self._lock.release()


class PreemptionGuard:
    """Catches :data:`PREEMPTION_SIGNALS` while active (main thread only; elsewhere a no-op).

    ``training`` is set by :class:`ResumeCheckpoint` while ``trainer.fit`` runs: then a
    signal only sets ``received``; otherwise (or at a second SIGINT) it raises
    :class:`RunPreempted` immediately.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.training = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPTION_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "no signal"

    def _handle(self, signum: int, frame: Any) -> None:
        repeated_interrupt = signum == signal.SIGINT and self.received == signal.SIGINT
        first = self.received is None
        self.received = signum
        if first and self.training:
            hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            print(f"[xlt-run] received {signal.Signals(signum).name}: checkpointing at the next step{hint}",
                  file=sys.stderr, flush=True)
        if not self.training or repeated_interrupt:
            raise RunPreempted(self.signal_name, None)

    def request_requeue(self) -> None:
        """After the record is written: hand over to submitit's handler (requeue + exit) if it
        installed one for the received signal, else ``scontrol requeue`` inside a plain SLURM job."""
        if self.received is None or process_rank() != 0:
            return
        previous = self._previous.get(self.received)
        if callable(previous) and getattr(previous, "__module__", "").startswith("submitit"):
            self.__exit__()
            previous(self.received, None)  # requeues and exits when the job is checkpointable
            return
        if previous in (None, signal.SIG_DFL, signal.SIG_IGN) or not callable(previous):
            job = os.environ.get("SLURM_JOB_ID")
            if job and os.environ.get("SLURM_ARRAY_JOB_ID"):
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            if job and self.received == signal.SIGUSR1:
                code = subprocess.call(["scontrol", "requeue", job])
                print(f"[xlt-run] scontrol requeue {job}: {'ok' if code == 0 else f'failed ({code})'}", file=sys.stderr)


def resume_checkpoint_callback(guard: PreemptionGuard, path: Path, run_id: str, data_fingerprint: str,
                               val_check_steps: int, batches_per_step: int, every_validation: bool):
    """The Lightning callback that writes ``resume.ckpt`` at the end of an optimiser step that
    no validation follows (validation runs every ``val_check_steps`` steps; a step takes
    ``batches_per_step`` training batches, whether Lightning or the method accumulates): when a caught
    signal is seen (then raises :class:`RunPreempted`) and, with ``every_validation``, at the
    first such step after each validation."""
    from pytorch_lightning.callbacks import Callback

    class ResumeCheckpoint(Callback):
        """Saves and stops at optimiser-step boundaries; restores RNG states at the first batch
        after a resume."""

        def __init__(self) -> None:
            self._pending_rng: dict | None = None
            self._validated_since_save = False

        def on_fit_start(self, trainer, pl_module) -> None:
            if val_check_steps == 1 and trainer.max_steps > 1:
                # every step is followed by a validation: no step boundary resumes exactly, so a
                # signal stops the run at once, without a checkpoint
                print("[xlt-run] warning: trainer.val_check_interval=1 leaves no point where a resumable "
                      "checkpoint can be taken; a preempted run will restart from the beginning", file=sys.stderr)
                return
            guard.training = True

        def on_fit_end(self, trainer, pl_module) -> None:
            guard.training = False

        def on_exception(self, trainer, pl_module, exception) -> None:
            guard.training = False

        def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            checkpoint[RUN_ID_KEY] = run_id
            checkpoint[DATA_FINGERPRINT_KEY] = data_fingerprint
            checkpoint[CHECKPOINT_DIR_KEY] = str(path.parent.resolve())
            # every rank's RNG states (ranks draw different dropout masks); rank 0 writes the file
            states = capture_rng_states()
            if trainer.world_size > 1:
                gathered: list = [None] * trainer.world_size
                torch.distributed.all_gather_object(gathered, states)
                states = {"per_rank": gathered}
            checkpoint[RNG_STATES_KEY] = states

        def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            # Dataloader iterators draw from torch's RNG when created, after the checkpoint
            # is loaded; restoring at the first step keeps dropout identical to an uninterrupted run.
            states = checkpoint.get(RNG_STATES_KEY)
            if states is not None and "per_rank" in states:
                states = states["per_rank"][trainer.global_rank] if trainer.world_size == len(states["per_rank"]) \
                    else None  # another world size: the masks cannot be those of an uninterrupted run anyway
            self._pending_rng = states

        def on_validation_end(self, trainer, pl_module) -> None:
            self._validated_since_save = not trainer.sanity_checking

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self._pending_rng is not None:
                restore_rng_states(self._pending_rng)
                self._pending_rng = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            # Only where Lightning's restart logic resumes exactly: after the batch that completes
            # an optimiser step (RESTARTED_ON_TRAIN_BATCH_END), and not before a validation that
            # is due now or at the end of training (a restart there would skip that validation).
            step = trainer.global_step
            if trainer.datamodule.training_batches_taken % batches_per_step or step >= trainer.max_steps \
                    or step % val_check_steps == 0:
                return
            stop = trainer.strategy.reduce_boolean_decision(guard.received is not None, all=False)
            if stop or (every_validation and self._validated_since_save):
                self._save(trainer)
            if stop:
                raise RunPreempted(guard.signal_name if guard.received is not None else "a peer rank's signal",
                                   str(path), step)

        def _save(self, trainer) -> None:
            if trainer.is_global_zero:  # written beside it, fsynced, then renamed over the previous one
                with atomic_path(path) as tmp:
                    trainer.save_checkpoint(str(tmp), weights_only=False)  # the full training state
            else:  # the same collective call; only rank 0 writes
                trainer.save_checkpoint(str(path), weights_only=False)
            trainer.strategy.barrier("resume_checkpoint")
            self._validated_since_save = False

    return ResumeCheckpoint()


def capture_rng_states() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain values (loadable with ``weights_only``)."""
    import random

    import numpy as np
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(rng: dict) -> None:
    """Set Python, NumPy, torch (and CUDA) RNGs from :func:`capture_rng_states`' output."""
    import random

    import numpy as np
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def existing_resume_checkpoint(checkpoint_dir: Path) -> str | None:
    """``checkpoint_dir/resume.ckpt`` if the file exists, else None (see :func:`read_resume_checkpoint`)."""
    path = Path(checkpoint_dir) / RESUME_CHECKPOINT
    return str(path) if path.is_file() else None


def read_resume_checkpoint(path: str, run_id: str, data_fingerprint: str | None = None) -> int:
    """The optimiser step ``path`` was saved at, after checking that it can be loaded safely
    (``weights_only=True``: no code runs) and that it belongs to run ``run_id``, on data with
    ``data_fingerprint`` (when given), in the directory it lies in.

    Raises :class:`ResumeCheckpointError` naming the file and how to discard it.
    """
    discard = (f"Delete it to restart this run from the beginning (rm {path}), or restore a good copy; "
               "a relaunch then proceeds.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step = int(checkpoint["global_step"])
    except Exception as exc:  # truncated, not a checkpoint, or needing unsafe unpickling
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ResumeCheckpointError(f"cannot resume: {path} is corrupt, truncated or not a safe xlt_runner "
                                    f"checkpoint ({type(exc).__name__}: {reason}). {discard}") from None
    if not any(isinstance(section, dict) and TRAINING_BATCHES_KEY in section for section in checkpoint.values()):
        raise ResumeCheckpointError(f"cannot resume: {path} holds no training-data position (written by an "
                                    f"earlier xlt_runner that derived it from the step count). {discard}")
    saved_for = checkpoint.get(RUN_ID_KEY)
    if saved_for is not None and saved_for != run_id:
        raise ResumeCheckpointError(f"cannot resume: {path} was saved by run {saved_for}, not {run_id} "
                                    f"(a copied or moved run directory?). {discard}")
    saved_on = checkpoint.get(DATA_FINGERPRINT_KEY)
    if data_fingerprint is not None and saved_on is not None and saved_on != data_fingerprint:
        raise ResumeCheckpointError(f"cannot resume: {path} was trained on other benchmark data (fingerprint "
                                    f"{saved_on}, the data now {data_fingerprint}). {discard}")
    saved_in = checkpoint.get(CHECKPOINT_DIR_KEY)
    if saved_in is not None and saved_in != str(Path(path).parent.resolve()):
        raise ResumeCheckpointError(f"cannot resume: {path} was written in {saved_in}; its best-checkpoint "
                                    f"state points there (a moved or copied run directory). {discard}")
    return step
