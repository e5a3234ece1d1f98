"""Command-line entry points: ``xlt-run`` (the Hydra app) and ``xlt-report``.

``xlt-run`` first composes and validates the configuration of every job the command line
asks for (every sweep point; composition is cached by shape, see composition.py), so a
typo in a 500-job sweep fails before any job starts or any model is loaded. Then Hydra
runs the job(s); a failed job of a multirun is recorded in its ``results.json`` and the
sweep goes on, and the command exits nonzero at the end if any job failed.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xlt_runner.composition import CONF_DIR, compose, register_components
from xlt_runner.config import ConfigError, unknown_key_message
from xlt_runner.data import BenchmarkDataError, build_benchmark, data_location
from xlt_runner.data.languages import LanguageTable
from xlt_runner.validation import validate

register_components()  # schemas of every method, benchmark and task kind, before Hydra composes

USER_ERROR_EXIT = 2
log = logging.getLogger("xlt_runner")

# Flags after which Hydra does not run a job; preflight is skipped for them.
_INFO_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
               "--resolve", "-p", "--package"}
_FAILED_JOBS: list[str] = []
DETACH_FLAG = "--detach"  # xlt-run's own flag, not Hydra's
_LOCAL_LAUNCHERS = ("BasicLauncher", "LocalLauncher", "JoblibLauncher")  # run jobs on this machine


# ------------------------------------------------------------------------ preflight
def _info_requested(argv: list[str]) -> bool:
    return any(a.split("=", 1)[0] in _INFO_FLAGS for a in argv)


def _split_argv(argv: list[str]) -> tuple[list[str], str]:
    """Overrides on the command line and the config name (``--config-name``/``-cn``)."""
    overrides, config_name, skip = [], "config", False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--config-name", "-cn"):
            config_name, skip = argv[i + 1], True
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif arg in ("--config-dir", "-cd", "--config-path", "-cp", "--experimental-rerun"):
            skip = True
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
    return overrides, config_name


def _is_hydra(override) -> bool:
    return override.key_or_group.startswith("hydra") or override.get_key_element().startswith("hydra")


def _config_sweeps(parsed: list, config_name: str) -> list:
    """The sweeps declared in config (``hydra.sweeper.params``, e.g. by an experiment preset),
    as parsed overrides. They come with group choices (experiment=...) and hydra.*, so dotted
    keys are left out of this composition: they may fit only some options of a swept group."""
    settings = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
                else o.input_line for o in parsed if _is_hydra(o) or "." not in o.key_or_group]
    params = OmegaConf.select(compose(settings, config_name, with_hydra=True), "hydra.sweeper.params") or {}
    return OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])


def job_overrides(overrides: list[str], config_name: str, multirun: bool) -> list[list[str]]:
    """The task overrides of every job the command runs (one without ``-m``). A multirun's are
    formed as Hydra's basic sweeper forms them: the Cartesian product of the sweeps declared in
    config and the command line's task overrides, the command line's value winning for a key both set."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    task = [o for o in parsed if not _is_hydra(o)]
    if not multirun:
        return [[o.input_line for o in task]]
    return BasicSweeper.split_arguments(_config_sweeps(parsed, config_name) + task, None)[0]


def defer_to_jobs(argv: list[str]) -> list[str]:
    """A multirun's ``argv`` for Hydra, each plain override of a key inside a swept config group
    made a one-value sweep (``method=spt,xpe method.pool=mean`` -> ``method.pool=choice(mean)``).
    Hydra composes a multirun's master config without its sweeps, from the groups' defaults,
    where such a key may be missing (head_only has no pool); a sweep skips that composition
    and reaches each job's config unchanged. The jobs are the same."""
    overrides, config_name = _split_argv(argv)
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group for o in parsed + _config_sweeps(parsed, config_name) if o.is_sweep_override()}
    # a nested group default (model@method.translator.model=x) is keyed by its package, not its group
    deferred = {o.input_line: f"{o.get_key_element()}=choice({o.get_value_element_as_str()})" for o in parsed
                if not (o.is_sweep_override() or o.is_add() or o.is_force_add() or o.is_delete() or _is_hydra(o))
                and (o.package or o.key_or_group).split(".")[0] in swept and "." in (o.package or o.key_or_group)
                and o.value() is not None}  # choice(null) does not parse: a null stays a plain override
    return [deferred.get(arg, arg) for arg in argv]


