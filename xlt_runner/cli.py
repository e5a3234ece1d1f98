"""Command-line entry points: ``xlt-run`` (the Hydra app) and ``xlt-report``.

``xlt-run`` first composes and validates every configuration the command line asks
for (each value of each swept key; composition is cached, see composition.py), so a
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
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xlt_runner import config as _config  # noqa: F401  (registers schemas)
from xlt_runner import identity as _identity  # noqa: F401  (registers the run_id resolver)
from xlt_runner import methods as _methods  # noqa: F401  (registers every method's schema)
from xlt_runner.composition import CONF_DIR, compose
from xlt_runner.config import ConfigError

USER_ERROR_EXIT = 2
log = logging.getLogger("xlt_runner")

# Flags after which Hydra does not run a job; preflight is skipped for them.
_INFO_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
               "--resolve", "-p", "--package"}
_FAILED_JOBS: list[str] = []
DETACH_FLAG = "--detach"  # xlt-run's own flag, not Hydra's


# ------------------------------------------------------------------------ preflight
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


def expand_variants(overrides: list[str]) -> list[list[str]]:
    """Override lists covering every value of every swept key at least once.

    ``method=a,b seed=0,1,2`` gives ``[method=a seed=0]``, ``[method=b seed=0]``,
    ``[method=a seed=1]``, ``[method=a seed=2]``: one composition per value, not the
    whole Cartesian product.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base, swept = [], []
    for o in parsed:
        if o.key_or_group.startswith("hydra") or o.get_key_element().startswith("hydra"):
            continue
        if o.is_sweep_override():
            values = [str(v) for v in o.sweep_string_iterator()]
            swept.append((o, values))
            base.append(f"{o.get_key_element()}={values[0]}")
        else:
            base.append(o.input_line)
    variants = [base]
    for o, values in swept:
        key = o.get_key_element()
        for value in values[1:]:
            variants.append([f"{key}={value}" if item.split("=", 1)[0] == key else item for item in base])
    return variants


def config_sweep_overrides(overrides: list[str], config_name: str) -> list[str]:
    """Sweeps declared in config (``hydra.sweeper.params``, e.g. by an experiment preset)
    for keys the command line does not set, as ``key=a,b`` overrides."""
    cfg = compose(expand_variants(overrides)[0], config_name, with_hydra=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return [f"{key}={value}" for key, value in params.items() if key not in given]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def explain(exc: BaseException, overrides: list[str], config_name: str) -> str:
    """A message naming the offending key or option and listing the valid ones."""
    text = str(exc)
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
        key = full_key.rsplit(".", 1)[-1]
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        try:
            clean = [o for o in overrides if not o.lstrip("+~").split("=", 1)[0].startswith(full_key)]
            node = compose(clean, config_name)
            node = OmegaConf.select(node, parent) if parent else node
            keys = sorted(k for k in node.keys() if not str(k).startswith("_")) if isinstance(node, DictConfig) else []
        except Exception:
            keys = []
        hint = difflib.get_close_matches(key, keys, n=1)
        where = parent or "the root config"
        return (f"unknown key {full_key!r}. Valid keys of {where}: {', '.join(map(str, keys))}"
                + (f". Did you mean {parent + '.' if parent else ''}{hint[0]}?" if hint else ""))
    return text.strip()


def preflight(argv: list[str]) -> None:
    """Compose and validate each configuration the command asks for; exit 2 on a mistake."""
    if any(a.split("=", 1)[0] in _INFO_FLAGS for a in argv):
        return
    overrides, config_name = _split_argv(argv)
    try:
        expand_variants(overrides)
    except Exception as exc:
        _fail(f"cannot parse the overrides: {exc}")
    try:
        if is_multirun(argv):
            overrides = overrides + config_sweep_overrides(overrides, config_name)
        variants = expand_variants(overrides)
    except Exception as exc:
        _fail(explain(exc, overrides, config_name))
    for variant in variants:
        try:
            cfg = compose(variant, config_name)
            _config.validate(cfg)
        except ConfigError as exc:
            _fail(str(exc), variant if len(variants) > 1 else None)
        except Exception as exc:  # Hydra/OmegaConf composition errors
            _fail(explain(exc, variant, config_name), variant if len(variants) > 1 else None)


def _fail(message: str, variant: list[str] | None = None) -> None:
    where = f" (in the sweep point {' '.join(variant)})" if variant else ""
    print(f"xlt-run: configuration error{where}:\n  {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


# ----------------------------------------------------------------------- hydra app
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> None:
    """The Hydra task: one run into Hydra's output directory."""
    from xlt_runner.data import BenchmarkDataError
    from xlt_runner.resume import PREEMPTED_EXIT, RunPreempted
    from xlt_runner.runner import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        _config.validate(cfg)
        run(cfg, run_dir, overrides=list(hc.overrides.task))
    except RunPreempted as exc:  # the process was told to stop: stop the whole sweep, resumable
        print(f"xlt-run: preempted: {exc}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    except (ConfigError, BenchmarkDataError) as exc:
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
                    ".*Checkpoint directory.*"):
        warnings.filterwarnings("ignore", message=pattern)


def is_multirun(argv: list[str]) -> bool:
    return "-m" in argv or "--multirun" in argv


def output_dir(argv: list[str]) -> Path:
    """Where the command writes: the sweep directory of a multirun, else the runs directory."""
    overrides, config_name = _split_argv(argv)
    cfg = compose(expand_variants(overrides)[0], config_name, with_hydra=True)
    if is_multirun(argv):
        return Path(OmegaConf.select(cfg, "hydra.sweep.dir"))
    return Path(OmegaConf.select(cfg, "hydra.run.dir")).parent


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


def failed_records_since(argv: list[str], since: float) -> list[str]:
    """``run_dir: error`` of each record under this multirun's sweep directory that failed
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
        if record.get("status") in ("failed", "preempted") and started >= int(since):
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
    preflight(argv)
    if detached:
        detach(argv)
        return
    started = time.time()
    hydra_app()
    failed = list(_FAILED_JOBS)
    if is_multirun(argv):
        def where(line: str) -> Path:
            return Path(line.split(":", 1)[0]).resolve()
        known = {where(line) for line in failed}
        failed += [line for line in failed_records_since(argv, started) if where(line) not in known]
    if failed:
        print(f"xlt-run: {len(failed)} job(s) failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)


def report_main() -> None:
    """``xlt-report PATH``: tables, statistics and plots over every run under PATH."""
    from xlt_runner.results.report import report_main as _report_main
    sys.exit(_report_main(sys.argv[1:]))
