"""Aggregate run records into tables, a per-language plot, a sweep status and an export.

Terms used here:

* **run**: a directory holding ``results.json`` (see :mod:`xlt_runner.results.record`).
* **cell**: the runs that share their whole identity config (``identity.identity_dict``)
  except ``seed``; seeds are its replicates. Runs without a ``config`` fall back to
  (method, model, benchmark, languages). Only ``"complete"`` runs enter any mean; if a
  cell has two complete records for the same seed (e.g. the same run in two output
  trees), the most recently finished one is used and a warning is issued.
* **comparison block**: cells with the same (model, benchmark, languages). Cells are only
  compared within a block and a report group.
* **direction**: a report group's scores are better higher unless its records say
  ``"higher_is_better": false`` (e.g. the language-ID probe's ``langid:<group>`` groups,
  marked ↓ in the tables).
* **best**: the cell of a block and group with the best mean in the group's direction (ties
  all best); every other cell gets the two-sided Welch unpaired t-test p-value of its seeds
  against the best's seeds.
* **reference method** (``--compare-to METHOD``): additionally, every cell gets Welch's
  p-value against the seeds of the block's cell of that method (e.g. ``spt``, as in the paper).
* **n/r** (not reported): a group a record lists in ``groups_not_reported`` with a reason,
  having no zero-shot mean on purpose (e.g. a group made of source languages only); its cells
  read ``n/r`` with the reason as a footnote. A cell without data reads ``–``.
* **reference rows**: published numbers (n_seeds 0, never best, never tested) beside SIB-200
  blocks: the SIB-200 paper's full fine-tuning, and the XPE paper's per-group means of the
  block's method and source set.

Scores in tables and plots are percentages; CIs are 95% Student-t half-widths over seeds.
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

from xlt_runner.results.record import RESULTS_FILE, UnreadableRecord, atomic_path, load_record, write_text_atomic
from xlt_runner.results.stats import ZERO_VARIANCE, mean_ci, welch_p, welch_undefined_reason

if TYPE_CHECKING:
    from xlt_runner.data.languages import LanguageTable

METRICS = ("accuracy", "macro_f1")
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
    """Set ``cell_label`` (method, plus the config keys telling same-method cells apart) and
    ``cell_name`` (label plus whichever of model/benchmark/languages vary across ``rows``)."""
    by_method_block: dict[tuple, set[str]] = {}
    for row in rows:
        by_method_block.setdefault(tuple(row[c] for c in ("method", *BLOCK_COLUMNS)), set()).add(row["cell"])
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
    varying = [c for c in BLOCK_COLUMNS if len({row[c] for row in rows}) > 1]
    for row in rows:
        row["cell_label"] = labels[row["cell"]]
        row["cell_name"] = " / ".join([row["cell_label"], *(str(row[c]) for c in varying)])


#: The language-ID probe's group in records written before groups carried their direction.
LEGACY_PROBE_GROUP = "langid_probe"


def _reported_groups(record: dict) -> dict[str, dict]:
    """``groups`` and ``groups_not_reported`` of a record. A record written before the runner
    withheld groups holding source languages gets them withheld here too (not for the
    sequential regime, whose results are supervised), and its probe group lower-is-better."""
    groups = dict(record.get("groups") or {})
    not_reported = record.get("groups_not_reported")
    if not_reported is None:
        not_reported = {}
        if record.get("regime") != "sequential":
            from xlt_runner.data.languages import withhold_groups_with_source_languages
            groups, not_reported = withhold_groups_with_source_languages(
                groups, record.get("group_members") or {}, record.get("source_languages") or [])
        if isinstance(groups.get(LEGACY_PROBE_GROUP), dict):
            groups[LEGACY_PROBE_GROUP] = {**groups[LEGACY_PROBE_GROUP], "higher_is_better": False}
    return {"groups": groups, "groups_not_reported": not_reported}


def collect_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per ``results.json`` under ``root`` (any depth; dot-dirs skipped).

    Columns: run_dir, status, run_id, sweep_name, method, model, benchmark, languages, seed,
    cell (8-hex id of the cell), cell_label, cell_name, started_at, finished_at, error
    ("Type: message" or None), overrides (list), groups, groups_not_reported, group_members,
    per_language (the record's dicts), benchmark_data_dir (the record's
    ``config.benchmark.data_dir`` or None). Rows are sorted by run_dir.

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
                               "cell_name": UNREADABLE_CELL, "error": exc.reason, "overrides": [], "groups": {},
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
            **_reported_groups(record),
            "group_members": record.get("group_members") or {},
            "per_language": record.get("per_language") or {},
            "benchmark_data_dir": benchmark_config.get("data_dir") if isinstance(benchmark_config, dict) else None,
        })
    _cell_labels(rows, identities)
    columns = ["run_dir", "status", "run_id", "sweep_name", "method", *BLOCK_COLUMNS, "seed", "cell",
               "cell_label", "cell_name", "started_at", "finished_at", "error", "overrides", "groups",
               "groups_not_reported", "group_members", "per_language", "benchmark_data_dir"]
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
    held = _lock_held(lock)
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


def _lock_held(lock: Path) -> bool | None:
    """Whether some process holds an ``flock`` on the existing file ``lock``; None when that
    cannot be told (no such file, no permission to open it, no ``flock`` on this system/file system)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    for flags in (os.O_RDWR, os.O_RDONLY):  # NFS emulates flock with POSIX locks, which need write access
        try:
            fd = os.open(lock, flags)
            break
        except PermissionError:
            continue
        except OSError:
            return None
    else:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also releases the lock if we took it
    return False


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
    """Across-seed summary per (cell, report group).

    ``rows`` columns: model, benchmark, languages, method, cell_label, cell, group, metric,
    n_seeds, seeds (sorted list), mean, ci_half_width (percent), note (the reason of a group
    not reported on purpose, mean nan; else None), higher_is_better (the group's direction),
    best (bool; best mean of its comparison block and group in the group's direction, ties
    all best), p_vs_best (Welch p against the best's seeds), p_vs_reference (Welch p against
    the seeds of the block's ``compare_to`` cell), why_no_p_vs_best / why_no_p_vs_reference
    (why a p is nan although there is a cell to test against: a
    :func:`~xlt_runner.results.stats.welch_undefined_reason`), coverage (reference rows
    averaging only some of the group's languages: "k/n langs").

    ``notes``: warning and info lines for the reader (a block without the reference method,
    paper results not found).
    """
    metric: str
    groups: list[str]
    rows: pd.DataFrame
    compare_to: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def lower_is_better(self) -> set[str]:
        """Groups whose best mean is the lowest."""
        return set(self.rows.loc[~self.rows["higher_is_better"].astype(bool), "group"])


