"""One zero-shot cross-lingual transfer run, from a composed config to ``results.json``.

``run(cfg, run_dir)``: skip if the directory already holds complete results computed on
the same data (unless ``overwrite``), else train on the source languages, keep the
checkpoint that is best on the source dev split, evaluate it on the test split of every
target language in the same process, and write the record. The record says ``running``
while the run is under way; ``failed`` (with the traceback), ``preempted`` or
``interrupted`` if it ended early; and ``complete`` only after every metric is in and the
training ran its whole step budget (or early stopping says why not: ``record["training"]``).

``overwrite=true`` over a complete result runs in ``<run_dir>/.rerun`` and replaces the old
result only once the new one is complete; a failed rerun leaves the old result in place.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xlt_runner.identity import run_id as compute_run_id
from xlt_runner.fileio import file_sha256, write_json_atomic, write_text_atomic
from xlt_runner.results.record import RESULTS_FILE, RunRecord, environment_info, read_record, write_per_language_csv

log = logging.getLogger("xlt_runner")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_record(cfg: DictConfig, overrides: list[str]) -> RunRecord:
    return RunRecord(run_id=compute_run_id(cfg), sweep_name=cfg.sweep_name, method=cfg.method.name,
                     model=cfg.model.name, benchmark=cfg.benchmark.name, languages=cfg.languages.name,
                     seed=int(cfg.seed), config=OmegaConf.to_container(cfg, resolve=True), overrides=list(overrides),
                     **environment_info(), started_at=_now(), host=os.uname().nodename, pid=os.getpid())


#: Where an ``overwrite=true`` rerun of a complete result runs until it completes (a dot-dir:
#: ``xlt-report`` does not read it).
STAGING_DIR = ".rerun"
#: The best weights of a fit, in its checkpoint directory (see :func:`build_checkpoint_callback`).
BEST_WEIGHTS_FILE = "best.safetensors"
#: The tested weights of a run, in its directory (``method.init_from`` takes it).
METHOD_WEIGHTS_FILE = "method_weights.safetensors"
#: Which parameters trained (name, shape, count per line), in the run directory.
TRAINABLE_PARAMETERS_FILE = "trainable_parameters.tsv"


class IncompleteTrainingError(RuntimeError):
    """Training ended before its step budget without early stopping: no result may be recorded."""


class DataChangedError(RuntimeError):
    """A complete result was computed on other data than the benchmark now holds."""


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Execute one run into ``run_dir``; returns its record. Raises on failure (record says so).

    Holds ``run_dir/.lock`` for the whole run (another process holding it: skipped, returns
    ``{"status": "locked", "skipped": True}``). Under DDP every rank calls this; only global
    rank 0 takes the lock and writes the record. A caught SIGTERM/SIGUSR1/SIGUSR2/SIGINT
    ends the run with a ``preempted`` (SIGINT: ``interrupted``) record and
    :class:`~xlt_runner.resume.RunPreempted`; a relaunch resumes from ``checkpoints/resume.ckpt``.
    A complete record is reused only if its data fingerprint equals the benchmark's now
    (else :class:`DataChangedError`).
    """
    from xlt_runner.resume import RunLock, process_rank

    run_dir = Path(run_dir)
    writer = process_rank() == 0
    lock = RunLock(run_dir) if writer else None
    if lock is not None and not lock.acquire():
        print(f"[xlt-run] skip: {run_dir} is locked by another process running it ({lock.path})")
        return {"status": "locked", "skipped": True, "run_dir": str(run_dir)}
    try:
        if writer:
            promote_staged_rerun(run_dir)  # finishes a replacement that a crash interrupted
        existing = read_record(run_dir)
        complete = existing is not None and existing.get("status") == "complete"
        if complete and not cfg.overwrite:
            check_same_data(cfg, existing, run_dir)
            log.info("skipping %s: results are complete in %s (set overwrite=true to rerun)", existing["run_id"], run_dir)
            print(f"[xlt-run] skip: {run_dir / RESULTS_FILE} is complete (overwrite=true reruns it)")
            existing["skipped"] = True
            return existing
        if complete:
            print(f"[xlt-run] overwrite: rerunning in {run_dir / STAGING_DIR}; the complete result in {run_dir} "
                  "stays until the rerun completes")
            try:
                record = attempt(cfg, run_dir / STAGING_DIR, overrides or [], writer)
            except BaseException:
                print(f"[xlt-run] the rerun did not complete (its record: {run_dir / STAGING_DIR / RESULTS_FILE}); "
                      f"{run_dir} still holds the complete result", file=sys.stderr)
                raise
            if writer:
                promote_staged_rerun(run_dir)
            return record
        return attempt(cfg, run_dir, overrides or [], writer)
    finally:
        if lock is not None:
            lock.release()


