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
from importlib import metadata
from pathlib import Path

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