CELL_KEY = ("model", "benchmark", "languages", "method", "cell_label", "cell", "group")


def group_table(df: pd.DataFrame, metric: str = "accuracy", compare_to: str | None = None,
                paper_results: str | os.PathLike | None = None) -> GroupTable:
    """Mean ± 95% CI (percent) of each complete cell's group ``metric`` across seeds.

    Groups come from the records' ``groups`` and ``groups_not_reported``, in first-seen
    order. A group whose records say ``higher_is_better: false`` has its lowest mean best;
    records disagreeing on a group's direction raise :class:`ReportError`. ``compare_to``
    (a method name) adds Welch p-values against that method's cell of each comparison block;
    it raises :class:`ReportError` when it names no method present or when a block has
    several cells of it. For accuracy, SIB-200 blocks get reference rows from the SIB-200
    paper (:func:`sib200_reference_rows`) and the XPE paper (:func:`xpe_paper_rows`, read from
    ``paper_results`` or found next to the benchmark data).
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    runs = complete_runs(df)
    groups: list[str] = []
    higher_is_better: dict[str, bool] = {}
    samples: dict[tuple, dict] = {}
    not_reported: dict[tuple, dict] = {}
    for run in runs.itertuples():
        cell = tuple(getattr(run, column) for column in CELL_KEY[:-1])
        for group in [*run.groups, *run.groups_not_reported]:
            if group not in groups:
                groups.append(group)
        for group, scores in run.groups.items():
            scores = scores if isinstance(scores, dict) else {}
            direction = bool(scores.get("higher_is_better", True))
            if higher_is_better.setdefault(group, direction) != direction:
                raise ReportError(f"Records disagree on the direction of group {group!r}: {run.run_dir} has "
                                  f"higher_is_better={direction}, an earlier record higher_is_better={not direction}.")
            if scores.get(metric) is None:
                continue
            sample = samples.setdefault((*cell, group), {"seeds": [], "values": []})
            sample["seeds"].append(run.seed)
            sample["values"].append(100.0 * float(scores[metric]))
        for group, reason in run.groups_not_reported.items():
            not_reported.setdefault((*cell, group), {"seeds": [], "reason": str(reason)})["seeds"].append(run.seed)
    rows = []
    for key, sample in samples.items():
        order = sorted(range(len(sample["seeds"])), key=lambda i: sample["seeds"][i])
        values = [sample["values"][i] for i in order]
        mean, half_width = mean_ci(values, CONFIDENCE)
        rows.append(dict(zip(CELL_KEY, key), metric=metric, n_seeds=len(values),
                         seeds=[sample["seeds"][i] for i in order], values=values, mean=mean,
                         ci_half_width=half_width, note=None))
    for key, sample in not_reported.items():
        if key not in samples:
            rows.append(dict(zip(CELL_KEY, key), metric=metric, n_seeds=len(sample["seeds"]),
                             seeds=sorted(sample["seeds"]), values=[], mean=math.nan, ci_half_width=math.nan,
                             note=sample["reason"]))
    table = pd.DataFrame(rows, columns=[*CELL_KEY, "metric", "n_seeds", "seeds", "values", "mean",
                                        "ci_half_width", "note", "coverage"])
    table["best"] = False
    for column in ("p_vs_best", "p_vs_reference"):
        table[column] = math.nan
        table[f"why_no_{column}"] = None
    scored = table[table["mean"].notna()]
    for (*_, group), block in scored.groupby([*BLOCK_COLUMNS, "group"], sort=False):
        top = block["mean"].max() if higher_is_better.get(group, True) else block["mean"].min()
        best_index = block.index[block["mean"].apply(lambda m: math.isclose(m, top))]
        table.loc[best_index, "best"] = True
        _welch_tests(table, block.index.difference(best_index), best_index[0], "p_vs_best")
    notes = _tests_against_reference_method(table, scored, compare_to) if compare_to is not None else []
    table = table.sort_values([*BLOCK_COLUMNS, "cell_label"], kind="stable", ignore_index=True)
    if metric == "accuracy":
        # lower-is-better groups (the language-ID probe's) measure something else: no task reference
        accuracy_groups = [g for g in groups if higher_is_better.get(g, True)]
        paper_rows, paper_notes = xpe_paper_rows(runs, accuracy_groups, paper_results)
        table = pd.concat([table, sib200_reference_rows(runs, accuracy_groups), paper_rows], ignore_index=True)
        notes += paper_notes
    table["higher_is_better"] = table["group"].map(lambda g: higher_is_better.get(g, True))
    return GroupTable(metric=metric, groups=groups, rows=table.drop(columns="values"), compare_to=compare_to,
                      notes=notes)


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


SIB200_REFERENCE_LABEL = "SIB-200 paper: XLM-R large, full FT (reference)"


def _reference_groups(block: pd.DataFrame, groups: list[str]) -> list[str]:
    """``groups`` less those the block's runs do not report (n/r): a reference number there would
    fill a column the comparison leaves blank on purpose."""
    withheld = set().union(*(set(g) for g in block["groups_not_reported"]))
    return [group for group in groups if group not in withheld]


def sib200_reference_rows(runs: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """For SIB-200 blocks, the SIB-200 paper's fully supervised XLM-R-large accuracy
    (Table 7) averaged over each report group's languages, as a reference row that is
    never marked best (n_seeds 0). Languages without a published number are skipped."""
    from xlt_runner.data.languages import LanguageTable

    table = LanguageTable.default()
    rows = []
    sib = runs[runs["benchmark"] == "sib200"] if len(runs) else runs
    for key, block in sib.groupby(list(BLOCK_COLUMNS), sort=False) if len(sib) else []:
        members = block.iloc[0]["group_members"] or {}
        for group in _reference_groups(block, groups):
            scores = [table[c].sib200_xlmr_large_acc for c in members.get(group, [])
                      if c in table and table[c].sib200_xlmr_large_acc is not None]
            if scores:
                rows.append(dict(zip(BLOCK_COLUMNS, key), method="reference", cell_label=SIB200_REFERENCE_LABEL,
                                 cell="sib200_paper", group=group, metric="accuracy", n_seeds=0, seeds=[],
                                 values=[], mean=sum(scores) / len(scores), ci_half_width=math.nan,
                                 best=False, p_vs_best=math.nan))
    return pd.DataFrame(rows)


XPE_PAPER_FILE = "xpe_paper_appendix_a.tsv"
#: Source sets (``languages`` config names) and methods with a column ``<source>_<method>`` in :data:`XPE_PAPER_FILE`.
XPE_PAPER_SOURCE_SETS = ("enarzho", "joshi5", "seen")
XPE_PAPER_METHODS = ("spt", "dual_xpe30", "dual_xpe70", "xpe")
#: Codes of the extracted appendix that are typos of SIB-200 codes.
XPE_PAPER_CODE_FIXES = {"maj_Deva": "mai_Deva"}


def read_xpe_paper_results(path: str | os.PathLike) -> pd.DataFrame:
    """The XPE paper's Appendix A (per-language accuracy in %, XLM-R large, mean of 10 seeds)
    indexed by SIB-200 code, columns ``<source>_<method>``; a code unknown to the language
    table is corrected by :data:`XPE_PAPER_CODE_FIXES`."""
    from xlt_runner.data.languages import LanguageTable

    known = LanguageTable.default()
    results = pd.read_csv(path, sep="\t")
    results["lang"] = [code if code in known else XPE_PAPER_CODE_FIXES.get(code, code) for code in results["lang"]]
    return results.set_index("lang")


def xpe_paper_rows(runs: pd.DataFrame, groups: list[str],
                   path: str | os.PathLike | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(rows, info lines): the XPE paper's per-group means for the SIB-200 blocks of ``runs``
    (complete runs) whose languages config is a paper source set, one reference row (n_seeds 0,
    never best) per paper method in the block. A group's value is the mean of the paper's
    values over its members (``group_members`` of the block's first record) that have one;
    ``coverage`` says "k/n langs" when only k of its n members have one.

    Without ``path``, the file is looked for at ``<benchmark.data_dir>/../meta/``
    :data:`XPE_PAPER_FILE` of the records (relative to the working directory); if it is not
    there, no rows and an info line saying how to add them.
    """
    eligible = runs[(runs["benchmark"] == "sib200") & runs["languages"].isin(XPE_PAPER_SOURCE_SETS)
                    & runs["method"].isin(XPE_PAPER_METHODS)] if len(runs) else runs
    if eligible.empty:
        return pd.DataFrame(), []
    if path is None:
        candidates = list(dict.fromkeys(Path(data_dir).expanduser() / ".." / "meta" / XPE_PAPER_FILE
                                        for data_dir in eligible["benchmark_data_dir"] if data_dir))
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            looked = f" (looked at {', '.join(map(str, candidates))})" if candidates else ""
            return pd.DataFrame(), [f"info: no XPE paper reference rows: {XPE_PAPER_FILE} not found next to the "
                                    f"benchmark data{looked}; add them with --paper-results PATH."]
    paper = read_xpe_paper_results(path)
    rows = []
    for key, block in eligible.groupby(list(BLOCK_COLUMNS), sort=False):
        members = block.iloc[0]["group_members"]
        for method in (m for m in XPE_PAPER_METHODS if m in set(block["method"])):
            column = paper[f"{key[2]}_{method}"].dropna()
            for group in _reference_groups(block, groups):
                codes = members.get(group) or []
                values = [column[code] for code in codes if code in column.index]
                if not values:
                    continue
                rows.append(dict(zip(BLOCK_COLUMNS, key), method="reference",
                                 cell_label=f"XPE paper: {method}, XLM-R large, 10 seeds (reference)",
                                 cell=f"xpe_paper_{method}", group=group, metric="accuracy", n_seeds=0, seeds=[],
                                 values=[], mean=sum(values) / len(values), ci_half_width=math.nan, best=False,
                                 p_vs_best=math.nan,
                                 coverage=f"{len(values)}/{len(codes)} langs" if len(values) < len(codes) else None))
    return pd.DataFrame(rows), []


SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _footnote_marker(number: int, style: str) -> str:
    return rf"$^{{{number}}}$" if style == "tex" else str(number).translate(SUPERSCRIPT_DIGITS)


def not_reported_reasons(table: GroupTable) -> list[str]:
    """The distinct reasons of the not-reported cells, in table order (footnote k is reason k-1)."""
    return list(dict.fromkeys(table.rows["note"].dropna()))


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def format_cell(row: pd.Series | None, style: str, compare_to: str | None = None,
                reasons: list[str] | None = None) -> str:
    """One table cell, style md | tex | rich: ``mean ± ci (n=k)`` with bold best and Welch p
    (``p=… vs best; p=… vs <compare_to>`` when ``compare_to`` is given), ``(n=1: no test)``
    for one seed, ``mean (paper[, k/n langs])`` for a reference row, ``n/r`` plus the footnote
    number of its reason in ``reasons`` for a group not reported, ``–`` for no data."""
    if row is None:
        return "–" if style != "tex" else "--"
    if pd.notna(row["note"]):
        return "n/r" + _footnote_marker((reasons or []).index(row["note"]) + 1, style)
    if not math.isfinite(row["mean"]):
        return "–" if style != "tex" else "--"
    small = (lambda text: rf" {{\scriptsize {text}}}") if style == "tex" else (lambda text: f" {text}")
    pm = r"$\pm$" if style == "tex" else "±"
    text = f"{row['mean']:.1f}" + (f" {pm} {row['ci_half_width']:.1f}" if math.isfinite(row["ci_half_width"]) else "")
    if row["best"]:
        text = {"md": f"**{text}**", "tex": rf"\textbf{{{text}}}", "rich": f"[bold]{text}[/bold]"}[style]
    if row["n_seeds"] == 0:  # a published reference number, not a run of ours
        return text + small(f"(paper, {row['coverage']})" if pd.notna(row["coverage"]) else "(paper)")
    if row["n_seeds"] == 1:
        return text + small("(n=1: no test)")
    text += small(f"(n={row['n_seeds']})" if style != "tex" else f"({row['n_seeds']})")
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
    """(header, body rows, constants): one row per cell, one column per group; the header of
    a lower-is-better group is marked ↓ (tex: escaped, ``$\\downarrow$``).

    Block columns (model/benchmark/languages) whose value is the same everywhere are left
    out of the rows and returned in ``constants`` instead.
    """
    rows = table.rows
    constants = {c: str(rows[c].iloc[0]) for c in BLOCK_COLUMNS if rows[c].nunique() == 1} if len(rows) else {}
    label_columns = [c for c in BLOCK_COLUMNS if c not in constants] + ["method"]
    lower_is_better = table.lower_is_better
    name = _latex_escape if style == "tex" else str
    down = r" $\downarrow$" if style == "tex" else " ↓"
    header = label_columns + [name(g) + (down if g in lower_is_better else "") for g in table.groups]
    reasons = not_reported_reasons(table)
    body = []
    for _, cell_rows in rows.groupby([*BLOCK_COLUMNS, "cell_label", "cell"], sort=False):
        by_group = {row["group"]: row for _, row in cell_rows.iterrows()}
        first = cell_rows.iloc[0]
        labels = [str(first[c]) for c in label_columns[:-1]] + [str(first["cell_label"])]
        body.append(labels + [format_cell(by_group.get(g), style, table.compare_to, reasons) for g in table.groups])
    return header, body, constants