def attempt(cfg: DictConfig, run_dir: Path, overrides: list[str], writer: bool) -> dict[str, Any]:
    """One attempt at the run in ``run_dir`` (resuming from ``checkpoints/resume.ckpt`` if there)."""
    from xlt_runner.resume import RESUME_CHECKPOINT, PreemptionGuard, RunPreempted

    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_record(run_dir)
    record = new_record(cfg, overrides)
    if previous is not None and previous.get("status") in ("preempted", "interrupted", "failed", "running"):
        record.attempt = int(previous.get("attempt", 1)) + 1
    write = (lambda: write_json_atomic(run_dir / RESULTS_FILE, record.to_json())) if writer else (lambda: None)
    write()
    t0 = time.perf_counter()
    wandb_logger = None
    with PreemptionGuard() as guard:
        try:
            wandb_logger = _execute(cfg, run_dir, record, t0, guard)
        except BaseException as exc:  # record every failure, including KeyboardInterrupt, then re-raise
            if isinstance(exc, RunPreempted):
                exc = name_resume_checkpoint(exc, run_dir / "checkpoints" / RESUME_CHECKPOINT, record.run_id)
            status = ("interrupted" if isinstance(exc, KeyboardInterrupt) or getattr(exc, "interrupted", False)
                      else "preempted" if isinstance(exc, RunPreempted) else "failed")
            record.status, record.finished_at = status, _now()
            record.error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
            record.timings["total_s"] = time.perf_counter() - t0
            write()
            _finish_wandb(wandb_logger, exit_code=1)
            if status == "preempted":
                guard.request_requeue()
            if isinstance(exc, RunPreempted):
                raise exc from None
            raise
        record.timings["total_s"] = time.perf_counter() - t0
        record.status, record.finished_at = "complete", _now()
        if writer:
            write_per_language_csv(run_dir, record.to_json())
            write()
            (run_dir / "checkpoints" / RESUME_CHECKPOINT).unlink(missing_ok=True)
        _finish_wandb(wandb_logger, exit_code=0)
    return record.to_json()


def name_resume_checkpoint(exc, path: Path, run_id: str):
    """``exc`` naming the resumable checkpoint on disk when the stop itself wrote none."""
    from xlt_runner.resume import ResumeCheckpointError, read_resume_checkpoint
    if exc.checkpoint is not None or not path.is_file():
        return exc
    try:
        return exc.with_checkpoint(str(path), read_resume_checkpoint(str(path), run_id))
    except ResumeCheckpointError:
        return exc


def promote_staged_rerun(run_dir: Path) -> None:
    """Move a *complete* rerun from ``run_dir/.rerun`` over the old result: every artefact
    first, ``results.json`` last (atomic rename), then drop the staging directory.

    Idempotent: a crash part-way leaves the complete staged record in place, and the next
    call (every run starts with one) finishes the move. A staged rerun that is not
    complete is left alone (a relaunch with ``overwrite=true`` resumes it).
    """
    staging = run_dir / STAGING_DIR
    staged = read_record(staging) if staging.is_dir() else None
    if staged is None or staged.get("status") != "complete":
        return
    for entry in sorted(staging.iterdir()):
        if entry.name == RESULTS_FILE:
            continue
        target = run_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(entry, target)
    os.replace(staging / RESULTS_FILE, run_dir / RESULTS_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"[xlt-run] replaced the result in {run_dir} with the completed rerun")


def data_fingerprint(cfg: DictConfig, benchmark) -> str:
    """The content fingerprint of a run's data: the benchmark's, combined with the training
    datasets' when ``train_data`` is set, or with the corpus' on a rag benchmark."""
    from xlt_runner.data.sft_data import train_data_fingerprint
    train = train_data_fingerprint(cfg, cfg.paths.cache_dir)
    corpus = cfg.benchmark.get("corpus")
    if corpus is not None:  # rag benchmarks: the passages retrieved from are data too
        from xlt_runner.rag.corpus import load_corpus
        return hashlib.sha256(f"{benchmark.fingerprint()}|corpus:{load_corpus(corpus).fingerprint}".encode()).hexdigest()
    if train is None:
        return benchmark.fingerprint()
    return hashlib.sha256(f"{benchmark.fingerprint()}|train_data:{train}".encode()).hexdigest()


