"""The stages a regime is made of (``regime.stages``), run in order on one :class:`RunContext`.

``fit``: train on the source languages, keeping the best source-dev checkpoint (a method that
does not train, e.g. ``prompting``, records ``training: null``). ``test``: evaluate that
checkpoint on every target language's test split and record per-language results and group
means. ``target_fit``: per target language, restart from the source-trained weights, tune on
its train split and test again (the results become supervised, not zero-shot). ``langid_probe``:
a linear language-ID probe on the frozen representations. Adding a stage is one function here
and its name in :data:`STAGES`.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from xlt_runner.metrics.spec import LANGID_RECALL
from xlt_runner.results.record import RunRecord


@dataclass
class RunContext:
    """What the stages of one run share. ``record`` is the run record being filled."""
    cfg: DictConfig
    run_dir: Path
    record: RunRecord
    guard: Any
    task_kind: Any  # a bound xlt_runner.tasks.TaskKind
    table: Any  # the benchmark's LanguageTable
    source: list[str]
    targets: list[str]
    members: dict[str, list[str]]
    datamodule: Any
    method: Any
    loggers: list
    probe_languages: list[str] = field(default_factory=list)
    trainer: Any = None  # the trainer of the last fit (or of the test, for a method that does not train)
    best_path: Path | None = None  # the best weights of the last fit
    #: A file holding exactly the method's weights as they are now (then saved by linking it), or None
    weights_file: Path | None = None


def fit(ctx: RunContext) -> None:
    from xlt_runner.runner import Patience, fit_stage
    cfg, record = ctx.cfg, ctx.record
    t0 = time.perf_counter()
    if not ctx.method.trains:
        record.best, record.training = None, None
        print(f"[xlt-run] method={cfg.method.name} does not train: testing the model as loaded")
        return
    ctx.trainer, ctx.best_path, record.best, record.training = fit_stage(
        cfg, ctx.task_kind, ctx.method, ctx.datamodule, ctx.run_dir / "checkpoints", ctx.loggers,
        max_steps=cfg.trainer.max_steps, val_check_interval=cfg.trainer.val_check_interval,
        patience=Patience(cfg.trainer.early_stopping_patience, cfg.trainer.early_stopping_patience_epochs),
        guard=ctx.guard, record=record)
    record.timings["train_s"] = time.perf_counter() - t0


def test(ctx: RunContext) -> None:
    from xlt_runner.data.languages import withhold_groups_with_source_languages
    from xlt_runner.runner import build_trainer
    t0 = time.perf_counter()
    trainer = ctx.trainer or build_trainer(ctx.cfg, ctx.run_dir, ctx.loggers, [], max_steps=1, val_check_interval=1,
                                           manual_optimization=False)
    if ctx.best_path is not None:
        ctx.method.restore_trainable(ctx.best_path)
        ctx.weights_file = ctx.best_path
    ctx.task_kind.run_test(trainer, ctx.method, ctx.datamodule)
    ctx.trainer = trainer
    per_language = _complete_results(ctx.task_kind.test_results(ctx.method), ctx.targets)
    record = ctx.record
    record.timings["test_s"] = time.perf_counter() - t0
    summary = ctx.task_kind.test_summary(ctx.method)
    if summary is not None:
        record.rag = summary
    if trainer.is_global_zero:
        record.outputs.update(ctx.task_kind.write_test_outputs(ctx.method, ctx.run_dir))
    subsample = ctx.task_kind.subsample(ctx.datamodule)
    if subsample is not None:
        record.subsample = subsample
    record.per_language = per_language
    groups = group_means(per_language, ctx.members, ctx.task_kind.metric_names())
    record.groups, record.groups_not_reported = withhold_groups_with_source_languages(
        groups, ctx.members, ctx.source)


def target_fit(ctx: RunContext) -> None:
    """Per target language: restart from the source-trained weights, tune on its train split,
    keep the best on its dev split, test on its test split. The record's ``per_language`` and
    groups become these supervised scores (the zero-shot ones move to ``zero_shot_per_language``),
    and ``target_phases[lang]`` holds each phase's best checkpoint and training outcome."""
    from xlt_runner.runner import Patience, fit_stage
    cfg, method, record, r = ctx.cfg, ctx.method, ctx.record, ctx.cfg.regime
    t0 = time.perf_counter()
    source_state = {k: v.detach().clone() for k, v in method.trainable_state_dict().items()}
    source_weights_file, ctx.weights_file = ctx.weights_file, None
    source_task = method.task
    results: dict[str, dict] = {}
    phases: dict[str, dict] = {}
    for i, lang in enumerate(ctx.targets):
        print(f"[xlt-run] target_fit {i + 1}/{len(ctx.targets)}: tuning on {lang}")
        method.load_state_dict(source_state, strict=False)
        dm = ctx.task_kind.datamodule([lang], [lang], r.target_max_steps)
        method.task = ctx.task_kind.method_task(dm, [lang])
        method.reset_metrics()
        method.enter_target_phase()
        method.warmup_ratio = r.target_warmup_ratio
        trainer, best_path, best, training = fit_stage(
            cfg, ctx.task_kind, method, dm, ctx.run_dir / "targets" / lang, [], max_steps=r.target_max_steps,
            val_check_interval=r.target_val_check_interval,
            patience=Patience(r.target_early_stopping_patience, r.target_early_stopping_patience_epochs))
        if best_path is not None:
            method.restore_trainable(best_path)
        trainer.test(method, datamodule=dm, verbose=False)
        results[lang] = ctx.task_kind.test_results(method)[lang]
        phases[lang] = {"best": best, "training": training}
        shutil.rmtree(ctx.run_dir / "targets" / lang / "checkpoints", ignore_errors=True)
    method.load_state_dict(source_state, strict=False)
    ctx.weights_file = source_weights_file
    method.warmup_ratio = None
    method.task = source_task
    method.reset_metrics()
    record.zero_shot_per_language = record.per_language
    record.per_language = _complete_results(results, ctx.targets)
    record.target_phases = phases
    record.groups = group_means(record.per_language, ctx.members, ctx.task_kind.metric_names())
    record.groups_not_reported = {}  # supervised in every language: no group is zero-shot
    record.timings["target_fit_s"] = time.perf_counter() - t0


