"""Aggregate run records into tables, a per-language plot, a sweep status and an export.

Terms used here:

* **run**: a directory holding ``results.json`` (see :mod:`xlt_runner.results.record`).
* **task kind**: a record's ``task`` (``classification``, ``generation``, ...). Runs of
  different kinds are never tabulated, averaged or plotted together; the sweep status covers all.
* **metric**: a name in a record's ``metrics`` (:class:`~xlt_runner.metrics.spec.MetricSpec`
  dicts), scored per language and per report group. Its spec gives the direction (which mean
  is best, ↓ when lower is better) and the scale (``percent``: shown ×100, plotted on 0-100;
  otherwise raw). A table shows one metric, by default the kind's ``primary_metric``.
* **cell**: the runs that share their whole identity config (``identity.identity_dict``)
  except ``seed``; seeds are its replicates. Runs without a ``config`` fall back to
  (method, model, benchmark, languages). Only ``"complete"`` runs enter any mean; if a
  cell has two complete records for the same seed (e.g. the same run in two output
  trees), the most recently finished one is used and a warning is issued.
* **comparison block**: cells with the same (model, benchmark, languages). Cells are only
  compared within a block and a report group.
* **best**: the cell of a block and group with the best mean in the metric's direction (ties
  all best); every other cell gets the two-sided Welch unpaired t-test p-value of its seeds
  against the best's seeds.
* **reference method** (``--compare-to METHOD``): additionally, every cell gets Welch's
  p-value against the seeds of the block's cell of that method (e.g. ``spt``, as in the paper).
* **n/r** (not reported): a group a record lists in ``groups_not_reported`` with a reason,
  having no zero-shot mean on purpose (e.g. a group made of source languages only); its cells
  read ``n/r`` with the reason as a footnote. A cell without data reads ``–``.
* **reference rows**: published numbers (n_seeds 0, never best, never tested) that a block's
  benchmark supplies through its ``reference_rows`` hook (SIB-200: the SIB-200 paper's full
  fine-tuning and the XPE paper's per-group means, for accuracy; see
  :mod:`xlt_runner.data.sib200_references`).

* **treatments table** (``--treatments``, :func:`treatment_table`): the layout of Table 1 of
  Bandarkar et al. (MRL 2025): a row per treatment (:func:`treatment_of`), Full and LoRA columns,
  each with the mean over the target languages (one run per language) and English, per
  (model, benchmark).

CIs are 95% Student-t half-widths over seeds, in the units shown.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from xlt_runner.fileio import atomic_path, write_text_atomic
from xlt_runner.results.record import RESULTS_FILE, UnreadableRecord, load_record
from xlt_runner.results.stats import ZERO_VARIANCE, mean_ci, welch_p, welch_undefined_reason

if TYPE_CHECKING:
    from xlt_runner.data.languages import LanguageTable
    from xlt_runner.metrics.spec import MetricSpec

BLOCK_COLUMNS = ("model", "benchmark", "languages")
#: Sweep status columns. ``dead``: the record says running but its process is gone (see
#: :func:`dead_run_reason`); ``unreadable``: ``results.json`` is not a readable JSON object.
#: Neither is a result; relaunching the sweep reruns both.
STATUS_COLUMNS = ("done", "running", "dead", "failed", "unreadable", "missing")
#: Run status (``collect_runs``) -> sweep status column. Unknown statuses count as failed (they
#: need a look); "preempted" (resumable: relaunching the sweep resumes it) is listed with the failed runs.
STATUS_OF_RECORD = {"complete": "done", "running": "running", "dead": "dead", "failed": "failed",
                    "preempted": "failed", "unreadable": "unreadable"}
#: ``cell_label``/``cell_name`` of an unreadable record, whose cell cannot be known.
UNREADABLE_CELL = "(unreadable record)"
#: A live process holding a running record's pid is taken to be another process (the pid was
#: reused) when it started more than this many seconds after the record's ``started_at``.
PID_START_TOLERANCE_S = 5.0
CONFIDENCE = 0.95
#: At most this many differing config keys are spelled out in a cell label; beyond, a hash.
MAX_LABEL_KEYS = 3


# ------------------------------------------------------------------------ collecting
def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Dotted-key view of nested dicts; leaves (lists included) as compact JSON strings."""
    if isinstance(data, dict) and data:
        flat: dict[str, str] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): json.dumps(data, sort_keys=True, default=str)}


def _cell_identity(record: dict) -> dict:
    """The config that defines a record's cell: its identity config without the seed."""
    config = record.get("config")
    if isinstance(config, dict) and config:
        from xlt_runner.identity import identity_dict
        identity = identity_dict(config)
        identity.pop("seed", None)
        return identity
    return {column: record.get(column) for column in ("method", *BLOCK_COLUMNS)}


def _cell_labels(rows: list[dict], identities: dict[str, dict]) -> None:
    """Set ``cell_label`` (method, plus the config keys telling same-method cells of a block and
    task kind apart) and ``cell_name`` (label plus whichever of task/model/benchmark/languages
    vary across ``rows``)."""
    by_method_block: dict[tuple, set[str]] = {}
    for row in rows:
        by_method_block.setdefault(tuple(row[c] for c in ("method", "task", *BLOCK_COLUMNS)), set()).add(row["cell"])
    labels: dict[str, str] = {}
    for (method, *_), cells in by_method_block.items():
        if len(cells) == 1:
            labels[next(iter(cells))] = str(method)
            continue
        flats = {cell: _flatten(identities[cell]) for cell in cells}
        keys = sorted(set().union(*flats.values()))
        differing = [k for k in keys if len({flat.get(k) for flat in flats.values()}) > 1]
        for cell, flat in flats.items():
            if len(differing) <= MAX_LABEL_KEYS:
                details = ", ".join(f"{k}={flat.get(k, 'unset')}" for k in differing)
            else:
                details = f"config {cell}"
            labels[cell] = f"{method} [{details}]"
    varying = [c for c in ("task", *BLOCK_COLUMNS) if len({row[c] for row in rows}) > 1]
    for row in rows:
        row["cell_label"] = labels[row["cell"]]
        row["cell_name"] = " / ".join([row["cell_label"], *(str(row[c]) for c in varying)])


#: The language-ID probe's group in records written before groups carried their direction.
LEGACY_PROBE_GROUP = "langid_probe"
#: The task kind of records written before they named one.
LEGACY_TASK = "classification"
#: The suffix of the LoRA treatment presets (``conf/treatment/<treatment>_lora.yaml``).
LORA_SUFFIX = "_lora"


def treatment_of(record: dict) -> tuple[str, str]:
    """``(row, tuning)`` of a run in the ``--treatments`` table (:func:`treatment_table`).

    ``tuning`` is ``"lora"`` when the run tuned LoRA adapters, by any of: its method family is
    ``lora`` (``config.method.family``, or the record's ``method_family``); its method config has
    a ``lora`` section that is not null (``partition_sft`` with adapters); it merged LoRA experts
    (``merge.kind == "lora"``, a ``layer_swap`` of adapters). Otherwise ``"full"`` (a ``prompting``
    run too, which tunes nothing).

    ``row`` is the record's method name (``config.method.name``, e.g. ``math_only``), less a
    trailing ``_lora`` for a LoRA run: the LoRA treatment presets are named
    ``<treatment>_lora``, so ``math_only`` and ``math_only_lora`` are one row, with a Full and a
    LoRA cell. A full run keeps its name as it is, even one ending in ``_lora``.
    """
    config = record.get("config")
    method = config.get("method") if isinstance(config, dict) else None
    method = method if isinstance(method, dict) else {}
    merge = record.get("merge")
    lora = (method.get("family") == "lora" or record.get("method_family") == "lora"
            or method.get("lora") is not None
            or (isinstance(merge, dict) and merge.get("kind") == "lora"))
    name = str(record.get("method") or method.get("name"))
    if lora and name.endswith(LORA_SUFFIX) and len(name) > len(LORA_SUFFIX):
        name = name[:-len(LORA_SUFFIX)]
    return name, "lora" if lora else "full"


def _record_view(record: dict) -> dict[str, Any]:
    """``task``, ``metrics`` (name -> :class:`MetricSpec`, record order), ``primary_metric``,
    ``groups`` and ``groups_not_reported`` of a record.

    A record without ``metrics`` (written before metric specs were stored) is a
    :data:`LEGACY_TASK` record with ``CLASSIFICATION_METRICS`` and primary metric ``accuracy``;
    its probe groups (saying ``"higher_is_better": false``, or named :data:`LEGACY_PROBE_GROUP`)
    carry their ``accuracy`` as the probe's ``langid_recall``, as the runner now writes them. A
    record without ``groups_not_reported`` (written before the runner withheld groups holding
    source languages) gets them withheld here too, unless its regime is sequential (supervised).
    """
    from xlt_runner.metrics.spec import CLASSIFICATION_METRICS, MetricSpec  # imports torch: not at module level

    groups = dict(record.get("groups") or {})
    not_reported = record.get("groups_not_reported")
    if not_reported is None:
        not_reported = {}
        if record.get("regime") != "sequential":
            from xlt_runner.data.languages import withhold_groups_with_source_languages
            groups, not_reported = withhold_groups_with_source_languages(
                groups, record.get("group_members") or {}, record.get("source_languages") or [])
    if isinstance(record.get("metrics"), list):
        specs = [MetricSpec.from_dict(spec) for spec in record["metrics"]]
    else:
        from xlt_runner.metrics.spec import LANGID_RECALL

        specs = list(CLASSIFICATION_METRICS)
        probe = [group for group, scores in groups.items() if isinstance(scores, dict)
                 and (scores.get("higher_is_better") is False or group == LEGACY_PROBE_GROUP)]
        for group in probe:
            groups[group] = {LANGID_RECALL.name: groups[group].get("accuracy"),
                             "n_languages": groups[group].get("n_languages")}
        specs += [LANGID_RECALL] if probe else []
    return {"task": str(record.get("task") or LEGACY_TASK), "metrics": {spec.name: spec for spec in specs},
            "primary_metric": record.get("primary_metric") or (specs[0].name if specs else None),
            "groups": groups, "groups_not_reported": not_reported}