def first_job_config(overrides: list[str], config_name: str, multirun: bool,
                     points: list[list[str]] | None = None) -> DictConfig:
    """The first job's config with Hydra's section (output directories, launcher);
    ``points``: :func:`job_overrides`, when already known."""
    points = points if points is not None else job_overrides(overrides, config_name, multirun)
    hydra_overrides = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if _is_hydra(o)]
    return compose(points[0] + hydra_overrides, config_name, with_hydra=True)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _reason(exc: BaseException | None) -> str:
    """The messages of ``exc`` and its causes, one line each, without OmegaConf's type lines
    (Hydra keeps the reason, e.g. a failed type conversion, in the cause)."""
    lines = []
    while exc is not None:
        lines += [line.strip() for line in str(exc).splitlines()
                  if line.strip() and not line.strip().startswith(("reference_type=", "object_type="))]
        exc = exc.__cause__
    return "\n".join(lines)


def explain(exc: BaseException, overrides: list[str], config_name: str) -> str:
    """A message naming the offending key or option and listing the valid ones, else the
    reason Hydra or OmegaConf gives (e.g. "could not be converted to Integer")."""
    text = _reason(exc)
    found = re.search(r"Could not (?:find|load) '([\w/]+)/([\w.\-]+)'", text)
    if found:
        group, option = found.groups()
        choices = _options(group)
        hint = difflib.get_close_matches(option, choices, n=1)
        return (f"unknown option {group}={option}. Valid choices for {group}: {', '.join(choices)}"
                + (f". Did you mean {group}={hint[0]}?" if hint else ""))
    found = (re.search(r"Key '([^']+)' (?:not in|is not in struct)[^\n]*\n\s*full_key: ([\w.\[\]]+)", text)
             or re.search(r"Could not override '(([\w.]+))'", text))
    if found:
        full_key = found.group(2)
        parent = full_key.rpartition(".")[0]
        try:
            clean = [o for o in overrides if not o.lstrip("+~").split("=", 1)[0].startswith(full_key)]
            node = compose(clean, config_name)
            node = OmegaConf.select(node, parent) if parent else node
            keys = sorted(str(k) for k in node.keys() if not str(k).startswith("_")) if isinstance(node, DictConfig) else []
        except Exception:
            keys = []
        return unknown_key_message(full_key, keys)
    found = re.search(r"Interpolation key 'model\.layer_sets\.(\w+)' not found", text)
    if found:
        return _missing_layer_set(found.group(1), overrides, config_name)
    return text.replace("\n", "\n  ")