#: Report groups of the probe: ``langid`` over every probe language, ``langid:<group>`` per report group.
PROBE_GROUP = "langid"


def langid_probe(ctx: RunContext) -> None:
    from xlt_runner.probe import language_id_probe
    cfg, record = ctx.cfg, ctx.record
    record.probe = language_id_probe(ctx.method, ctx.task_kind.benchmark, ctx.task_kind.backbone.tokenizer,
                                        ctx.probe_languages, cfg)
    recall = {lang: {LANGID_RECALL.name: value} for lang, value in record.probe["per_language_recall"].items()}
    probe_members = {PROBE_GROUP: list(ctx.probe_languages)}
    probe_members.update({f"{PROBE_GROUP}:{group}": ctx.table.resolve([group], ctx.probe_languages)
                          for group in cfg.languages.groups})
    probe_groups = group_means(recall, probe_members, (LANGID_RECALL.name,))
    probe_groups[PROBE_GROUP][LANGID_RECALL.name] = record.probe["accuracy"]  # overall probe accuracy
    record.groups.update(probe_groups)
    for group in probe_members:
        if group not in probe_groups:
            record.groups_not_reported[group] = "none of its languages is among the probe languages (regime.probe_languages)"
    record.metrics.append(LANGID_RECALL.to_dict())


STAGES: dict[str, Callable[[RunContext], None]] = {
    "fit": fit, "test": test, "target_fit": target_fit, "langid_probe": langid_probe}


def group_means(per_language: dict[str, dict[str, float]], members: dict[str, list[str]],
                metrics: tuple[str, ...]) -> dict[str, dict]:
    """Unweighted means of ``metrics`` over each group's languages that were evaluated (a
    language without a value for a metric, e.g. NaN-free absence, is left out of that mean)."""
    import numpy as np
    groups = {}
    for group, codes in members.items():
        present = [per_language[c] for c in codes if c in per_language]
        if present:
            groups[group] = {**{m: float(np.mean([r[m] for r in present if r.get(m) is not None]))
                                for m in metrics if any(r.get(m) is not None for r in present)},
                             "n_languages": len(present)}
    return groups


def _complete_results(results: dict[str, dict], targets: list[str]) -> dict[str, dict]:
    """``results`` of the target languages in their order; raises if any target has none."""
    missing = [lang for lang in targets if lang not in results]
    if missing:
        raise RuntimeError(f"no test results for {len(missing)} target languages, e.g. {missing[:5]}")
    return {lang: results[lang] for lang in targets}