def _footnotes(table: GroupTable, style: str) -> list[str]:
    return [f"{_footnote_marker(number, style)} n/r: not reported: {reason}"
            for number, reason in enumerate(not_reported_reasons(table), start=1)]


def _legend(table: GroupTable) -> str:
    rows, reference = table.rows, table.compare_to
    parts = [f"Test {table.metric} (%) per report group: mean ± {CONFIDENCE:.0%} CI half-width (Student t, "
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
    if table.lower_is_better:
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
    lines += [r"\begin{tabular}{" + "l" * n_labels + "r" * len(table.groups) + "}", r"\toprule",
              " & ".join(escape_labels(header)) + r" \\", r"\midrule"]
    lines += [" & ".join(escape_labels(cells)) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_tables(table: GroupTable, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.csv`` (long, numeric: one row per cell x group with the columns of
    :class:`GroupTable`, ``best`` as a boolean column, seeds ';'-joined; a group not reported
    has an empty mean and its reason in ``note``), ``report.md`` and ``report.tex``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = table.rows.assign(seeds=table.rows["seeds"].apply(lambda seeds: ";".join(map(str, seeds))))
    paths = [out / "report.csv", out / "report.md", out / "report.tex"]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    write_text_atomic(paths[1], format_markdown(table))
    write_text_atomic(paths[2], format_latex(table))
    return paths


# ------------------------------------------------------------------------ per language
def per_language_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of the complete runs of ``df``: one row per (run, language).

    Columns: run_id, run_dir, sweep_name, cell, cell_label, cell_name, method, model,
    benchmark, languages, seed, language, accuracy, macro_f1 (fractions 0-1), n (examples).
    """
    columns = ["run_id", "run_dir", "sweep_name", "cell", "cell_label", "cell_name", "method", *BLOCK_COLUMNS, "seed"]
    rows = []
    for _, run in df[df["status"] == "complete"].iterrows():
        for language, scores in run["per_language"].items():
            rows.append({**{c: run[c] for c in columns}, "language": language, "accuracy": scores.get("accuracy"),
                         "macro_f1": scores.get("macro_f1"), "n": scores.get("n")})
    return pd.DataFrame(rows, columns=[*columns, "language", *METRICS, "n"])


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
                      metric: str = "accuracy") -> Path:
    """PNG of per-language test ``metric`` (%, mean over complete seeds), one series per cell.

    x: languages in :func:`figure_groups` order, with a gap, a dotted separator and a label
    per group; dashed horizontal segments give each series' unweighted mean over the group's
    languages. The figure widens with the number of languages (~0.13 inch each). The file is
    written atomically (format from ``out_path``'s suffix, PNG without one). Raises ValueError
    when no complete run has per-language scores.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = per_language_scores(complete_runs(df))
    if scores.empty:
        raise ValueError("No complete run with per-language scores to plot.")
    means = scores.groupby(["language", "cell_name"])[metric].mean().unstack("cell_name") * 100.0
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
    lowest = float(means.min().min())
    ax.set_ylim(max(0.0, 10.0 * math.floor(lowest / 10.0) - 5.0) if math.isfinite(lowest) else 0.0, 100.5)
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(axis="y", linewidth=0.4, alpha=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.16 if n_languages > 20 else -0.1), ncol=min(4, means.shape[1]),
              fontsize=8, frameon=False)
    ax.set_title(f"Per-language test {metric}, mean over seeds (dashed: group mean); "
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


def _log_to_wandb(root: Path, out: Path, table: GroupTable, status: SweepStatus, plot_path: Path | None) -> None:
    """Log the tables and plot as one wandb run (job_type "report"); project and mode from
    ``WANDB_PROJECT`` (default xlt_runner) and ``WANDB_MODE`` (default offline)."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "xlt_runner"), job_type="report", dir=str(out),
                     name=f"report-{root.resolve().name}", mode=os.environ.get("WANDB_MODE", "offline"),
                     config={"root": str(root), "metric": table.metric})
    logged = {"group_table": wandb.Table(dataframe=table.rows.astype({"seeds": str})),
              "sweep_status": wandb.Table(dataframe=status.summary)}
    if plot_path is not None:
        logged["per_language"] = wandb.Image(str(plot_path))
    run.log(logged)
    run.finish()


def report_main(argv: list[str] | None = None) -> int:
    """``xlt-report PATH [--out DIR] [--metric accuracy|macro_f1] [--compare-to METHOD]
    [--paper-results TSV] [--wandb]``.

    Exit codes: 0 report written; 1 no complete run under PATH; 2 PATH is not a directory,
    the ``--paper-results`` file does not exist, or the records cannot be reported as asked
    (:class:`ReportError`, e.g. ``--compare-to`` names no method present).
    """
    from rich.console import Console
    from rich.markup import escape

    parser = argparse.ArgumentParser(prog="xlt-report", description="Summarise the runs under PATH: group table "
                                     "(mean ± 95% CI over seeds; per model/benchmark/languages and group, the best "
                                     "cell in the group's direction and Welch p-values against it; published "
                                     "reference rows for SIB-200), sweep status, per-language plot and export.")
    parser.add_argument("path", help="an output root, e.g. outputs/ or outputs/sweeps/<sweep_name>")
    parser.add_argument("--out", help="where to write the report files (default: PATH/report)")
    parser.add_argument("--metric", choices=METRICS, default="accuracy",
                        help="the group score to tabulate (default: accuracy; reference rows are accuracy only)")
    parser.add_argument("--compare-to", metavar="METHOD",
                        help="also give each cell the Welch p-value against the METHOD cell (a record's method, "
                             "e.g. spt) with the same model/benchmark/languages, beside the p-value against the best")
    parser.add_argument("--paper-results", metavar="TSV",
                        help=f"the XPE paper's per-language results ({XPE_PAPER_FILE}) for the paper's reference "
                             "rows of SIB-200 sweeps with a paper source set (enarzho, joshi5, seen); default: "
                             f"<benchmark.data_dir>/../meta/{XPE_PAPER_FILE} of the records, if it exists")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and plot to wandb")
    args = parser.parse_args(argv)
    root = Path(args.path)
    console = Console()
    if not root.is_dir():
        print(f"xlt-report: {root} is not a directory; pass the output root of your runs "
              "(e.g. outputs/ or outputs/sweeps/<sweep_name>).", file=sys.stderr)
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
    if not (runs["status"] == "complete").any():
        console.print(f"No complete runs under {escape(str(root))} ({len(runs)} record(s) found); nothing to report.")
        return 1
    try:
        table = group_table(runs, args.metric, args.compare_to, args.paper_results)
    except ReportError as exc:
        print(f"xlt-report: error: {exc}", file=sys.stderr)
        return 2
    for note in table.notes:
        console.print(escape(note))
    header, body, constants = wide_rows(table, "rich")
    _print_table(console, f"Test {args.metric} (%) " + escape(" ".join(f"{k}={v}" for k, v in constants.items())),
                 header, [[escape(c) for c in cells[:len(header) - len(table.groups)]] + cells[len(header)
                          - len(table.groups):] for cells in body])
    for line in [*_footnotes(table, "rich"), _legend(table)]:
        console.print(escape(line))
    paths = write_tables(table, out) + export_all(runs, out) + [out / "status.csv"]
    plot_path = plot_per_language(runs, out / f"per_language_{args.metric}.png", metric=args.metric)
    console.print("Wrote: " + ", ".join(escape(str(p)) for p in paths))
    console.print(f"Plot: {escape(str(plot_path))}")
    if args.wandb:
        _log_to_wandb(root, out, table, status, plot_path)
    return 0