def collect_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per ``results.json`` under ``root`` (any depth; dot-dirs skipped).

    Columns: run_dir, status, run_id, sweep_name, method, model, benchmark, languages, seed,
    cell (8-hex id of the cell), cell_label, cell_name, started_at, finished_at, error
    ("Type: message" or None), overrides (list), task, metrics (name -> MetricSpec),
    primary_metric, groups, groups_not_reported (as :func:`_record_view` reads them),
    group_members, per_language (the record's dicts), benchmark_data_dir (the record's
    ``config.benchmark.data_dir`` or None), target_languages (the record's list), treatment and
    tuning (:func:`treatment_of`). Rows are sorted by run_dir.

    ``status`` is the record's, except ``"dead"`` for a ``running`` record whose process is
    gone (``error`` then says why, see :func:`dead_run_reason`) and ``"unreadable"`` for a file
    that is not a readable JSON object (``error`` gives the reason, the record fields are None,
    cell labels are :data:`UNREADABLE_CELL`; a warning is also issued).
    """
    rows: list[dict] = []
    unreadable: list[dict] = []
    identities: dict[str, dict] = {}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if RESULTS_FILE not in files:
            continue
        try:
            record = load_record(directory)
        except UnreadableRecord as exc:
            warnings.warn(f"Unreadable run record {exc.path} ({exc.reason}); listed as unreadable in the sweep "
                          "status and not counted as a result.", stacklevel=2)
            unreadable.append({"run_dir": str(directory), "status": "unreadable", "cell_label": UNREADABLE_CELL,
                               "cell_name": UNREADABLE_CELL, "error": exc.reason, "overrides": [], "metrics": {}, "groups": {},
                               "groups_not_reported": {}, "group_members": {}, "per_language": {}})
            continue
        if record is None:  # removed since the directory was listed
            continue
        identity = _cell_identity(record)
        cell = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        identities[cell] = identity
        status, error = record.get("status"), record.get("error")
        error = f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else None
        if status == "running" and (reason := dead_run_reason(directory, record)):
            status, error = "dead", reason
        config = record.get("config")
        benchmark_config = config.get("benchmark") if isinstance(config, dict) else None
        rows.append({
            "run_dir": str(directory),
            "status": status,
            "run_id": record.get("run_id"),
            "sweep_name": record.get("sweep_name"),
            **{column: str(record.get(column)) for column in ("method", *BLOCK_COLUMNS)},
            "seed": record.get("seed"),
            "cell": cell,
            "started_at": record.get("started_at"),
            "finished_at": record.get("finished_at"),
            "error": error,
            "overrides": list(record.get("overrides") or []),
            **_record_view(record),
            "group_members": record.get("group_members") or {},
            "per_language": record.get("per_language") or {},
            "benchmark_data_dir": benchmark_config.get("data_dir") if isinstance(benchmark_config, dict) else None,
            "target_languages": list(record.get("target_languages") or []),
            **dict(zip(("treatment", "tuning"), treatment_of(record))),
        })
    _cell_labels(rows, identities)
    columns = ["run_dir", "status", "run_id", "sweep_name", "method", *BLOCK_COLUMNS, "seed", "cell",
               "cell_label", "cell_name", "started_at", "finished_at", "error", "overrides", "task", "metrics",
               "primary_metric", "groups", "groups_not_reported", "group_members", "per_language", "benchmark_data_dir",
               "target_languages", "treatment", "tuning"]
    return pd.DataFrame(rows + unreadable, columns=columns).sort_values("run_dir", ignore_index=True)


def dead_run_reason(run_dir: str | os.PathLike, record: dict) -> str | None:
    """Why a record saying ``running`` is certainly no longer being run, or None when it may be.

    Only a record written on this host (``record["host"] == os.uname().nodename``) with a
    ``pid`` can be judged; any other may be running elsewhere and gives None. On this host:

    1. The run lock ``<run_dir>/.lock``, held by the runner for the whole run (see
       :class:`xlt_runner.resume.RunLock`), decides when it exists and can be probed: held
       -> None, free -> dead, even if the pid is alive (a pid reused, or the same process gone
       on to another run). The probe is a non-blocking ``flock`` released at once; it never
       creates a lock file and never waits.
    2. Otherwise the recorded pid: no such process, a zombie, or (Linux ``/proc``) a process
       that started more than :data:`PID_START_TOLERANCE_S` after ``started_at`` (the pid was
       reused) -> dead; else None.

    A run that ends between the caller's read and this check has written its final record
    before releasing its lock; the record is re-read last, so such a run gives None.
    """
    pid, host = record.get("pid"), record.get("host")
    if host != os.uname().nodename or not isinstance(pid, int) or pid <= 0:
        return None
    from xlt_runner.resume import LOCK_FILE

    lock = Path(run_dir) / LOCK_FILE
    from xlt_runner.fileio import lock_held
    held = lock_held(lock)
    if held:
        return None
    if held is False:
        reason = f"the run lock {lock} is free"
    else:
        reason = _process_gone_reason(pid, record.get("started_at"))
        if reason is None:
            return None
    try:
        still_running = (load_record(run_dir) or {}).get("status") == "running"
    except UnreadableRecord:
        still_running = False
    if not still_running:
        return None
    return f"the record says running, but its process {pid} on {host} has ended ({reason}); relaunch to rerun it"


def _process_gone_reason(pid: int, started_at: Any) -> str | None:
    """Why process ``pid`` (on this host) is not the one that started a run at ``started_at``
    (ISO 8601 with a UTC offset), or None when it may be."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "no such process"
    except PermissionError:
        pass  # it exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_time = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                         if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):  # no /proc (not Linux), or the process just exited
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) onwards
    if fields[0] == "Z":
        return "it exited and is a zombie"
    process_start = boot_time + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime in ticks
    try:
        run_start = datetime.fromisoformat(str(started_at))
    except ValueError:
        return None
    if run_start.tzinfo is None:  # the runner records UTC with an offset; a naive time is ambiguous
        return None
    if process_start > run_start.timestamp() + PID_START_TOLERANCE_S:
        started = datetime.fromtimestamp(process_start, timezone.utc).isoformat(timespec="seconds")
        return f"pid {pid} now belongs to a process started at {started}, after the run started at {started_at}"
    return None


