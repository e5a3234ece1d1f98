"""Validation of a composed run config, above everything it checks.

:func:`validate` runs on every composed config (every sweep point) before any model or data
loads: the core sections' values (:func:`xlt_runner.config.check_values`), then each selected
component's own checks (the task kind, the benchmark, the method, the regime's stages), then the
language codes against the selected benchmark's language table when the benchmark knows it
without reading data (``language_table`` is a staticmethod; otherwise the codes are checked
against the data itself, by the CLI's preflight for local data and by the runner).
"""
from __future__ import annotations

import inspect
from typing import Any

from xlt_runner.config import ConfigError, check_values


def validate(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the key and what is valid."""
    from xlt_runner.data import BENCHMARKS
    from xlt_runner.methods import method_class
    from xlt_runner.stages import STAGES
    from xlt_runner.tasks import TASK_KINDS

    check_values(cfg)
    benchmark_cls = BENCHMARKS.get(cfg.benchmark.name)
    task_cls = TASK_KINDS.get(cfg.benchmark.task)
    task_cls.check_config(cfg)
    if hasattr(benchmark_cls, "check_config"):
        benchmark_cls.check_config(cfg)
    method_cls = method_class(cfg.method.family, task_cls.method_task_kind())
    method_cls.check_supported(task_cls.method_task_kind(), cfg.model.kind)
    method_cls.check_method_config(cfg.method)
    _check_train_data(cfg, method_cls)
    stages = list(cfg.regime.stages)
    if not list(cfg.languages.source) and method_cls.trains and "fit" in stages:
        raise ConfigError(f"languages.source=[] (languages={cfg.languages.name}) names no language to train on, but "
                          f"method={cfg.method.name} trains; list the source languages")
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"regime.stages={stages} {'names unknown stages ' + str(unknown) if unknown else 'is empty'}; "
                          f"stages are: {', '.join(STAGES)}")
    if "langid_probe" in stages and cfg.benchmark.task != "classification":
        raise ConfigError("regime stage langid_probe probes sentence representations of a classification method; "
                          f"benchmark={cfg.benchmark.name} is a {cfg.benchmark.task} benchmark")
    _check_language_codes(cfg, benchmark_cls)


def _check_train_data(cfg: Any, method_cls: Any) -> None:
    """``train_data`` (:func:`~xlt_runner.data.sft_data.check_train_data`) and whether the method
    trains on it: ``method_cls.train_data_modes`` lists the modes it takes (none: it refuses
    ``train_data``); a method that needs it (``requires_train_data``) refuses its absence."""
    from xlt_runner.data.sft_data import check_train_data
    modes = getattr(method_cls, "train_data_modes", ())
    if cfg.get("train_data") is None:
        if getattr(method_cls, "requires_train_data", False):
            raise ConfigError(f"method={cfg.method.name} trains on two SFT datasets: choose train_data= (e.g. "
                              f"train_data=gsm8k_mkqa) with train_data.mode in {list(modes)}")
        return
    if not method_cls.trains or "fit" not in cfg.regime.stages:
        raise ConfigError(f"train_data={cfg.train_data.name} is set but method={cfg.method.name} does not train "
                          "here; set train_data=null")
    if cfg.train_data.mode not in modes:
        raise ConfigError(f"method={cfg.method.name} does not train with train_data.mode={cfg.train_data.mode}; "
                          f"it takes {' or '.join(modes) or 'no train_data (set train_data=null)'}")
    check_train_data(cfg)


def _check_language_codes(cfg: Any, benchmark_cls: Any) -> None:
    """Every entry of the language lists is a code or set of the benchmark's own table."""
    if not isinstance(inspect.getattr_static(benchmark_cls, "language_table", None), staticmethod):
        return
    table = benchmark_cls.language_table()
    lists = {f"languages.{k}": list(cfg.languages[k]) for k in ("source", "targets", "groups")}
    if "langid_probe" in cfg.regime.stages:
        lists["regime.probe_languages"] = list(cfg.regime.probe_languages)
    for key, entries in lists.items():
        if not entries and key == "languages.source":
            continue  # nothing to train on: refused in validate() for a method that trains
        if not entries:
            raise ConfigError(f"{key} is empty; give language codes or set names ({', '.join(table.named_sets())})")
        for entry in entries:
            try:
                table.resolve([entry])
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc} (benchmark={cfg.benchmark.name})") from None
