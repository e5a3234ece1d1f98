"""Task kinds: what a benchmark's ``task`` (``classification``, ``generation``) asks of a run.

A task kind owns its data module, its metrics as :class:`~xlt_runner.metrics.spec.MetricSpec` s
(the record stores them, so reports and dashboards take names, directions and scaling from
there), the dev metrics that may pick the best checkpoint (``monitors``: name -> ``min``/``max``;
the first is the default of ``trainer.monitor``), the model kinds it can run on, and what its
test stage leaves besides per-language metrics (e.g. ``predictions.jsonl``). It registers
itself: ``@TASK_KINDS.register("generation")`` on the class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from xlt_runner.config import ConfigError
from xlt_runner.metrics.spec import MetricSpec
from xlt_runner.registry import Registry

TASK_KINDS: Registry = Registry("task kind", "benchmark.task", ("xlt_runner.tasks",), name_attribute="name")


class TaskKind:
    """One task kind, bound to a run's config, benchmark and backbone (tokenizer)."""

    name: ClassVar[str]  # set by TASK_KINDS.register
    metrics: ClassVar[tuple[MetricSpec, ...]]
    primary_metric: ClassVar[str]
    monitors: ClassVar[dict[str, str]]  # dev metric -> "min" | "max"; the first is the default
    model_kinds: ClassVar[tuple[str, ...]]
    methods_of: ClassVar[str | None] = None  # the task kind whose methods run this one; None: its own

    @classmethod
    def method_task_kind(cls) -> str:
        """The task kind methods are registered and checked for (``math`` runs the ``generation`` methods)."""
        return cls.methods_of or cls.name

    def __init__(self, cfg: DictConfig, benchmark: Any, backbone: Any) -> None:
        self.cfg, self.benchmark, self.backbone = cfg, benchmark, backbone

    # ----------------------------------------------------------- before any model loads
    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Refuse what this task kind cannot run; raises ConfigError naming the key."""
        if cfg.model.kind not in cls.model_kinds:
            raise ConfigError(f"benchmark={cfg.benchmark.name} is a {cls.name} benchmark, which runs on "
                              f"{' or '.join(cls.model_kinds)} models; model={cfg.model.name} is {_article(cfg.model.kind)} {cfg.model.kind} "
                              f"(model.kind). Choose another model= or benchmark=")
        monitor = cfg.trainer.monitor
        if monitor is not None and monitor not in cls.monitors:
            raise ConfigError(f"trainer.monitor={monitor!r} is not a dev metric of {cls.name} benchmarks; choose one of: "
                              f"{', '.join(cls.monitors)} (or null: {next(iter(cls.monitors))})")

    @classmethod
    def monitor(cls, cfg: DictConfig) -> tuple[str, str]:
        """``(dev metric, mode)`` that picks the best checkpoint: ``trainer.monitor`` or the default."""
        name = cfg.trainer.monitor if cfg.trainer.monitor is not None else next(iter(cls.monitors))
        return name, cls.monitors[name]

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in cls.metrics)

    # ---------------------------------------------------------------------- in the run
    def datamodule(self, source: list[str], targets: list[str], max_steps: int):
        """The data module: train on ``source``, validate on their dev split, test on ``targets``."""
        raise NotImplementedError

    def method_task(self, datamodule, source: list[str]):
        """What the method is told about the task (labels, evaluation languages, ...)."""
        raise NotImplementedError

    def subsample(self, datamodule) -> dict | None:
        """``record["subsample"]`` when an example cap took a sample (how it was drawn, the caps and
        the ids kept), else None."""
        if not datamodule.subsampled_ids:
            return None
        b = self.cfg.benchmark
        return {**self.subsample_rule(), "max_train_examples_per_language": b.max_train_examples_per_language,
                "max_eval_examples_per_language": b.max_eval_examples_per_language,
                "example_ids": datamodule.subsampled_ids}

    def subsample_rule(self) -> dict:
        """How this kind's data module draws a capped sample (for the record)."""
        raise NotImplementedError

    def run_test(self, trainer, method, datamodule) -> None:
        """Evaluate ``method`` on every target language's test split (``trainer.test``)."""
        trainer.test(method, datamodule=datamodule, verbose=False)

    def test_summary(self, method) -> dict | None:
        """What the record keeps of the test stage besides results (``record.rag`` for rag runs), or None."""
        return None

    def test_results(self, method) -> dict[str, dict]:
        """Per-language results of the test just run: language -> metric -> value (and ``n``)."""
        return method.test_results

    def write_test_outputs(self, method, run_dir: Path) -> dict[str, str]:
        """Files the test stage leaves besides the metrics; returns ``{what: path}`` for the record."""
        return {}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