def complete_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The complete runs of ``df``, one per (cell, seed): the latest ``finished_at`` wins."""
    complete = df[df["status"] == "complete"].sort_values(["finished_at", "run_dir"], na_position="first")
    deduplicated = complete.drop_duplicates(["cell", "seed"], keep="last")
    if len(deduplicated) < len(complete):
        dropped = sorted(set(complete["run_dir"]) - set(deduplicated["run_dir"]))
        warnings.warn(f"{len(dropped)} complete run(s) repeat a (cell, seed) already counted and are "
                      f"ignored in means (the latest finished one is kept): {', '.join(dropped)}", stacklevel=2)
    return deduplicated.sort_values("run_dir", ignore_index=True)


# ----------------------------------------------------------------------------- table
class ReportError(ValueError):
    """The records cannot be reported as asked (e.g. an ambiguous reference method)."""


@dataclass
class GroupTable:
    """Across-seed summary of one metric per (cell, report group), for runs of one task kind.

    ``rows`` columns: model, benchmark, languages, method, cell_label, cell, group, metric,
    n_seeds, seeds (sorted list), mean, ci_half_width (both in the units shown: ×100 for a
    percent metric, else raw), note (the reason of a group not reported on purpose, mean nan;
    else None), coverage (reference rows averaging only some of the group's languages: "k/n
    langs"), best (bool; best mean of its comparison block and group in the metric's direction,
    ties all best), p_vs_best (Welch p against the best's seeds), p_vs_reference (Welch p
    against the seeds of the block's ``compare_to`` cell), why_no_p_vs_best /
    why_no_p_vs_reference (why a p is nan although there is a cell to test against: a
    :func:`~xlt_runner.results.stats.welch_undefined_reason`), task, higher_is_better and
    percent (from ``spec``).

    ``notes``: warning and info lines for the reader (a block without the reference method,
    paper results not found).
    """
    spec: MetricSpec
    task: str
    groups: list[str]
    rows: pd.DataFrame
    compare_to: str | None = None
    notes: list[str] = field(default_factory=list)
    by_language: bool = False  # columns are test languages (``group`` holds the code), not report groups

    @property
    def metric(self) -> str:
        return self.spec.name

    @property
    def decimals(self) -> int:
        """Decimal places of means and CIs: 1 for a percent metric; else enough for 3 significant
        digits of the largest mean (0 to 6)."""
        largest = self.rows["mean"].abs().max() if len(self.rows) else math.nan
        if self.spec.percent or not math.isfinite(largest) or largest == 0:
            return 1
        return min(6, max(0, 2 - math.floor(math.log10(largest))))


CELL_KEY = ("model", "benchmark", "languages", "method", "cell_label", "cell", "group")


def _task_kind(runs: pd.DataFrame) -> str:
    """The one task kind of ``runs``; :class:`ReportError` when they mix kinds."""
    kinds = list(dict.fromkeys(runs["task"]))
    if len(kinds) > 1:
        raise ReportError(f"the runs mix task kinds ({', '.join(kinds)}): report each kind apart, as xlt-report does.")
    return kinds[0] if kinds else LEGACY_TASK


def metric_names(runs: pd.DataFrame) -> list[str]:
    """The metric names the records of ``runs`` list, first-seen order."""
    return list(dict.fromkeys(name for metrics in runs["metrics"] for name in metrics))


def metrics_present(runs: pd.DataFrame) -> str:
    """The metric names of the records of ``runs`` per task kind, for messages:
    ``"accuracy, macro_f1 (classification); accuracy, exact_match (generation)"``."""
    return "; ".join(f"{', '.join(metric_names(kind_runs))} ({task})"
                     for task, kind_runs in runs.groupby("task", sort=False)) or "none"


def unknown_metric(metric: str, runs: pd.DataFrame) -> ReportError:
    """The error for a ``metric`` no record of ``runs`` lists, naming those they list."""
    return ReportError(f"unknown metric {metric!r}; metrics in the records: {metrics_present(runs)}.")


def metric_spec(runs: pd.DataFrame, metric: str | None = None) -> MetricSpec:
    """The spec of ``metric`` (default: the records' primary metric) in the records of ``runs``
    (complete runs of one task kind). :class:`ReportError` when no record has it (the message
    lists the metrics they have), or when records disagree on its direction or scale or, for
    the default, on the primary metric."""
    if metric is None:
        primaries = list(dict.fromkeys(runs["primary_metric"].dropna()))
        if len(primaries) != 1:
            found = f"different primary metrics ({', '.join(primaries)})" if primaries else "no primary metric"
            raise ReportError(f"the records name {found}; choose a metric with --metric: {metrics_present(runs)}.")
        metric = primaries[0]
    variants: dict[tuple[bool, bool], tuple[str, MetricSpec]] = {}
    for run in runs.itertuples():
        if metric in run.metrics:
            spec = run.metrics[metric]
            variants.setdefault((spec.higher_is_better, spec.percent), (run.run_dir, spec))
    if not variants:
        raise unknown_metric(metric, runs)
    if len(variants) > 1:
        raise ReportError(f"records disagree on metric {metric!r}: " + "; ".join(
            f"{run_dir} has higher_is_better={spec.higher_is_better}, percent={spec.percent}"
            for run_dir, spec in variants.values()) + ".")
    return next(iter(variants.values()))[1]


def _family(group: str) -> str:
    """``langid`` for ``langid:lowperf``: the groups one stage reports together."""
    return group.split(":", 1)[0]


def _groups_of_metric(run: Any, metric: str) -> list[str]:
    """The groups of ``run`` (a :func:`collect_runs` row) in ``metric``'s table, in record order:
    its reported groups scoring ``metric``, then its not-reported groups whose family's reported
    groups score it (the probe's ``langid:<group>``) or, with no reported group in their family,
    whose languages' per-language results score it. None unless the record lists ``metric``."""
    if metric not in run.metrics:
        return []
    reported = {group: scores for group, scores in run.groups.items() if isinstance(scores, dict)}
    per_language = {name for scores in run.per_language.values() if isinstance(scores, dict) for name in scores}
    shown = [group for group, scores in reported.items() if metric in scores]
    for group in run.groups_not_reported:
        family = [set(scores) for name, scores in reported.items() if _family(name) == _family(group)]
        if metric in (set().union(*family) if family else per_language):
            shown.append(group)
    return shown


def _languages_of_metric(run: Any, metric: str) -> list[str]:
    """The test languages of ``run`` whose per-language result has a value for ``metric`` (a
    ratio undefined on a run's answers is None there: that seed is left out of the cell)."""
    return [lang for lang, scores in run.per_language.items()
            if isinstance(scores, dict) and scores.get(metric) is not None]


def group_table(df: pd.DataFrame, metric: str | None = None, compare_to: str | None = None,
                paper_results: str | os.PathLike | None = None, by_language: bool = False) -> GroupTable:
    """Mean ± 95% CI of each complete cell's group ``metric`` across seeds, in the units shown.

    ``df`` holds runs of one task kind (:class:`ReportError` otherwise); ``metric`` defaults
    to their primary metric (:func:`metric_spec` says when it cannot be had). Groups are those
    :func:`_groups_of_metric` gives, in first-seen order; the best mean is the highest, or the
    lowest for a lower-is-better metric. ``compare_to`` (a method name) adds Welch p-values
    against that method's cell of each comparison block; it raises :class:`ReportError` when it
    names no method present or when a block has several cells of it. Reference rows come from
    each block's benchmark (:func:`benchmark_reference_rows`, given ``paper_results``).

    ``by_language``: one column per test language instead (``group`` holds its code), the
    languages a cell trained on included, as in-language studies (CoCo-CoLa) report; no
    reference rows.
    """
    runs = complete_runs(df)
    task = _task_kind(runs)
    spec = metric_spec(runs, metric)
    groups: list[str] = []
    samples: dict[tuple, dict] = {}
    not_reported: dict[tuple, dict] = {}
    for run in runs.itertuples():
        cell = tuple(getattr(run, column) for column in CELL_KEY[:-1])
        if by_language:
            shown = _languages_of_metric(run, spec.name) if spec.name in run.metrics else []
            groups += [lang for lang in shown if lang not in groups]
            for lang in shown:
                sample = samples.setdefault((*cell, lang), {"seeds": [], "values": []})
                sample["seeds"].append(run.seed)
                sample["values"].append(spec.display(float(run.per_language[lang][spec.name])))
            continue
        shown = _groups_of_metric(run, spec.name)
        groups += [group for group in shown if group not in groups]
        for group in shown:
            if group in run.groups_not_reported:
                entry = not_reported.setdefault((*cell, group), {"seeds": [], "reason": str(run.groups_not_reported[group])})
                entry["seeds"].append(run.seed)
            elif run.groups[group][spec.name] is not None:
                sample = samples.setdefault((*cell, group), {"seeds": [], "values": []})
                sample["seeds"].append(run.seed)
                sample["values"].append(spec.display(float(run.groups[group][spec.name])))
    rows = []
    for key, sample in samples.items():
        order = sorted(range(len(sample["seeds"])), key=lambda i: sample["seeds"][i])
        values = [sample["values"][i] for i in order]
        mean, half_width = mean_ci(values, CONFIDENCE)
        rows.append(dict(zip(CELL_KEY, key), metric=spec.name, n_seeds=len(values),
                         seeds=[sample["seeds"][i] for i in order], values=values, mean=mean,
                         ci_half_width=half_width, note=None))
    for key, sample in not_reported.items():
        if key not in samples:
            rows.append(dict(zip(CELL_KEY, key), metric=spec.name, n_seeds=len(sample["seeds"]),
                             seeds=sorted(sample["seeds"]), values=[], mean=math.nan, ci_half_width=math.nan,
                             note=sample["reason"]))
    table = pd.DataFrame(rows, columns=[*CELL_KEY, "metric", "n_seeds", "seeds", "values", "mean",
                                        "ci_half_width", "note", "coverage"])
    table["best"] = False
    for column in ("p_vs_best", "p_vs_reference"):
        table[column] = math.nan
        table[f"why_no_{column}"] = None
    scored = table[table["mean"].notna()]
    for _, block in scored.groupby([*BLOCK_COLUMNS, "group"], sort=False):
        top = spec.best(block["mean"].tolist())
        best_index = block.index[block["mean"].apply(lambda m: math.isclose(m, top))]
        table.loc[best_index, "best"] = True
        _welch_tests(table, block.index.difference(best_index), best_index[0], "p_vs_best")
    notes = _tests_against_reference_method(table, scored, compare_to) if compare_to is not None else []
    table = table.sort_values([*BLOCK_COLUMNS, "cell_label"], kind="stable", ignore_index=True)
    references, reference_notes = (pd.DataFrame(), []) if by_language else \
        benchmark_reference_rows(runs, groups, spec, paper_results)
    if len(references):
        table = pd.concat([table, references], ignore_index=True)
    table = table.assign(task=task, higher_is_better=spec.higher_is_better, percent=spec.percent)
    return GroupTable(spec=spec, task=task, groups=groups, rows=table.drop(columns="values"), compare_to=compare_to,
                      notes=notes + reference_notes, by_language=by_language)


def _welch_tests(table: pd.DataFrame, indices: pd.Index, against: int, column: str) -> None:
    """Set ``column`` (a p-value column) and ``why_no_<column>`` of rows ``indices``: Welch's test of
    their values against those of row ``against``."""
    against_values = table.at[against, "values"]
    for index in indices:
        table.at[index, column] = welch_p(table.at[index, "values"], against_values)
        table.at[index, f"why_no_{column}"] = welch_undefined_reason(table.at[index, "values"], against_values)


def _block_name(key: tuple) -> str:
    return ", ".join(f"{column}={value}" for column, value in zip(BLOCK_COLUMNS, key))


def _tests_against_reference_method(table: pd.DataFrame, scored: pd.DataFrame, method: str) -> list[str]:
    """Fill ``p_vs_reference`` of ``table`` against the ``method`` cell of each comparison block
    (rows ``scored``); return a warning line per block without such a cell."""
    present = sorted(set(scored["method"]))
    if method not in present:
        raise ReportError(f"reference method {method!r} is in no comparison block; methods present: "
                          f"{', '.join(present)}.")
    warning_lines = []
    for key, block in scored.groupby(list(BLOCK_COLUMNS), sort=False):
        reference_cells = list(dict.fromkeys(block.loc[block["method"] == method, "cell_label"]))
        if len(reference_cells) > 1:
            raise ReportError(f"block {_block_name(key)} has {len(reference_cells)} cells of the reference method "
                              f"{method!r}, differing in config: {'; '.join(reference_cells)}. Report a subset with "
                              "one of them (e.g. one sweep directory).")
        if not reference_cells:
            warning_lines.append(f"warning: block {_block_name(key)} has no {method} cell: its cells get no p vs "
                                 f"{method}.")
            continue
        for _, group_rows in block.groupby("group", sort=False):
            reference = group_rows.index[group_rows["method"] == method]
            if len(reference):
                _welch_tests(table, group_rows.index.difference(reference), reference[0], "p_vs_reference")
    return warning_lines


def _reference_groups(block: pd.DataFrame, groups: list[str]) -> list[str]:
    """``groups`` less those the block's runs do not report (n/r): a reference number there would
    fill a column the comparison leaves blank on purpose."""
    withheld = set().union(*(set(g) for g in block["groups_not_reported"]))
    return [group for group in groups if group not in withheld]


def _reference_hook(benchmark: str) -> Any:
    """The ``reference_rows`` hook of the benchmark class registered as ``benchmark``, or None."""
    from xlt_runner.config import ConfigError
    from xlt_runner.data import BENCHMARKS

    try:
        return getattr(BENCHMARKS.get(benchmark), "reference_rows", None)
    except ConfigError:  # not a benchmark of this installation
        return None


def benchmark_reference_rows(runs: pd.DataFrame, groups: list[str], spec: MetricSpec,
                             paper_results: str | os.PathLike | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(rows, distinct info lines): published reference rows (method ``reference``, n_seeds 0,
    never best, never tested) for the comparison blocks of ``runs`` (complete runs), block by block.

    A block's benchmark class may have a hook ``reference_rows(block, groups, metric,
    paper_results) -> (rows, info lines)``; it gets the block's runs, ``groups`` less those the
    block does not report, and ``spec.name``, and gives rows ``{"cell", "cell_label", "group",
    "mean", "coverage"}`` with ``mean`` in the units shown (see
    :func:`xlt_runner.data.sib200_references.reference_rows`). It decides which metrics have
    published numbers. A benchmark not registered here, or without a hook, gives none.
    """
    rows, notes = [], []
    for key, block in runs.groupby(list(BLOCK_COLUMNS), sort=False):
        hook = _reference_hook(key[1])
        if hook is None:
            continue
        found, block_notes = hook(block, _reference_groups(block, groups), spec.name, paper_results)
        rows += [{**dict(zip(BLOCK_COLUMNS, key)), "method": "reference", "metric": spec.name, "n_seeds": 0,
                  "seeds": [], "values": [], "ci_half_width": math.nan, "best": False, "p_vs_best": math.nan, **row}
                 for row in found]
        notes += block_notes
    return pd.DataFrame(rows), list(dict.fromkeys(notes))


# ------------------------------------------------------------------ treatments table
#: Row order of the ``--treatments`` table: the treatments of Bandarkar et al. (MRL 2025) as its
#: Table 1 lists them, the Layer-Swapping merges, then the ``prompting`` baseline; any other row
#: name follows, alphabetically.
TREATMENT_ORDER = ("math_only", "language_only", "data_mixing", "partition_sft", "math_partial", "language_partial",
                   "layer_swap_full", "layer_swap_partial", "layer_swap_reset", "prompting")
#: The test language a ``--treatments`` table shows apart (its ``en`` columns, the math-only
#: signal); every other test language of a run is one of its target languages.
ENGLISH = "en"
#: Column groups of the ``--treatments`` table, and their headings.
TUNINGS = {"full": "Full", "lora": "LoRA"}
#: Columns of each tuning: the mean over the target languages, and English.
TREATMENT_COLUMNS = ("target", "en")


@dataclass
class TreatmentTable(GroupTable):
    """The ``--treatments`` table (:func:`treatment_table`): one row per (model, benchmark,
    treatment, tuning, column).

    ``rows`` columns: model, benchmark, target_languages (the block's, comma-joined), treatment,
    tuning (``full``/``lora``), column (``target``/``en``), group (``<tuning>:<column>``, one of
    ``groups``), methods (the method names merged into the row's cell), languages_averaged
    (comma-joined: the row's target languages), n_languages, metric, n_seeds, seeds,
    seeds_left_out (seeds of the cell not averaged: without a value in one of the row's
    languages, in neither column; without an English value, in ``en``), mean, ci_half_width
    (units shown), footnote (the cell's footnote text or None), best, p_vs_best,
    why_no_p_vs_best, task, higher_is_better, percent.
    """

    @property
    def footnotes(self) -> list[str]:
        """The distinct footnote texts, in table order (footnote k is text k-1)."""
        return list(dict.fromkeys(self.rows["footnote"].dropna())) if len(self.rows) else []


def _treatment_order(name: str) -> tuple[int, str]:
    return (TREATMENT_ORDER.index(name), "") if name in TREATMENT_ORDER else (len(TREATMENT_ORDER), name)


def _run_target_languages(run: Any) -> list[str]:
    """A run's test languages other than English: its record's ``target_languages``, or (a
    record without them) its per-language results' languages."""
    targets = run.target_languages if isinstance(run.target_languages, list) and run.target_languages \
        else list(run.per_language)
    return [lang for lang in dict.fromkeys(targets) if lang != ENGLISH]


def _seed_order(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


def _seeds_text(seeds: dict[Any, str]) -> str:
    return ", ".join(f"seed {seed} ({seeds[seed]})" for seed in sorted(seeds, key=_seed_order))


def treatment_table(df: pd.DataFrame, metric: str | None = None) -> TreatmentTable:
    """Table 1 of Bandarkar et al. (MRL 2025): ``metric`` (default: the primary one) per
    treatment × Full/LoRA, averaged over the target languages, with 95% CIs over seeds.

    ``df`` holds runs of one task kind (:class:`ReportError` otherwise); only complete runs count
    (:func:`complete_runs`). Each run tests English and (usually) one target language; a run's
    row and Full/LoRA column are :func:`treatment_of`'s. Blocks are (model, benchmark): the
    target languages are not a block column, since a sweep fans out over them.

    Per (block, row, tuning) cell and seed:

    * ``target``: the mean of ``metric`` over the **row's** target languages (the union of the
      target languages of its runs with a value, Full and LoRA together), each from the seed's
      run testing it; English is never among them. A seed without such a value in one of the
      row's languages (a run missing, failed, or undefined there) is **left out of the cell**
      (both columns) and named in the cell's footnote: a seed is never averaged over fewer
      languages. A row whose languages are fewer than its block's says so in the footnote too.
    * ``en``: the mean of the seed's runs' English ``metric`` (the runs of its target value);
      a seed with a run without an English value is left out of this column, footnoted.

    The cell is ``mean_ci`` over those per-seed values (units shown). The best mean of each
    column within a block, in the metric's direction, is ``best`` (ties all best), and every
    other cell gets Welch's p against it. Two runs of a row, tuning and seed testing the same
    language (cells differing in config, e.g. two learning rates) raise :class:`ReportError`.
    """
    runs = complete_runs(df)
    task = _task_kind(runs)
    spec = metric_spec(runs, metric)
    # (model, benchmark, row, tuning) -> seed -> {"langs": lang -> (value, run), "en": [value or None]}
    cells: dict[tuple, dict[Any, dict]] = {}
    methods: dict[tuple, list[str]] = {}
    full_named_lora: set[str] = set()
    for run in runs.itertuples():
        if spec.name not in run.metrics:
            continue
        key = (run.model, run.benchmark, run.treatment, run.tuning)
        entry = cells.setdefault(key, {}).setdefault(run.seed, {"langs": {}, "en": []})
        methods.setdefault(key, [])
        if run.method not in methods[key]:
            methods[key].append(run.method)
        if run.tuning == "full" and run.treatment.endswith(LORA_SUFFIX):
            full_named_lora.add(run.treatment)
        for lang in _run_target_languages(run):
            scores = run.per_language.get(lang)
            value = scores.get(spec.name) if isinstance(scores, dict) else None
            if value is None:
                continue
            if lang in entry["langs"]:
                other = entry["langs"][lang][1]
                raise ReportError(
                    f"treatment {run.treatment} ({TUNINGS[run.tuning]}) of model={run.model}, "
                    f"benchmark={run.benchmark} has two runs of seed {run.seed} testing {lang}, whose configs differ "
                    f"({other.cell_label}: {other.run_dir}; {run.cell_label}: {run.run_dir}): the treatments table "
                    "cannot tell them apart. Report a subset with one of them (e.g. one sweep directory).")
            entry["langs"][lang] = (spec.display(float(value)), run)
        english = run.per_language.get(ENGLISH)
        english = english.get(spec.name) if isinstance(english, dict) else None
        entry["en"].append(None if english is None else spec.display(float(english)))
    row_languages: dict[tuple, set[str]] = {}
    block_languages: dict[tuple, set[str]] = {}
    for (model, benchmark, row, _), seeds in cells.items():
        found = {lang for entry in seeds.values() for lang in entry["langs"]}
        row_languages.setdefault((model, benchmark, row), set()).update(found)
        block_languages.setdefault((model, benchmark), set()).update(found)
    rows = []
    for key, seeds in cells.items():
        model, benchmark, row, tuning = key
        languages = sorted(row_languages[(model, benchmark, row)])
        left_out = {seed: "no " + ", ".join(sorted(set(languages) - set(entry["langs"])))
                    for seed, entry in seeds.items() if set(entry["langs"]) != set(languages)}
        if not languages:
            left_out = {seed: "no target language" for seed in seeds}
        kept = sorted((seed for seed in seeds if seed not in left_out), key=_seed_order)
        no_english = {seed: "no en" for seed in kept if not seeds[seed]["en"] or None in seeds[seed]["en"]}
        per_column = {"target": {seed: sum(seeds[seed]["langs"][lang][0] for lang in languages) / len(languages)
                                 for seed in kept},
                      "en": {seed: sum(seeds[seed]["en"]) / len(seeds[seed]["en"])
                             for seed in kept if seed not in no_english}}
        parts = []
        missing_in_row = sorted(block_languages[(model, benchmark)] - set(languages))
        if missing_in_row:
            parts.append(f"averages {', '.join(languages) or 'no language'} only (no {', '.join(missing_in_row)} "
                         f"run of {row})")
        if left_out:
            parts.append(f"left out, not averaged over fewer languages: {_seeds_text(left_out)}")
        if no_english:
            parts.append(f"left out of en: {_seeds_text(no_english)}")
        footnote = f"{row}, {TUNINGS[tuning]}: " + "; ".join(parts) + "." if parts else None
        for column in TREATMENT_COLUMNS:
            values_by_seed = per_column[column]
            values = list(values_by_seed.values())
            mean, half_width = mean_ci(values, CONFIDENCE)
            rows.append({"model": model, "benchmark": benchmark,
                         "target_languages": ", ".join(sorted(block_languages[(model, benchmark)])),
                         "treatment": row, "tuning": tuning, "column": column, "group": f"{tuning}:{column}",
                         "methods": ", ".join(methods[key]), "languages_averaged": ", ".join(languages),
                         "n_languages": len(languages), "metric": spec.name, "n_seeds": len(values),
                         "seeds": list(values_by_seed), "seeds_left_out": sorted(
                             set(left_out) | (set(no_english) if column == "en" else set()), key=_seed_order),
                         "values": values, "mean": mean, "ci_half_width": half_width, "footnote": footnote})
    columns = ["model", "benchmark", "target_languages", "treatment", "tuning", "column", "group", "methods",
               "languages_averaged", "n_languages", "metric", "n_seeds", "seeds", "seeds_left_out", "values", "mean",
               "ci_half_width", "footnote"]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        table = table.iloc[sorted(range(len(table)), key=lambda i: (
            table.at[i, "model"], table.at[i, "benchmark"], _treatment_order(table.at[i, "treatment"]),
            list(TUNINGS).index(table.at[i, "tuning"]), TREATMENT_COLUMNS.index(table.at[i, "column"])))]
        table = table.reset_index(drop=True)
    table = table.assign(best=False, p_vs_best=math.nan, why_no_p_vs_best=None)
    for _, column in table[table["mean"].notna()].groupby(["model", "benchmark", "group"], sort=False):
        top = spec.best(column["mean"].tolist())
        best_index = column.index[column["mean"].apply(lambda m: math.isclose(m, top))]
        table.loc[best_index, "best"] = True
        _welch_tests(table, column.index.difference(best_index), best_index[0], "p_vs_best")
    table = table.assign(task=task, higher_is_better=spec.higher_is_better, percent=spec.percent)
    notes = [f"warning: {name} runs are not LoRA by their config (method.family, method.lora, merge.kind): they "
             f"are in the Full column of a row {name}." for name in sorted(full_named_lora)]
    return TreatmentTable(spec=spec, task=task, groups=[f"{t}:{c}" for t in TUNINGS for c in TREATMENT_COLUMNS],
                          rows=table.drop(columns="values"), notes=notes)


def treatment_rows(table: TreatmentTable, style: str) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """(header, body rows, constants) of a :class:`TreatmentTable`: one row per (model, benchmark,
    treatment); per tuning (Full, LoRA) a target-languages column and an ``en`` column. The
    ``tex`` header names only ``target``/``en`` (:func:`format_latex` adds the Full/LoRA line)."""
    rows = table.rows.assign(note=None, coverage=None)  # what format_cell reads of a group table's cell
    block = ("model", "benchmark", "target_languages")
    constants = {c: str(rows[c].iloc[0]) for c in block if rows[c].nunique() == 1} if len(rows) else {}
    label_columns = [c for c in block if c not in constants] + ["treatment"]
    down = "" if table.spec.higher_is_better else r" $\downarrow$" if style == "tex" else " ↓"
    names = {"target": "target" if style == "tex" else "target (mean over languages)", "en": "en"}
    header = label_columns + [(names[c] if style == "tex" else f"{TUNINGS[t]}: {names[c]}") + down
                              for t in TUNINGS for c in TREATMENT_COLUMNS]
    footnotes = table.footnotes
    body = []
    for _, row_rows in rows.groupby(["model", "benchmark", "treatment"], sort=False):
        by_group = {row["group"]: row for _, row in row_rows.iterrows()}
        first = row_rows.iloc[0]
        cells = []
        for group in table.groups:
            row = by_group.get(group)
            detail, marker = "", ""
            if row is not None:
                if row["column"] == "target" and row["n_seeds"]:
                    detail = f"; {row['n_languages']} lang" + ("s" if row["n_languages"] != 1 else "")
                if pd.notna(row["footnote"]):
                    marker = _footnote_marker(footnotes.index(row["footnote"]) + 1, style)
            cells.append(format_cell(row, style, decimals=table.decimals, detail=detail, marker=marker))
        body.append([str(first[c]) for c in label_columns] + cells)
    return header, body, {c.replace("_", " "): v for c, v in constants.items()}


def _treatment_legend(table: TreatmentTable) -> str:
    rows, metric = table.rows, table.spec.name
    parts = [f"{metric_title(table.spec)} by treatment: one row per treatment (a run's method; a LoRA run's row is "
             f"its method without the trailing {LORA_SUFFIX}), Full and LoRA columns (LoRA: method family lora, "
             "a method.lora section, or a merge of LoRA experts).",
             f"target = per seed, the unweighted mean of {metric} over the row's target languages (one run per "
             "language; English never averaged in); en = per seed, the mean of the English "
             f"{metric} of the same runs; each then mean ± {CONFIDENCE:.0%} CI half-width (Student t, n-1 dof) over "
             "seeds; no ± when n=1.",
             "(n=k; m langs) = k seeds, each the mean of m languages. A seed without a complete run in every one of "
             "the row's languages is left out of both columns of its cell (footnoted), never averaged over fewer "
             "languages; failed/running runs are never averaged in.",
             "Bold = best mean of the column among the treatments of the same model/benchmark; p = two-sided Welch "
             "unpaired t-test of the cell's seed values against the best's."]
    if (rows["n_seeds"] == 1).any():
        parts.append("(n=1: no test) = one seed, so no Welch test involves this cell.")
    if rows["why_no_p_vs_best"].eq(ZERO_VARIANCE).any():
        parts.append("p undefined (zero variance) = each of the two cells scores the same on all its seeds, so "
                     "Welch's t is undefined.")
    if not table.spec.higher_is_better:
        parts.append("↓ = lower is better (the best is the lowest mean).")
    return " ".join(parts)


SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _footnote_marker(number: int, style: str) -> str:
    return rf"$^{{{number}}}$" if style == "tex" else str(number).translate(SUPERSCRIPT_DIGITS)


def not_reported_reasons(table: GroupTable) -> list[str]:
    """The distinct reasons of the not-reported cells, in table order (footnote k is reason k-1)."""
    return list(dict.fromkeys(table.rows["note"].dropna()))


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def format_cell(row: pd.Series | None, style: str, compare_to: str | None = None,
                reasons: list[str] | None = None, decimals: int = 1, detail: str = "", marker: str = "") -> str:
    """One table cell, style md | tex | rich: ``mean ± ci (n=k)`` (``decimals`` places) with bold best and Welch p
    (``p=… vs best; p=… vs <compare_to>`` when ``compare_to`` is given), ``(n=1: no test)``
    for one seed, ``mean (paper[, k/n langs])`` for a reference row, ``n/r`` plus the footnote
    number of its reason in ``reasons`` for a group not reported, ``–`` for no data.
    ``detail`` is added inside the parentheses of n (``(n=3; 3 langs)``), ``marker`` (a
    footnote marker) right after the value or ``–``."""
    if row is None:
        return ("–" if style != "tex" else "--") + marker
    if pd.notna(row["note"]):
        return "n/r" + _footnote_marker((reasons or []).index(row["note"]) + 1, style)
    if not math.isfinite(row["mean"]):
        return ("–" if style != "tex" else "--") + marker
    small = (lambda text: rf" {{\scriptsize {text}}}") if style == "tex" else (lambda text: f" {text}")
    pm = r"$\pm$" if style == "tex" else "±"
    text = f"{row['mean']:.{decimals}f}" + (f" {pm} {row['ci_half_width']:.{decimals}f}"
                                           if math.isfinite(row["ci_half_width"]) else "")
    if row["best"]:
        text = {"md": f"**{text}**", "tex": rf"\textbf{{{text}}}", "rich": f"[bold]{text}[/bold]"}[style]
    text += marker
    if row["n_seeds"] == 0:  # a published reference number, not a run of ours
        return text + small(f"(paper, {row['coverage']})" if pd.notna(row["coverage"]) else "(paper)")
    if row["n_seeds"] == 1:
        return text + small(f"(n=1: no test{detail})")
    text += small(f"(n={row['n_seeds']}{detail})" if style != "tex" else f"({row['n_seeds']}{detail})")
    tests = [("best", "p_vs_best")] + ([(compare_to, "p_vs_reference")] if compare_to else [])
    parts = []
    for against, column in tests:
        name = _latex_escape(against) if style == "tex" else against
        versus = f" vs {name}" if compare_to else ""
        if math.isfinite(row[column]):
            parts.append((f"${_format_p(row[column])}$" if style == "tex" else _format_p(row[column])) + versus)
        elif row[f"why_no_{column}"] == ZERO_VARIANCE:
            parts.append(f"p undefined{versus} (zero variance)")
    return text + (small("; ".join(parts)) if parts else "")


def wide_rows(table: GroupTable, style: str) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """(header, body rows, constants): one row per cell, one column per group; for a
    lower-is-better metric every group header is marked ↓ (tex: ``$\\downarrow$``).

    Block columns (model/benchmark/languages) whose value is the same everywhere are left
    out of the rows and returned in ``constants`` instead. A :class:`TreatmentTable` is laid out
    by :func:`treatment_rows`.
    """
    if isinstance(table, TreatmentTable):
        return treatment_rows(table, style)
    rows = table.rows
    constants = {c: str(rows[c].iloc[0]) for c in BLOCK_COLUMNS if rows[c].nunique() == 1} if len(rows) else {}
    label_columns = [c for c in BLOCK_COLUMNS if c not in constants] + ["method"]
    name = _latex_escape if style == "tex" else str
    down = "" if table.spec.higher_is_better else r" $\downarrow$" if style == "tex" else " ↓"
    header = label_columns + [name(g) + down for g in table.groups]
    reasons = not_reported_reasons(table)
    body = []
    for _, cell_rows in rows.groupby([*BLOCK_COLUMNS, "cell_label", "cell"], sort=False):
        by_group = {row["group"]: row for _, row in cell_rows.iterrows()}
        first = cell_rows.iloc[0]
        labels = [str(first[c]) for c in label_columns[:-1]] + [str(first["cell_label"])]
        body.append(labels + [format_cell(by_group.get(g), style, table.compare_to, reasons, table.decimals)
                              for g in table.groups])
    return header, body, constants


def _footnotes(table: GroupTable, style: str) -> list[str]:
    if isinstance(table, TreatmentTable):
        return [f"{_footnote_marker(number, style)} {text}" for number, text in enumerate(table.footnotes, start=1)]
    return [f"{_footnote_marker(number, style)} n/r: not reported: {reason}"
            for number, reason in enumerate(not_reported_reasons(table), start=1)]


def metric_title(spec: MetricSpec) -> str:
    """``Test <metric>``, `` (%)`` for a percent metric, `` ↓`` for a lower-is-better one."""
    return f"Test {spec.name}" + (" (%)" if spec.percent else "") + ("" if spec.higher_is_better else " ↓")


def _legend(table: GroupTable) -> str:
    if isinstance(table, TreatmentTable):
        return _treatment_legend(table)
    rows, reference = table.rows, table.compare_to
    per = ("test language (the languages a cell trained on included; a seed whose value is undefined, e.g. a "
           "ratio with no question to rest on, is left out of n)" if table.by_language else "report group")
    parts = [f"{metric_title(table.spec)} per {per}: mean ± {CONFIDENCE:.0%} CI half-width (Student t, "
             "n-1 dof) over seeds; (n) = complete seeds in the cell (failed/running runs are never averaged in); "
             "no ± when n=1.",
             "Bold = best mean of the group among methods with the same model/benchmark/languages."]
    if reference:
        parts.append(f"p=… vs best = two-sided Welch unpaired t-test of the cell's seeds against the best's; "
                     f"p=… vs {reference} = the same against the seeds of the {reference} cell (reference method) "
                     "with the same model/benchmark/languages.")
    else:
        parts.append("p = two-sided Welch unpaired t-test of that method's seeds against the best's.")
    if (rows["n_seeds"] == 1).any():
        parts.append("(n=1: no test) = one seed, so no Welch test involves this cell (a best with one seed leaves "
                     "its whole group without p vs best).")
    if rows[["why_no_p_vs_best", "why_no_p_vs_reference"]].eq(ZERO_VARIANCE).any(axis=None):
        parts.append("p undefined (zero variance) = each of the two cells scores the same on all its seeds, so "
                     "Welch's t is undefined.")
    if not table.spec.higher_is_better:
        parts.append("↓ = lower is better (the best is the lowest mean).")
    if (rows["n_seeds"] == 0).any():
        parts.append("(paper) = a published number averaged over the group's languages, not a run of ours; "
                     "(paper, k/n langs) = only k of the group's n languages have a published number.")
    return " ".join(parts)


def format_markdown(table: GroupTable) -> str:
    header, body, constants = wide_rows(table, "md")
    lines = [" ".join(f"{k}: `{v}`." for k, v in constants.items()), ""] if constants else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    for paragraph in [*_footnotes(table, "md"), _legend(table)]:
        lines += ["", paragraph]
    return "\n".join(lines + [""])


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def format_latex(table: GroupTable) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), caption text and n/r footnotes as comments."""
    header, body, constants = wide_rows(table, "tex")
    n_labels = len(header) - len(table.groups)
    escape_labels = lambda cells: [_latex_escape(c) for c in cells[:n_labels]] + cells[n_labels:]  # noqa: E731
    lines = [f"% {_legend(table)}"]
    lines += [f"% {line}" for line in _footnotes(table, "tex")]
    lines += [f"% {k}: {v}" for k, v in constants.items()]
    lines += [r"\begin{tabular}{" + "l" * n_labels + "r" * len(table.groups) + "}", r"\toprule"]
    if isinstance(table, TreatmentTable):  # Full / LoRA over their target and en columns
        width = len(TREATMENT_COLUMNS)
        lines += [" & " * n_labels + " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{name}}}"
                                                for name in TUNINGS.values()) + r" \\",
                  " ".join(rf"\cmidrule(lr){{{n_labels + 1 + i * width}-{n_labels + (i + 1) * width}}}"
                           for i in range(len(TUNINGS)))]
    lines += [" & ".join(escape_labels(header)) + r" \\", r"\midrule"]
    lines += [" & ".join(escape_labels(cells)) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_tables(table: GroupTable, out_dir: str | os.PathLike, suffix: str = "") -> list[Path]:
    """Write ``report<suffix>.csv`` (long, numeric: one row per cell x group with the columns of
    :class:`GroupTable`, ``best`` as a boolean column, seeds ';'-joined; a group not reported
    has an empty mean and its reason in ``note``), ``report<suffix>.md`` and ``report<suffix>.tex``;
    return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = table.rows.assign(**{column: table.rows[column].apply(lambda seeds: ";".join(map(str, seeds)))
                                 for column in ("seeds", "seeds_left_out") if column in table.rows})
    paths = [out / f"report{suffix}.{extension}" for extension in ("csv", "md", "tex")]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    write_text_atomic(paths[1], format_markdown(table))
    write_text_atomic(paths[2], format_latex(table))
    return paths


# ------------------------------------------------------------------------ per language
def per_language_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of the complete runs of ``df``: one row per (run, language).

    Columns: run_id, run_dir, sweep_name, cell, cell_label, cell_name, method, model,
    benchmark, languages, seed, task, language, then one column per metric of the records found
    in their per-language results (first-seen order; values as recorded, e.g. fractions 0-1 for
    a percent metric; empty where a run's kind has no such metric), n (examples).
    """
    columns = ["run_id", "run_dir", "sweep_name", "cell", "cell_label", "cell_name", "method", *BLOCK_COLUMNS,
               "seed", "task"]
    complete = df[df["status"] == "complete"]
    metrics = list(dict.fromkeys(name for run in complete.itertuples() for name in run.metrics
                                 if any(name in scores for scores in run.per_language.values())))
    rows = []
    for _, run in complete.iterrows():
        for language, scores in run["per_language"].items():
            rows.append({**{c: run[c] for c in columns}, "language": language,
                         **{name: scores.get(name) for name in metrics if name in run["metrics"]}, "n": scores.get("n")})
    return pd.DataFrame(rows, columns=[*columns, "language", *metrics, "n"])


def export_all(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Write every complete run's per-language scores to ``per_language_all.csv`` and, when
    pyarrow is installed, ``per_language_all.parquet`` (each atomically); return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = per_language_scores(df)
    paths = [out / "per_language_all.csv"]
    write_text_atomic(paths[0], scores.to_csv(index=False))
    if find_spec("pyarrow") is not None:
        paths.append(out / "per_language_all.parquet")
        with atomic_path(paths[-1]) as tmp:
            scores.to_parquet(tmp, index=False)
    return paths


def figure_groups(codes: list[str], table: LanguageTable | None = None) -> list[tuple[str, list[str]]]:
    """Languages grouped and ordered for the per-language plot.

    Like Figure 2 of the XPE paper: XLM-R-seen languages, then unseen, each sorted by the
    SIB-200 paper's XLM-R-large accuracy, descending (``LanguageTable.figure_order``). Codes
    the table does not know go last in an "Other" group, alphabetically; without a usable
    language table everything is one alphabetical group.
    """
    codes = sorted(set(codes))
    if table is None:
        try:
            from xlt_runner.data.languages import LanguageTable
            table = LanguageTable.default()
        except Exception as exc:  # the table is optional for plotting; the order degrades gracefully
            warnings.warn(f"Language table unavailable ({exc}); plotting languages alphabetically.", stacklevel=2)
            return [("All languages", codes)]
    known = [code for code in codes if code in table]
    unknown = [code for code in codes if code not in table]
    try:
        groups = [(name, list(members)) for name, members in table.figure_order(known) if members] if known else []
    except Exception as exc:
        warnings.warn(f"Language table could not order {len(known)} languages ({exc}); plotting alphabetically.",
                      stacklevel=2)
        return [("All languages", codes)]
    placed = {code for _, members in groups for code in members}
    unknown += [code for code in known if code not in placed]
    return groups + ([("Other", sorted(unknown))] if unknown else [])


def plot_per_language(df: pd.DataFrame, out_path: str | os.PathLike, table: LanguageTable | None = None,
                      metric: str | None = None) -> Path | None:
    """PNG of per-language test ``metric`` (default: the primary one) of the complete runs of
    ``df`` (one task kind), mean over seeds, one series per cell; returns its path, or None
    when no complete run has per-language values of ``metric`` (e.g. the probe's ``langid_recall``).

    y: the values shown (×100 on 0-100 for a percent metric, else raw with limits from the data).
    x: languages in :func:`figure_groups` order, with a gap, a dotted separator and a label
    per group; dashed horizontal segments give each series' unweighted mean over the group's
    languages. The figure widens with the number of languages (~0.13 inch each). The file is
    written atomically (format from ``out_path``'s suffix, PNG without one). Raises
    :class:`ReportError` as :func:`metric_spec` and :func:`group_table` do.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = complete_runs(df)
    _task_kind(runs)
    spec = metric_spec(runs, metric)
    scores = per_language_scores(runs)
    if spec.name not in scores or scores[spec.name].isna().all():
        return None
    means = spec.display(scores.groupby(["language", "cell_name"])[spec.name].mean().unstack("cell_name"))
    groups = figure_groups(list(means.index), table)
    positions: dict[str, float] = {}
    spans = []
    x = 0
    for name, members in groups:
        spans.append((name, x, x + len(members) - 1, members))
        for code in members:
            positions[code] = x
            x += 1
        x += 1  # gap between groups
    n_languages = len(positions)
    width = max(8.0, 0.13 * (n_languages + len(groups)) + 2.0)
    fig, ax = plt.subplots(figsize=(width, 5.5))
    colors = plt.get_cmap("tab10" if means.shape[1] <= 10 else "tab20").colors
    for index, series in enumerate(means.columns):
        color = colors[index % len(colors)]
        for span_index, (_, start, end, members) in enumerate(spans):
            values = means.loc[members, series]
            ax.plot([positions[c] for c in members], values.values, marker="o", markersize=3, linewidth=0.8,
                    color=color, alpha=0.9, label=series if span_index == 0 else None)
            if values.notna().any():
                ax.hlines(values.mean(), start - 0.4, end + 0.4, colors=[color], linestyles="dashed", linewidth=1.2)
    for name, start, end, members in spans:
        ax.text((start + end) / 2, 1.01, f"{name} ({len(members)})", ha="center", va="bottom", fontsize=9,
                fontweight="bold", transform=ax.get_xaxis_transform())
        if start > 0:
            ax.axvline(start - 1, color="grey", linestyle=":", linewidth=1)
    tick_codes = [code for _, _, _, members in spans for code in members]
    ax.set_xticks([positions[c] for c in tick_codes])
    ax.set_xticklabels(tick_codes, rotation=90, fontsize=6 if n_languages > 60 else 8, family="monospace")
    ax.set_xlim(-1, x - 1)
    if spec.percent:
        lowest = float(means.min().min())
        ax.set_ylim(max(0.0, 10.0 * math.floor(lowest / 10.0) - 5.0) if math.isfinite(lowest) else 0.0, 100.5)
    ax.set_ylabel(metric_title(spec))
    ax.grid(axis="y", linewidth=0.4, alpha=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.16 if n_languages > 20 else -0.1), ncol=min(4, means.shape[1]),
              fontsize=8, frameon=False)
    ax.set_title(f"Per-language test {spec.name}, mean over seeds (dashed: group mean); "
                 "languages sorted by SIB-200 XLM-R-large accuracy within each group", fontsize=10, pad=18)
    out_path = Path(out_path)
    try:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=out_path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------- status
@dataclass
class SweepStatus:
    """``runs``: one row per expected or found run (sweep, cell, seed, status, run_dir,
    overrides, error); ``summary``: per (sweep, cell) counts of done/running/failed/missing
    and total."""
    runs: pd.DataFrame
    summary: pd.DataFrame


def _sweep_axes(multirun_file: Path) -> dict[str, list[str]]:
    """Swept keys -> values from a Hydra ``multirun.yaml``: the sweep overrides in
    ``hydra.overrides.task`` (``key=a,b``, ``range()``, ``choice()``) and ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with open(multirun_file, encoding="utf-8") as handle:
        hydra_cfg = (yaml.safe_load(handle) or {}).get("hydra") or {}
    overrides = list((hydra_cfg.get("overrides") or {}).get("task") or [])
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    axes: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            axes[override.key_or_group] = list(override.sweep_string_iterator())
    return axes


def _override_values(overrides: list[str]) -> dict[str, str]:
    """``key -> value string`` of a run's recorded (non-sweep) overrides; unparsable ones skipped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    values = {}
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except OverrideParseException:
            continue
        if not override.is_sweep_override():
            values[override.key_or_group] = override.get_value_element_as_str()
    return values


def _is_within(path: str, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


def sweep_status(root: str | os.PathLike, runs: pd.DataFrame | None = None) -> SweepStatus:
    """:data:`STATUS_COLUMNS` counts per cell for every sweep under ``root``.

    Expected runs come from each Hydra ``multirun.yaml`` under ``root``: the cartesian
    product of its sweep overrides. An expected run is matched by a record under the same
    sweep directory whose ``overrides`` give the same value for every swept key; its cell is
    the swept values other than ``seed``. With several matches the best status counts
    (done > running > failed > dead). Records matched by no sweep are reported under their own
    cell (sweep = their ``sweep_name``), with nothing missing. A run killed without writing
    its final record stays "running" unless :func:`dead_run_reason` can tell it is "dead".
    Unreadable records match no expected run (which then counts as missing): each is one
    ``unreadable`` run in the cell :data:`UNREADABLE_CELL` of the sweep directory holding it.
    """
    root = Path(root)
    runs = collect_runs(root) if runs is None else runs
    rank = {"done": 4, "running": 3, "failed": 2, "dead": 1}
    override_values = {index: _override_values(run.overrides) for index, run in runs.iterrows()}
    rows, accounted = [], set()
    for multirun_file in sorted(root.rglob("multirun.yaml")):
        sweep_dir = multirun_file.parent
        sweep = str(sweep_dir.relative_to(root)) if sweep_dir != root else "."
        axes = _sweep_axes(multirun_file)
        in_sweep = [index for index in runs.index if _is_within(runs.at[index, "run_dir"], sweep_dir)]
        for index in in_sweep:
            if runs.at[index, "status"] == "unreadable" and index not in accounted:
                accounted.add(index)
                rows.append({"sweep": sweep, "cell": UNREADABLE_CELL, "seed": None, "status": "unreadable",
                             "run_dir": runs.at[index, "run_dir"], "overrides": "", "error": runs.at[index, "error"]})
        in_sweep = [index for index in in_sweep if runs.at[index, "status"] != "unreadable"]
        for combination in itertools.product(*axes.values()):
            assignment = dict(zip(axes, combination))
            matches = [i for i in in_sweep if all(override_values[i].get(k) == v for k, v in assignment.items())]
            accounted.update(matches)
            found = sorted(matches, key=lambda i: rank[STATUS_OF_RECORD.get(runs.at[i, "status"], "failed")])
            chosen = runs.loc[found[-1]] if found else None
            rows.append({
                "sweep": sweep,
                "cell": " ".join(f"{k}={v}" for k, v in assignment.items() if k != "seed") or "(all)",
                "seed": assignment.get("seed"),
                "status": STATUS_OF_RECORD.get(chosen["status"], "failed") if chosen is not None else "missing",
                "run_dir": chosen["run_dir"] if chosen is not None else None,
                "overrides": " ".join(f"{k}={v}" for k, v in assignment.items()),
                "error": chosen["error"] if chosen is not None else None,
            })
    for index, run in runs.drop(index=list(accounted)).iterrows():
        rows.append({"sweep": run["sweep_name"] or "", "cell": run["cell_name"], "seed": run["seed"],
                     "status": STATUS_OF_RECORD.get(run["status"], "failed"), "run_dir": run["run_dir"],
                     "overrides": " ".join(run["overrides"]), "error": run["error"]})
    per_run = pd.DataFrame(rows, columns=["sweep", "cell", "seed", "status", "run_dir", "overrides", "error"])
    summary = (per_run.groupby(["sweep", "cell"], sort=False)["status"].value_counts().unstack(fill_value=0)
               .reindex(columns=list(STATUS_COLUMNS), fill_value=0))
    summary.columns.name = None
    summary["total"] = summary.sum(axis=1)
    return SweepStatus(runs=per_run, summary=summary.reset_index())


# ------------------------------------------------------------------------------- CLI
def _print_table(console: Any, title: str, header: list[str], body: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    console.print(table)


def _log_to_wandb(root: Path, out: Path, reports: list[tuple[str, GroupTable, Path | None]],
                  status: SweepStatus) -> None:
    """Log the tables and plots (``reports``: (file suffix, table, plot path or None) per task
    kind) as one wandb run (job_type "report"); project and mode from ``WANDB_PROJECT`` (default
    xlt_runner) and ``WANDB_MODE`` (default offline)."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "xlt_runner"), job_type="report", dir=str(out),
                     name=f"report-{root.resolve().name}", mode=os.environ.get("WANDB_MODE", "offline"),
                     config={"root": str(root), "metric": {table.task: table.metric for _, table, _ in reports}})
    logged = {"sweep_status": wandb.Table(dataframe=status.summary)}
    for suffix, table, plot_path in reports:
        logged[f"group_table{suffix}"] = wandb.Table(dataframe=table.rows.astype({"seeds": str}))
        if plot_path is not None:
            logged[f"per_language{suffix}"] = wandb.Image(str(plot_path))
    run.log(logged)
    run.finish()


def report_main(argv: list[str] | None = None) -> int:
    """``xlt-report PATH [--out DIR] [--metric NAME] [--compare-to METHOD] [--paper-results TSV]
    [--by-language | --treatments] [--wandb]``.

    One table set (tables, plot) per task kind of the complete runs, each for ``--metric``
    (default: the kind's primary metric); with several kinds, file names end in ``_<kind>``
    and a kind whose records lack ``--metric`` is left out with a note. The sweep status and
    the per-language export cover every run. ``--treatments`` writes :func:`treatment_table`
    instead of the group table (``report_treatments.*``; with ``--by-language`` or
    ``--compare-to``: exit 2).

    Exit codes: 0 report written; 1 no complete run under PATH; 2 PATH is not a directory,
    the ``--paper-results`` file does not exist, or the records cannot be reported as asked
    (:class:`ReportError`, e.g. ``--metric`` names a metric no record has, or ``--compare-to``
    names no method present).
    """
    from rich.console import Console
    from rich.markup import escape

    parser = argparse.ArgumentParser(prog="xlt-report", description="Summarise the runs under PATH: per task kind, "
                                     "a group table of one metric (mean ± 95% CI over seeds; per model/benchmark/"
                                     "languages and group, the best cell in the metric's direction and Welch "
                                     "p-values against it; published reference rows where the benchmark has "
                                     "them), sweep status, per-language plot and export.")
    parser.add_argument("path", help="an output root, e.g. outputs/ or outputs/sweeps/<sweep_name>")
    parser.add_argument("--out", help="where to write the report files (default: PATH/report)")
    parser.add_argument("--metric", metavar="NAME",
                        help="the metric to tabulate, any the records list (e.g. accuracy, macro_f1, exact_match, "
                             "empty_rate, langid_recall for the language-ID probe); default: the primary metric "
                             "of each task kind. Direction and scale come from the records' metric specs; "
                             "SIB-200 reference rows are for accuracy only")
    parser.add_argument("--compare-to", metavar="METHOD",
                        help="also give each cell the Welch p-value against the METHOD cell (a record's method, "
                             "e.g. spt) with the same model/benchmark/languages, beside the p-value against the best")
    parser.add_argument("--paper-results", metavar="TSV",
                        help="published per-language results a benchmark's reference rows read; SIB-200: the XPE "
                             "paper's xpe_paper_appendix_a.tsv, for sweeps with a paper source set (enarzho, "
                             "joshi5, seen); default: <benchmark.data_dir>/../meta/xpe_paper_appendix_a.tsv of "
                             "the records, if it exists")
    parser.add_argument("--by-language", action="store_true",
                        help="one column per test language instead of per report group, the languages a cell "
                             "trained on included (in-language studies such as CoCo-CoLa's Tables 2-3); files "
                             "report_by_language.*")
    parser.add_argument("--treatments", action="store_true",
                        help="the layout of Table 1 of Bandarkar et al. (MRL 2025) instead: a row per treatment (a "
                             "run's method, a LoRA run's without its trailing _lora), Full and LoRA columns, each "
                             "with the mean over the target languages (one run per language, English left out) and "
                             "English, mean ± 95%% CI over seeds; a seed lacking one of the row's languages is left "
                             "out of its cell with a footnote; files report_treatments.*")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and plots to wandb")
    args = parser.parse_args(argv)
    root = Path(args.path)
    console = Console()
    if not root.is_dir():
        print(f"xlt-report: {root} is not a directory; pass the output root of your runs "
              "(e.g. outputs/ or outputs/sweeps/<sweep_name>).", file=sys.stderr)
        return 2
    if args.treatments and (args.by_language or args.compare_to):
        print(f"xlt-report: error: --treatments cannot be combined with "
              f"{'--by-language' if args.by_language else '--compare-to'}: its table has its own layout and tests "
              "every cell against the best of its column.", file=sys.stderr)
        return 2
    if args.paper_results and not Path(args.paper_results).is_file():
        print(f"xlt-report: error: --paper-results {args.paper_results}: no such file.", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else root / "report"
    runs = collect_runs(root)
    status = sweep_status(root, runs)
    summary = status.summary
    # a status no run has is left out of the console table (status.csv lists every run with its status)
    shown = ["sweep", "cell", *[c for c in STATUS_COLUMNS if c == "done" or summary[c].any()], "total"]
    _print_table(console, f"Sweep status under {escape(str(root))}", shown,
                 [[escape(str(v)) for v in row] for row in summary[shown].itertuples(index=False)])
    for _, run in status.runs[status.runs["status"].isin(["failed", "dead", "unreadable"])].iterrows():
        where = Path(run["run_dir"]) / RESULTS_FILE if run["status"] == "unreadable" else run["run_dir"]
        console.print(f"[red]{run['status']}[/red] {escape(str(where))}: {escape(str(run['error']))}")
    for _, run in status.runs[status.runs["status"] == "missing"].iterrows():
        console.print(f"[yellow]missing[/yellow] {escape(run['sweep'])}: {escape(run['overrides'])}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "status.csv", status.runs.to_csv(index=False))
    complete = runs[runs["status"] == "complete"]
    if complete.empty:
        console.print(f"No complete runs under {escape(str(root))} ({len(runs)} record(s) found); nothing to report.")
        return 1
    kinds = sorted(set(complete["task"]))
    try:
        if args.metric and args.metric not in metric_names(complete):
            raise unknown_metric(args.metric, complete)
        tables = []
        for kind in kinds:
            kind_runs, kind_complete = runs[runs["task"] == kind], complete[complete["task"] == kind]
            if args.metric and args.metric not in metric_names(kind_complete):
                console.print(f"info: no {escape(args.metric)} in the {kind} records: no {kind} table.")
                continue
            compare_to = args.compare_to
            if compare_to not in set(kind_complete["method"]) and compare_to in set(complete["method"]):
                console.print(f"info: no {escape(compare_to)} run among the {kind} runs: no p vs "
                              f"{escape(compare_to)} there.")
                compare_to = None
            if args.treatments:
                table = treatment_table(kind_runs, args.metric)
                if table.rows.empty:
                    console.print(f"info: no {kind} run has a per-language {escape(table.metric)} in a test "
                                  "language: no treatments table.")
                    continue
                tables.append((kind_runs, table))
                continue
            tables.append((kind_runs, group_table(kind_runs, args.metric, compare_to, args.paper_results,
                                                  by_language=args.by_language)))
    except ReportError as exc:
        print(f"xlt-report: error: {exc}", file=sys.stderr)
        return 2
    paths, reports = [], []
    for kind_runs, table in tables:
        suffix = (f"_{table.task}" if len(kinds) > 1 else "") + ("_by_language" if args.by_language else "") \
            + ("_treatments" if args.treatments else "")
        for note in table.notes:
            console.print(escape(note))
        others = [name for name in metric_names(complete[complete["task"] == table.task]) if name != table.metric]
        if others:
            console.print(f"info: the {table.task} records also have {', '.join(others)}: tabulate one with "
                          "--metric NAME.")
        header, body, constants = wide_rows(table, "rich")
        n_labels = len(header) - len(table.groups)
        title = metric_title(table.spec) + (" by treatment" if args.treatments else "") \
            + (f" [{table.task}]" if len(kinds) > 1 else "")
        _print_table(console, escape(f"{title} " + " ".join(f"{k}={v}" for k, v in constants.items())), header,
                     [[escape(c) for c in cells[:n_labels]] + cells[n_labels:] for cells in body])
        for line in [*_footnotes(table, "rich"), _legend(table)]:
            console.print(escape(line))
        paths += write_tables(table, out, suffix)
        plot_path = plot_per_language(kind_runs, out / f"per_language_{table.metric}{suffix}.png", metric=table.metric)
        console.print(f"Plot: {escape(str(plot_path))}" if plot_path else
                      f"Plot: none (no per-language {escape(table.metric)} in the {table.task} records)")
        reports.append((suffix, table, plot_path))
    paths += export_all(runs, out) + [out / "status.csv"]
    console.print("Wrote: " + ", ".join(escape(str(p)) for p in paths))
    if args.wandb:
        _log_to_wandb(root, out, reports, status)
    return 0