def check_same_data(cfg: DictConfig, record: dict[str, Any], run_dir: Path) -> None:
    """Raise :class:`DataChangedError` if ``record`` was computed on other benchmark data than
    ``cfg.benchmark`` now points at (content fingerprint; paths do not matter)."""
    from xlt_runner.data import build_benchmark
    recorded = record.get("data_fingerprint")
    if recorded is None:
        print(f"[xlt-run] warning: {run_dir / RESULTS_FILE} predates data fingerprints; "
              "reusing it without checking its data", file=sys.stderr)
        return
    current = data_fingerprint(cfg, build_benchmark(cfg.benchmark, cfg.paths.cache_dir))
    if current != recorded:
        raise DataChangedError(
            f"{run_dir / RESULTS_FILE} is complete but was computed on other data: benchmark "
            f"{cfg.benchmark.name} fingerprint {recorded} then, {current} now "
            f"(benchmark.data_dir={cfg.benchmark.data_dir}). Rerun it on the current data with overwrite=true "
            "(the old result stays until the rerun completes), or write to another paths.output_root / sweep_name.")


def _execute(cfg: DictConfig, run_dir: Path, record: RunRecord, t0: float, guard=None):
    """The body of a run: load the benchmark, languages, model and method, then run the regime's
    stages in order (:mod:`xlt_runner.stages`); fills ``record`` in place, returns the wandb logger."""
    import pytorch_lightning as pl

    from xlt_runner.data import build_benchmark, data_location
    from xlt_runner.data.languages import LanguageTable
    from xlt_runner.methods import method_class
    from xlt_runner.methods.base import resolve_init_from
    from xlt_runner.models import load_backbone
    from xlt_runner.resume import process_rank
    from xlt_runner.stages import STAGES, RunContext
    from xlt_runner.tasks import TASK_KINDS

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    benchmark = build_benchmark(cfg.benchmark, cfg.paths.cache_dir)
    record.data_fingerprint = data_fingerprint(cfg, benchmark)
    table = LanguageTable.for_benchmark(benchmark)
    available = benchmark.languages()
    location = data_location(benchmark)
    source, targets, members = table.select_run_languages(cfg.languages, available, location)
    probe_languages = (table.resolve_in_data("regime.probe_languages", list(cfg.regime.probe_languages),
                                             available, location)
                       if "langid_probe" in cfg.regime.stages else [])  # checked before training
    task_cls = TASK_KINDS.get(cfg.benchmark.task)
    method_cls = method_class(cfg.method.family, task_cls.method_task_kind())
    record.source_languages, record.target_languages, record.group_members = source, targets, members
    record.regime, record.task, record.method_family = cfg.regime.name, task_cls.name, cfg.method.family
    record.metrics = [spec.to_dict() for spec in task_cls.metrics]
    record.primary_metric = task_cls.primary_metric

    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
    task_kind = task_cls(cfg, benchmark, backbone)
    datamodule = task_kind.datamodule(source, targets, cfg.trainer.max_steps)
    if hasattr(datamodule, "describe"):
        record.train_data = datamodule.describe()
    method = method_cls(cfg.method, backbone, task_kind.method_task(datamodule, source), total_steps=cfg.trainer.max_steps)
    record.pooling = getattr(method, "pooling", None)
    if cfg.method.init_from:
        init_path = resolve_init_from(cfg.method.init_from)
        method.load_trainable(str(init_path))
        record.init_from = {"path": str(init_path.resolve()), "sha256": file_sha256(init_path)}
    record.params = method.parameter_counts()
    record.outputs = {}
    if process_rank() == 0:
        write_text_atomic(run_dir / TRAINABLE_PARAMETERS_FILE, method.trainable_parameter_table())
        record.outputs["trainable_parameters"] = TRAINABLE_PARAMETERS_FILE
    merge = getattr(method, "merge_record", None)  # method=layer_swap: the experts it merged, what came from where
    if merge is not None:
        record.merge = merge.summary()
        if process_rank() == 0:
            write_json_atomic(run_dir / record.merge["file"], merge.to_json())
            record.outputs["merge"] = record.merge["file"]
    print(f"[xlt-run] {record.run_id}: {cfg.method.name} on {cfg.model.name} ({backbone.source}); "
          f"regime {cfg.regime.name} ({' > '.join(cfg.regime.stages)}); {len(source)} source, {len(targets)} target "
          f"languages; trainable {record.params['trainable']:,} of {record.params['total']:,} parameters")

    loggers, wandb_logger = build_loggers(cfg, run_dir, record.run_id, record.config)
    record.timings["setup_s"] = time.perf_counter() - t0
    ctx = RunContext(cfg=cfg, run_dir=run_dir, record=record, guard=guard, task_kind=task_kind, table=table,
                     source=source, targets=targets, members=members, datamodule=datamodule, method=method,
                     loggers=loggers, probe_languages=probe_languages)
    for stage in cfg.regime.stages:
        STAGES[stage](ctx)
    if ctx.trainer is None or ctx.trainer.is_global_zero:
        save_method_weights(method, run_dir / METHOD_WEIGHTS_FILE, ctx.weights_file)
        if getattr(cfg.method, "export_pretrained", False):
            method.export_pretrained(run_dir / "model")
            record.outputs["model"] = "model"
    if wandb_logger is not None:
        log_wandb_results(wandb_logger, record.to_json())
    print_summary(record.to_json())
    return wandb_logger