def _missing_layer_set(name: str, overrides: list[str], config_name: str) -> str:
    """A method preset asked for a named layer range (``model.layer_sets``) the model lacks."""
    try:
        model = compose([o for o in overrides if not o.startswith("method")] + ["method=partial_layers"],
                        config_name).model.name
    except Exception:
        model = "the selected model"
    having = [m for m in _options("model")
              if name in (OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml").get("layer_sets") or {})]
    return (f"model={model} has no layer set {name!r} (model.layer_sets), which the method preset takes its "
            f"trainable layers from; the models that have it: {', '.join(having) or 'none'}. For another model "
            f"give the layers: method=partial_layers method.trainable.layers=[A,B] (0-based, inclusive)")


def preflight(argv: list[str]) -> set[str]:
    """Before any job starts: compose and validate the configuration of every job the command
    runs (each sweep point of a multirun), check the languages of a local benchmark, that the
    output and cache directories can be written and that a requested GPU exists. A mistake
    exits 2 with a message on stderr naming the key or file and the fix. Returns the run ids of
    the jobs (empty for an information request such as ``--cfg``)."""
    from xlt_runner.identity import run_id
    from xlt_runner.methods.base import resolve_init_from
    from xlt_runner.methods.merge import check_experts
    if _info_requested(argv):
        return set()
    overrides, config_name = _split_argv(argv)
    multirun = is_multirun(argv)
    try:
        OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        _fail(f"cannot parse the overrides: {exc}")
    try:
        points = job_overrides(overrides, config_name, multirun)
    except Exception as exc:
        _fail(explain(exc, overrides, config_name))
    benchmarks: dict = {}
    accelerators, cache_dirs, run_ids = set(), set(), set()
    for point in points:
        where = point if len(points) > 1 else None
        try:
            cfg = compose(point, config_name)
            validate(cfg)
            _check_local_languages(cfg, benchmarks)
            if cfg.method.init_from:
                resolve_init_from(cfg.method.init_from)
            check_experts(cfg)  # method=layer_swap: its experts' files, against model=
        except (ConfigError, BenchmarkDataError) as exc:
            _fail(str(exc), where)
        except Exception as exc:  # Hydra/OmegaConf composition errors
            _fail(explain(exc, point, config_name), where)
        accelerators.add(str(cfg.trainer.accelerator))
        cache_dirs.add(str(cfg.paths.cache_dir))
        run_ids.add(run_id(cfg))
    try:
        hydra_cfg = first_job_config(overrides, config_name, multirun, points)
    except Exception as exc:  # a bad hydra.* override
        _fail(explain(exc, overrides, config_name))
    _check_accelerator(accelerators, hydra_cfg)
    out_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    _check_writable(_output_dir(hydra_cfg, multirun), f"the output directory ({out_key})",
                    f"set paths.output_root (or {out_key}) to a directory you can write")
    for cache_dir in sorted(cache_dirs):
        _check_writable(Path(cache_dir).expanduser(), "the cache directory (paths.cache_dir)",
                        "set paths.cache_dir to a directory you can write")
    return run_ids


def _check_local_languages(cfg: DictConfig, benchmarks: dict) -> None:
    """The run's language selection, as the runner makes it, against a local benchmark's
    language directories (``benchmark.data_dir`` set; ``benchmarks`` caches them per command).
    A Hub benchmark's languages are known only to the job, where the runner checks them."""
    if not cfg.benchmark.data_dir:
        return
    key = (cfg.benchmark.name, cfg.benchmark.data_dir)
    if key not in benchmarks:
        benchmark = build_benchmark(cfg.benchmark, cfg.paths.cache_dir)
        benchmarks[key] = (data_location(benchmark), LanguageTable.for_benchmark(benchmark), benchmark.languages())
    location, table, available = benchmarks[key]
    table.select_run_languages(cfg.languages, available, location)
    if "langid_probe" in cfg.regime.stages:
        table.resolve_in_data("regime.probe_languages", list(cfg.regime.probe_languages), available, location)


def _check_accelerator(accelerators: set[str], hydra_cfg: DictConfig) -> None:
    """``trainer.accelerator=gpu``/``cuda`` needs a CUDA device where the jobs run; checked when
    the launcher runs them on this machine (a SLURM launcher's jobs get their nodes' GPUs)."""
    wanted = sorted(accelerators & {"gpu", "cuda"})
    launcher = str(OmegaConf.select(hydra_cfg, "hydra.launcher._target_") or "").rsplit(".", 1)[-1]
    if not wanted or launcher not in _LOCAL_LAUNCHERS:
        return
    import torch
    if not torch.cuda.is_available():
        _fail(f"trainer.accelerator={wanted[0]} needs a CUDA GPU, and torch sees none on this machine "
              f"(torch.cuda.is_available() is False). Use trainer.accelerator=cpu or trainer.accelerator=auto "
              f"(or trainer=default), or launch the jobs on GPU machines (e.g. hydra/launcher=slurm_a100)")


def _check_writable(path: Path, what: str, fix: str) -> None:
    """Create ``path`` if missing and write a temporary file in it; else fail with ``fix``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        _fail(f"{what} {str(path)!r} cannot be written ({type(err).__name__}: {err.strerror or err}); {fix}")


def _fail(message: str, variant: list[str] | None = None) -> None:
    where = f" (in the sweep point {' '.join(variant)})" if variant else ""
    print(f"xlt-run: configuration error{where}:\n  {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


# ----------------------------------------------------------------------- hydra app
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> None:
    """The Hydra task: one run into Hydra's output directory."""
    from xlt_runner.data import BenchmarkDataError
    from xlt_runner.resume import INTERRUPTED_EXIT, PREEMPTED_EXIT, ResumeCheckpointError, RunPreempted
    from xlt_runner.runner import DataChangedError, run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        validate(cfg)
        run(cfg, run_dir, overrides=list(hc.overrides.task))
    except RunPreempted as exc:  # the process was told to stop: stop the whole sweep, resumable
        print(f"xlt-run: {'interrupted' if exc.interrupted else 'preempted'}: {exc}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT if exc.interrupted else PREEMPTED_EXIT)
    except (ConfigError, BenchmarkDataError, DataChangedError, ResumeCheckpointError) as exc:
        print(f"xlt-run: error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(USER_ERROR_EXIT)
        _FAILED_JOBS.append(f"{run_dir}: {exc}")
    except Exception as exc:
        if not multirun:
            raise
        log.exception("job %s failed", run_dir)
        print(f"xlt-run: job failed, recorded in {run_dir / 'results.json'}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        _FAILED_JOBS.append(f"{run_dir}: {type(exc).__name__}: {exc}")


def quiet_libraries() -> None:
    """Keep the console for progress and results: drop Lightning's tips and known-benign warnings."""
    import warnings
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*is smaller than the logging interval.*",
                    ".*module\\(s\\) in eval mode.*", ".*exists and is not empty.*", ".*LeafSpec.*",
                    ".*Checkpoint directory.*",
                    # the train sampler resumes from the restored step itself (data/classification.py),
                    # exactly: tests/test_faults.py
                    ".*your dataloader is not resumable.*"):
        warnings.filterwarnings("ignore", message=pattern)


def is_multirun(argv: list[str]) -> bool:
    return "-m" in argv or "--multirun" in argv


def output_dir(argv: list[str]) -> Path:
    """Where the command writes: the sweep directory of a multirun, else the runs directory."""
    overrides, config_name = _split_argv(argv)
    return _output_dir(first_job_config(overrides, config_name, is_multirun(argv)), is_multirun(argv))


def _output_dir(hydra_cfg: DictConfig, multirun: bool) -> Path:
    if multirun:
        return Path(OmegaConf.select(hydra_cfg, "hydra.sweep.dir"))
    return Path(OmegaConf.select(hydra_cfg, "hydra.run.dir")).parent


def detach(argv: list[str]) -> None:
    """Run ``xlt-run argv`` in a new session in the background, its output in a log file
    beside the runs, and return at once (``--detach``). The child survives the terminal's
    closing; with a SLURM launcher it submits the jobs and then waits for them, as
    hydra-submitit-launcher does, while the user's terminal is free."""
    import subprocess
    from datetime import datetime

    where = output_dir(argv)
    where.mkdir(parents=True, exist_ok=True)
    log_path = where / f"xlt-run-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        child = subprocess.Popen([sys.executable, "-m", "xlt_runner", *argv], stdin=subprocess.DEVNULL,
                                 stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"xlt-run: running in the background (pid {child.pid}); output: {log_path}\n"
          f"  progress: xlt-report {where}")


def failed_records_since(argv: list[str], since: float, run_ids: set[str]) -> list[str]:
    """``run_dir: error`` of each record under this multirun's sweep directory that belongs to
    one of its jobs (``run_ids``; another command's sweep may share the directory) and failed
    (or was preempted) in an attempt started at or after ``since`` (epoch seconds).

    Jobs of out-of-process launchers (submitit) record their failure and return normally,
    so the launching process learns about failures from the records.
    """
    import json
    from datetime import datetime

    failed = []
    for path in sorted(output_dir(argv).glob("*/results.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            started = datetime.fromisoformat(record["started_at"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("run_id") in run_ids and record.get("status") in ("failed", "preempted") \
                and started >= int(since):
            error = record.get("error") or {}
            failed.append(f"{path.parent}: {error.get('type', record['status'])}: {error.get('message', '')}")
    return failed


def run_main() -> None:
    """``xlt-run``: validate, then run (``-m`` sweeps over comma-separated values;
    ``--detach``: validate, then run in the background and return)."""
    import time

    quiet_libraries()
    argv = sys.argv[1:]
    detached = DETACH_FLAG in argv
    argv = [a for a in argv if a != DETACH_FLAG]
    run_ids = preflight(argv)
    if detached:
        detach(argv)
        return
    started = time.time()
    if is_multirun(argv) and not _info_requested(argv):
        sys.argv = [sys.argv[0], *defer_to_jobs(argv)]
    hydra_app()
    failed = list(_FAILED_JOBS)
    if is_multirun(argv):
        def where(line: str) -> Path:
            return Path(line.split(":", 1)[0]).resolve()
        known = {where(line) for line in failed}
        failed += [line for line in failed_records_since(argv, started, run_ids) if where(line) not in known]
    if failed:
        print(f"xlt-run: {len(failed)} job(s) failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)


def rescore_main() -> None:
    """``xlt-rescore RUN_DIR...``: recompute a generation or math run's metrics from ``predictions.jsonl``."""
    import argparse

    from xlt_runner.tasks.generation import rescore
    parser = argparse.ArgumentParser(prog="xlt-rescore", description=(
        "Recompute every metric of complete generation and math runs from their saved predictions (no model, "
        "no GPU): per-example scores, per-language results and group means, rewritten in place."))
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories holding results.json")
    args = parser.parse_args()
    failed = False
    for run_dir in args.run_dirs:
        try:
            record = rescore(run_dir)
        except (ValueError, OSError) as exc:
            print(f"xlt-rescore: {exc}", file=sys.stderr)
            failed = True
            continue
        primary = record["primary_metric"]
        means = ", ".join(f"{g} {v[primary] * 100:.1f}" for g, v in record["groups"].items() if primary in v)
        print(f"[xlt-rescore] {run_dir}: {record['rescored_changes']} per-example scores changed; "
              f"{primary} by group (%): {means}")
    sys.exit(USER_ERROR_EXIT if failed else 0)


def analyze_main() -> None:
    """``xlt-analyze layers RUN_A RUN_B --base BASE``: where two fine-tuning runs changed the model."""
    import argparse

    from xlt_runner.analysis import AnalysisError, analyze_layers
    parser = argparse.ArgumentParser(prog="xlt-analyze", description=(
        "Mean |W_tuned - W_base| per layer and module type of two runs against one base, streamed "
        "tensor by tensor; heatmaps and a ranking of the layers that change more in RUN_A than in RUN_B."))
    sub = parser.add_subparsers(dest="command", required=True)
    layers = sub.add_parser("layers", help="rank layers by how much more RUN_A changed them than RUN_B")
    layers.add_argument("run_a", type=Path, help="run directory or .safetensors (e.g. the target-language run)")
    layers.add_argument("run_b", type=Path, help="run directory or .safetensors (e.g. the English run)")
    layers.add_argument("--base", type=Path, required=True,
                        help="the weights both started from: a model folder, a run directory or a .safetensors file")
    layers.add_argument("--out", type=Path, default=None, help="output directory (default RUN_A/analysis)")
    args = parser.parse_args()
    out = args.out or (args.run_a if args.run_a.is_dir() else args.run_a.parent) / "analysis"
    try:
        result = analyze_layers(args.run_a, args.run_b, args.base, out)
    except (AnalysisError, OSError) as exc:
        print(f"xlt-analyze: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    top = ", ".join(f"{row['layer']} ({row['score']:+.3g})" for row in result["ranking"][:8])
    print(f"[xlt-analyze] layers changing more in A than in B: {top}")
    print(f"[xlt-analyze] wrote {out / 'layer_ranking.json'} and heatmaps updates_a.png, updates_b.png, "
          f"updates_a_minus_b.png; train the top K with method.trainable.from_analysis={out / 'layer_ranking.json'} "
          f"method.trainable.top=K")


def report_main() -> None:
    """``xlt-report PATH``: tables, statistics and plots over every run under PATH."""
    from xlt_runner.results.report import report_main as _report_main
    sys.exit(_report_main(sys.argv[1:]))
