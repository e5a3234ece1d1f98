"""The run record: ``<run_dir>/results.json`` and its per-language CSV companion.

A record is written at the start of a run (``status="running"``), and rewritten when the
run ends (``"complete"`` or ``"failed"``). Every write is atomic (:mod:`xlt_runner.fileio`,
whose writers this module re-exports: temporary file in the same directory, fsync,
``os.replace``), so a reader never sees half a file and a crash leaves either the old record
or the new one. Files get the permissions the process umask allows (``0o666 & ~umask``, e.g.
0644 under umask 022), like ``open()``, so a group sharing an output directory can read them.
Only ``"complete"`` records count as results; see SPEC "helper C" for the schema.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import warnings
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from xlt_runner.fileio import write_text_atomic

RESULTS_FILE = "results.json"
PER_LANGUAGE_FILE = "per_language.csv"

#: Distributions whose versions are recorded with every run (name in the record -> distribution).
RECORDED_DISTRIBUTIONS = {
    "torch": "torch",
    "transformers": "transformers",
    "pytorch_lightning": "pytorch-lightning",
    "hydra-core": "hydra-core",
    "omegaconf": "omegaconf",
    "datasets": "datasets",
    "peft": "peft",
    "torchmetrics": "torchmetrics",
    "wandb": "wandb",
    "xlt_runner": "xlt_runner",
}


class _Unset:
    """Marks a :class:`RunRecord` section the run has not reached (left out of ``results.json``)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(kw_only=True, slots=True)
class RunRecord:
    """What a run writes to ``results.json`` (:meth:`to_json`), filled in as the run proceeds.

    The identity and bookkeeping fields are always written; a section still :data:`UNSET`
    (the run has not reached it, or the regime has no such stage) is left out, so a reader can
    tell "not reached" from an explicit ``null`` (``best``/``training`` are ``null`` for a
    method that does not train). Assigning a name that is not a field raises
    ``AttributeError``: a typo cannot add a key no reader knows. Readers work on the JSON
    (:func:`load_record`), which also covers records older than this class.
    """

    # identity and bookkeeping (always written)
    status: str = "running"
    run_id: str
    sweep_name: str
    method: str
    model: str
    benchmark: str
    languages: str
    seed: int
    source_languages: list[str] = field(default_factory=list)
    target_languages: list[str] = field(default_factory=list)
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    group_members: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None  # {"step", "monitor", "mode", "score"} of the tested weights
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage and in total
    config: dict[str, Any]
    overrides: list[str]
    versions: dict[str, str | None]
    git_commit: str | None
    started_at: str
    finished_at: str | None = None
    error: dict[str, str] | None = None  # {"type", "message", "traceback"} of a failed/preempted run
    host: str
    pid: int
    # sections, written once reached
    attempt: int = UNSET  # 2, 3, ... for a relaunch after an unfinished attempt
    data_fingerprint: str = UNSET
    regime: str = UNSET
    task: str = UNSET
    metrics: list[dict[str, Any]] = UNSET  # MetricSpec.to_dict() of every metric the run reports
    primary_metric: str = UNSET
    method_family: str = UNSET
    init_from: dict[str, str] = UNSET  # {"path", "sha256"} of the weights method.init_from resolved to
    merge: dict[str, Any] = UNSET  # layer_swap: the experts (path, sha256, method), the rule, tensors per source
    pooling: str | None = UNSET
    resumed_from_step: int = UNSET
    training: dict[str, Any] | None = UNSET  # {"max_steps", "trained_steps", "stop_reason", "early_stopping"}
    outputs: dict[str, str] = UNSET  # artefact name -> path relative to the run directory
    subsample: dict[str, Any] = UNSET  # how an example cap drew its sample
    train_data: dict[str, Any] = UNSET  # train_data runs: mode and each dataset's name, language, sizes
    groups_not_reported: dict[str, str] = UNSET  # group -> why it has no mean
    zero_shot_per_language: dict[str, dict[str, float]] = UNSET  # target_fit: the scores before tuning
    target_phases: dict[str, dict[str, Any]] = UNSET  # target_fit: each language's best and training
    probe: dict[str, Any] = UNSET  # langid_probe's results
    rag: dict[str, Any] = UNSET  # rag runs: cache counters, models loaded, index, per-stage timings

    def to_json(self) -> dict[str, Any]:
        """The record as ``results.json`` holds it (sections still UNSET left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not UNSET}


class UnreadableRecord(Exception):
    """``results.json`` exists but is not a readable JSON object. ``path`` is the file;
    ``reason`` says what is wrong, e.g. ``not valid JSON: Expecting value: line 1 column 1 (char 0)``."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
                    type(None): "null"}