@dataclass(frozen=True)
class Patience:
    """Early-stopping patience of one training phase: ``evaluations`` or ``epochs`` of its
    training set (at most one is set; neither: no early stopping)."""
    evaluations: int | None = None
    epochs: float | None = None


def fit_stage(cfg: DictConfig, task_kind, method, datamodule, checkpoint_dir: Path, loggers: list, *, max_steps: int,
              val_check_interval: int, patience: Patience, guard=None, record: RunRecord | None = None):
    """Train for ``max_steps``, validating every ``val_check_interval`` steps on the source dev
    split; the dev metric that picks the best checkpoint and drives early stopping is
    ``task_kind.monitor(cfg)``. Returns the trainer, the best weights' path (a :class:`~pathlib.Path`, None if no validation ran), ``{"step", "monitor", "mode", "score"}``
    and ``{"max_steps", "trained_steps", "stop_reason", "early_stopping"}`` (the rule as applied, or None).

    Raises :class:`IncompleteTrainingError` if training ended short of ``max_steps`` without
    early stopping. With a :class:`~xlt_runner.resume.PreemptionGuard`, ``checkpoint_dir/resume.ckpt``
    is written when a signal is caught (then ``RunPreempted``) and after every validation
    (``trainer.resume_checkpoint_every_validation``), and an existing one is resumed from
    (noted in ``record.resumed_from_step``).
    """
    from xlt_runner.resume import RESUME_CHECKPOINT, RunPreempted, existing_resume_checkpoint
    from xlt_runner.resume import read_resume_checkpoint, resume_checkpoint_callback

    method.total_steps = max_steps
    method.accumulate_grad_batches = cfg.trainer.accumulate_grad_batches
    method.gradient_clip_val = cfg.trainer.gradient_clip_val
    monitor, mode = task_kind.monitor(cfg)
    checkpoint = build_checkpoint_callback(checkpoint_dir, monitor, mode)
    callbacks = [checkpoint, *build_callbacks(cfg, method, monitor, mode, max_steps, val_check_interval, patience)]
    resume_from = None
    if guard is not None:
        run_id = record.run_id if record is not None else compute_run_id(cfg)
        data_fingerprint = record.data_fingerprint if record is not None else None
        callbacks.append(resume_checkpoint_callback(guard, checkpoint_dir / RESUME_CHECKPOINT, run_id, data_fingerprint,
                                                    val_check_steps=max(1, min(val_check_interval, max_steps)),
                                                    batches_per_step=cfg.trainer.accumulate_grad_batches,
                                                    every_validation=cfg.trainer.resume_checkpoint_every_validation))
        resume_from = existing_resume_checkpoint(checkpoint_dir)
        if resume_from:
            step = read_resume_checkpoint(resume_from, run_id, data_fingerprint)
            if record is not None:
                record.resumed_from_step = step
            print(f"[xlt-run] resuming from {resume_from} (step {step} of {max_steps})")
    trainer = build_trainer(cfg, checkpoint_dir.parent, loggers, callbacks, max_steps, val_check_interval,
                            manual_optimization=not method.automatic_optimization)
    if guard is not None:
        # The runner owns SIGTERM/SIGUSR1/SIGINT: Lightning's handlers would stop mid-validation
        # (SIGTERM) or write their own hpc checkpoint and requeue (SIGUSR1 under SLURM).
        trainer._signal_connector.register_signal_handlers = lambda: None
    trainer.fit(method, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    if guard is not None and guard.received is not None:  # caught after the last step boundary
        raise RunPreempted(guard.signal_name, None)
    training = training_outcome(trainer, callbacks, max_steps)
    best_path = checkpoint.saved
    best = best_checkpoint_facts(checkpoint, best_path) if best_path else None
    return trainer, best_path, best, training


def save_method_weights(method, path: Path, same_as: Path | None) -> None:
    """Write the method's trainable weights to ``path``; when ``same_as`` already holds exactly
    them (the best weights a fit wrote and the test loaded), link it instead, so a whole model is
    written once."""
    if same_as is None:
        method.save_trainable(path)
        return
    tmp = path.with_name(f".{path.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(same_as, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(same_as, tmp)
    os.replace(tmp, path)


def best_checkpoint_facts(best_weights, path: Path) -> dict[str, Any]:
    """``{"step", "monitor", "mode", "score"}`` of the file that will be tested, read from the
    file's own header.

    They can differ from the callback's: an attempt killed right after saving a new best, whose
    validation the resumed attempt did not reproduce exactly (non-deterministic GPU kernels),
    leaves that file behind. The record then describes the weights actually tested, with a warning.
    """
    from xlt_runner.callbacks import read_best_facts
    facts = read_best_facts(path)
    current = best_weights.best_score
    if current is not None and facts["score"] != current:
        print(f"[xlt-run] warning: {path} was saved by an earlier attempt with {facts['monitor']}="
              f"{facts['score']:.6g}; the resumed attempt's best was {current:.6g}. The record describes the "
              "file that is tested.", file=sys.stderr)
    return facts


def training_outcome(trainer, callbacks: list, max_steps: int) -> dict[str, Any]:
    """``{"max_steps", "trained_steps", "stop_reason", "early_stopping"}`` after ``trainer.fit``;
    raises :class:`IncompleteTrainingError` when fewer steps ran and early stopping did not stop it."""
    from xlt_runner.callbacks import DelayedEarlyStopping
    trained = int(trainer.global_step)
    stopper = next((c for c in callbacks if isinstance(c, DelayedEarlyStopping)), None)
    outcome = {"max_steps": max_steps, "trained_steps": trained, "stop_reason": "max_steps",
               "early_stopping": stopper.describe() if stopper is not None else None}
    if trained >= max_steps:
        return outcome
    if stopper is not None and stopper.stopped_step is not None:
        outcome["stop_reason"] = stopper.stop_reason()
        return outcome
    raise IncompleteTrainingError(
        f"training ended after {trained} of {max_steps} optimiser steps without early stopping; "
        "no result is recorded (a resumed run whose data loader or loop state disagree would do this). "
        "Relaunching resumes or restarts the run.")


# ------------------------------------------------------------------- Lightning parts
def build_trainer(cfg: DictConfig, root_dir: Path, loggers: list, callbacks: list, max_steps: int,
                  val_check_interval: int, *, manual_optimization: bool):
    """A trainer for one phase. Under manual optimisation (the method steps its own optimisers)
    Lightning refuses ``gradient_clip_val`` and ``accumulate_grad_batches``: the method applies
    ``trainer.gradient_clip_val`` and ``trainer.accumulate_grad_batches`` itself, and the trainer
    gets neither."""
    import pytorch_lightning as pl

    t = cfg.trainer
    accumulate = t.accumulate_grad_batches
    val_every = max(1, min(val_check_interval, max_steps)) * accumulate
    return pl.Trainer(
        default_root_dir=str(root_dir), max_steps=max_steps, max_epochs=1,  # one epoch = the whole step budget
        val_check_interval=val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        accumulate_grad_batches=1 if manual_optimization else accumulate,
        gradient_clip_val=None if manual_optimization else t.gradient_clip_val, precision=t.precision,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        use_distributed_sampler=False,  # the data module shards by rank without padding
        deterministic=t.deterministic, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False,
        # the runner keeps its own checkpoints (best weights, resume.ckpt); Lightning's default
        # ModelCheckpoint would write another full training state at the end of every fit
        enable_checkpointing=False,
        logger=loggers or False, callbacks=callbacks)


def build_checkpoint_callback(dirpath: Path, monitor: str, mode: str):
    """Keeps ``dirpath/best.safetensors``: the weights of the best source-dev ``monitor`` so far
    (``mode`` min or max), replaced when a validation improves on it (:class:`~xlt_runner.callbacks.BestWeights`)."""
    from xlt_runner.callbacks import BestWeights
    return BestWeights(Path(dirpath) / BEST_WEIGHTS_FILE, monitor, mode)


def build_callbacks(cfg: DictConfig, method, monitor: str, mode: str, max_steps: int, val_check_interval: int,
                    patience: Patience) -> list:
    from pytorch_lightning.callbacks import RichProgressBar

    from xlt_runner.callbacks import DelayedEarlyStopping
    from xlt_runner.methods.base import resolve_warmup
    callbacks: list = []
    if patience.evaluations or patience.epochs:
        start = 0
        optim = cfg.method.optim
        if cfg.trainer.early_stopping_after_first_cycle and optim.schedule == "cosine_restarts":
            warmup = resolve_warmup(optim, max_steps, method.warmup_ratio)
            start = warmup + (max_steps - warmup) // max(1, optim.num_cycles)
        callbacks.append(DelayedEarlyStopping(
            start_step=start, monitor=monitor, mode=mode, patience=patience.evaluations or 1,
            patience_epochs=patience.epochs, val_check_steps=max(1, min(val_check_interval, max_steps))))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    return callbacks


def build_loggers(cfg: DictConfig, run_dir: Path, run_id: str, config: dict[str, Any]) -> tuple[list, Any]:
    from pytorch_lightning.loggers import CSVLogger
    loggers: list = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(str(run_dir), name="csv", version=""))
    wandb_logger = None
    w = cfg.logger.wandb
    if w.enabled and w.mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger
        tags = list(w.tags) + [f"model:{cfg.model.name}", f"method:{cfg.method.name}",
                               f"benchmark:{cfg.benchmark.name}", f"source:{cfg.languages.name}"]
        wandb_logger = WandbLogger(project=w.project, entity=w.entity, group=w.group or cfg.sweep_name,
                                   name=run_id, id=run_id, save_dir=str(run_dir),
                                   mode=w.mode, tags=tags, resume="allow", config=config)
        loggers.append(wandb_logger)
    return loggers, wandb_logger


def log_wandb_results(wandb_logger, record: dict[str, Any]) -> None:
    """Per-language table and group summary, every metric the record's specs name."""
    metrics = [spec["name"] for spec in record["metrics"]]
    per_language_metrics = [m for m in metrics if any(m in r for r in record["per_language"].values())]
    data = [[lang, *[r.get(m) for m in per_language_metrics], r["n"]] for lang, r in record["per_language"].items()]
    wandb_logger.log_table(key="per_language", columns=["language", *per_language_metrics, "n"], data=data)
    summary = {f"group/{g}/{m}": v[m] for g, v in record["groups"].items() for m in metrics if m in v}
    summary.update({f"params/{k}": v for k, v in record["params"].items()})
    wandb_logger.experiment.summary.update(summary)


def _finish_wandb(wandb_logger, exit_code: int) -> None:
    if wandb_logger is not None:
        try:
            wandb_logger.experiment.finish(exit_code=exit_code)
        except Exception as exc:  # logging must never turn a finished run into a failure
            print(f"[xlt-run] warning: wandb finish failed: {exc}", file=sys.stderr)


def print_summary(record: dict[str, Any]) -> None:
    """One line per metric that groups carry: ``group value`` (×100 for percentages; ↓ = lower is better)."""
    from xlt_runner.metrics.spec import MetricSpec
    for spec in map(MetricSpec.from_dict, record["metrics"]):
        parts = [f"{g} {spec.display(v[spec.name]):.1f}" if spec.percent else f"{g} {v[spec.name]:.4g}"
                 for g, v in record["groups"].items() if spec.name in v]
        if not parts:
            continue
        unit = " (%)" if spec.percent else ""
        arrow = "" if spec.higher_is_better else " (lower is better)"
        print(f"[xlt-run] {record['run_id']}: test {spec.name}{arrow} by group{unit}: {', '.join(parts)}")
    if record.get("groups_not_reported"):
        print(f"[xlt-run] {record['run_id']}: not reported: {', '.join(record['groups_not_reported'])}")