def load_record(run_dir: str | os.PathLike) -> dict | None:
    """The run's record, or None when ``results.json`` is absent; raises :class:`UnreadableRecord`
    when it cannot be read, is not UTF-8 JSON, or is not a JSON object."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except OSError as exc:
        raise UnreadableRecord(path, f"cannot read it: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UnreadableRecord(path, f"not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise UnreadableRecord(path, f"not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise UnreadableRecord(path, f"not a JSON object but {_JSON_TYPE_NAMES.get(type(record), 'a JSON value')}")
    return record


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The run's record, or None when ``results.json`` is absent.

    An unreadable record (see :func:`load_record`) also gives None, with a warning naming the
    file and the reason: such a run is treated as not complete and will be rerun.
    """
    try:
        return load_record(run_dir)
    except UnreadableRecord as exc:
        warnings.warn(f"Ignoring unreadable run record {exc.path} ({exc.reason}); the run counts as not complete. "
                      "Delete the file or rerun the job to replace it.", stacklevel=2)
        return None


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when ``results.json`` exists, parses, and has ``status == "complete"``."""
    record = read_record(run_dir)
    return record is not None and record.get("status") == "complete"


def write_per_language_csv(run_dir: str | os.PathLike, record: dict) -> None:
    """Write ``<run_dir>/per_language.csv`` atomically from a record.

    Columns: ``language``, one column per metric of the record's specs that its per-language
    results carry (as stored: fractions 0-1 for percentages), ``n`` (test examples), then one
    0/1 column per report group (``group_members``) in record order. Rows follow the record's
    ``per_language`` order. Records without metric specs are classification (accuracy, macro_f1).
    """
    from xlt_runner.metrics.spec import CLASSIFICATION_METRICS
    group_members = record.get("group_members") or {}
    group_sets = {name: set(codes) for name, codes in group_members.items()}
    per_language = record.get("per_language") or {}
    specs = record.get("metrics") or [spec.to_dict() for spec in CLASSIFICATION_METRICS]
    metrics = [spec["name"] for spec in specs if any(spec["name"] in scores for scores in per_language.values())]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["language", *metrics, "n", *group_sets])
    for code, scores in per_language.items():
        writer.writerow([code, *(scores.get(m) for m in metrics), scores.get("n"),
                         *(int(code in members) for members in group_sets.values())])
    write_text_atomic(Path(run_dir) / PER_LANGUAGE_FILE, buffer.getvalue())


def _git_commit(repo_dir: Path) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``repo_dir``, + ``"+dirty"`` when tracked
    files have uncommitted changes; None when git is unavailable or this is not a repository."""
    try:
        commit = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if status.strip() else commit


def environment_info() -> dict:
    """``{"versions": {name: version or None, ..., "python": ...}, "git_commit": str | None}``.

    The commit is that of the checkout containing the installed ``xlt_runner`` package
    (None for a non-editable install outside a repository).
    """
    versions: dict[str, str | None] = {}
    for name, distribution in RECORDED_DISTRIBUTIONS.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    package_dir = Path(__file__).resolve().parent.parent
    return {"versions": versions, "git_commit": _git_commit(package_dir.parent)}
