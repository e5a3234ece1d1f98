"""Faults a user must see plainly: dead and unreadable runs in the sweep status, Hub loads that
cannot work failing fast, what trust_remote_code runs, shareable and atomic report files.

No test touches the network: offline mode and an unreachable Hub are simulated.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from test_results import make_record
from xlt_runner.fileio import atomic_path, write_json_atomic
from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.models import build_tiny_model, load_backbone
from xlt_runner.models import loading
from xlt_runner.results import record, report
from xlt_runner.resume import LOCK_FILE, RunLock

HOST = os.uname().nodename


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _running_record(tmp_path: Path, name: str = "run", **fields) -> Path:
    """A ``running`` record under ``tmp_path/name`` with the given host/pid/started_at fields."""
    run_dir = tmp_path / name
    write_json_atomic(run_dir / record.RESULTS_FILE, {**make_record("lora", 0, status="running"), **fields})
    return run_dir


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def wide_console(monkeypatch):
    """``xlt-report`` output without line wrapping (rich reads COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "1000")


def _status_of(root: Path) -> pd.Series:
    return report.sweep_status(root).runs.set_index("run_dir")["status"]


# ---------------------------------------------------------------- (10) dead and unreadable runs
def test_running_record_whose_local_process_is_gone_is_dead(tmp_path, capsys, wide_console):
    pid = _dead_pid()
    run_dir = _running_record(tmp_path, host=HOST, pid=pid, started_at=_now())
    status = report.sweep_status(tmp_path)
    assert status.runs["status"].tolist() == ["dead"]
    assert f"its process {pid} on {HOST} has ended (no such process)" in status.runs["error"].iloc[0]
    assert status.summary[["done", "running", "dead", "failed"]].values.tolist() == [[0, 0, 1, 0]]
    assert report.report_main([str(tmp_path)]) == 1  # a dead run is not a result
    assert f"dead {run_dir}: the record says running" in capsys.readouterr().out
    assert not (run_dir / LOCK_FILE).exists()  # probing never creates a lock file


def test_run_lock_decides_even_when_the_pid_is_alive(tmp_path):
    """A free run lock means no process runs the record, whoever holds its pid now (the same
    process may have moved on to another run of a multirun); a held lock means running."""
    run_dir = _running_record(tmp_path, host=HOST, pid=os.getpid(), started_at=_now())
    lock = RunLock(run_dir)
    assert lock.acquire()
    try:
        assert _status_of(tmp_path)[str(run_dir)] == "running"
    finally:
        lock.release()
    assert (run_dir / LOCK_FILE).exists()
    assert _status_of(tmp_path)[str(run_dir)] == "dead"
    assert "the run lock" in report.sweep_status(tmp_path).runs["error"].iloc[0]


def test_live_pid_without_lock_is_running_unless_reused(tmp_path):
    live = _running_record(tmp_path, "live", host=HOST, pid=os.getpid(), started_at=_now())
    assert _status_of(tmp_path)[str(live)] == "running"
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("process start times need Linux /proc")
    # this process started after the recorded start: the pid belongs to another process now
    reused = _running_record(tmp_path, "reused", host=HOST, pid=os.getpid(), started_at="2020-01-01T00:00:00+00:00")
    status = report.sweep_status(tmp_path).runs.set_index("run_dir")
    assert status.at[str(reused), "status"] == "dead"
    assert "now belongs to a process started at" in status.at[str(reused), "error"]


def test_record_from_another_host_stays_running(tmp_path):
    run_dir = _running_record(tmp_path, host=f"not-{HOST}", pid=_dead_pid(), started_at=_now())
    (run_dir / LOCK_FILE).touch()  # free here, but a lock on another host may not be visible from this one
    assert _status_of(tmp_path)[str(run_dir)] == "running"


@pytest.mark.parametrize("content,reason", [
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes"),
    ("[1, 2]", "not a JSON object but an array"),
])
def test_unreadable_record_is_listed_with_its_reason(tmp_path, capsys, wide_console, content, reason):
    write_json_atomic(tmp_path / "good" / record.RESULTS_FILE, make_record("lora", 0))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / record.RESULTS_FILE).write_text(content)
    with pytest.warns(UserWarning, match="Unreadable run record"):
        assert report.report_main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"unreadable {tmp_path / 'broken' / record.RESULTS_FILE}: {reason}" in printed
    status = pd.read_csv(tmp_path / "report" / "status.csv").set_index("status")
    assert status.at["unreadable", "cell"] == report.UNREADABLE_CELL
    assert status.at["unreadable", "error"].startswith(reason)


# ------------------------------------------------------------------------ (11) Hub fail-fast
@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; the Hub must not be contacted unless a test allows it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "_hub_unreachable_reason", lambda: pytest.fail("the Hub was contacted"))
    return tmp_path / "hub"


def _offline(monkeypatch, offline: bool) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)  # read from the env at import


def test_offline_hub_id_fails_at_once_without_suggesting_offline_mode(empty_hub_cache, monkeypatch, tmp_path):
    _offline(monkeypatch, True)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        load_backbone(ModelConfig(name="m", pretrained="some-org/some-model"), str(tmp_path))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "model.pretrained='some-org/some-model'" in message and "Hub is switched off" in message
    assert "local directory" in message and "hf download some-org/some-model" in message
    assert "set HF_HUB_OFFLINE" not in message and "HF_HUB_OFFLINE=1" not in message


def test_unreachable_hub_fails_fast_and_suggests_offline_mode(empty_hub_cache, monkeypatch, tmp_path):
    _offline(monkeypatch, False)
    monkeypatch.setattr(loading, "_hub_unreachable_reason", lambda: "ConnectError: simulated")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        load_backbone(ModelConfig(name="m", pretrained="some-org/some-model"), str(tmp_path))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert message.startswith("cannot reach the Hugging Face Hub at ") and "(ConnectError: simulated)" in message
    assert "model.pretrained='some-org/some-model'" in message and "HF_HUB_OFFLINE=1" in message


def _cache_model(hub_cache: Path, repo_id: str, revision: str = "main") -> None:
    """Put a tiny XLM-R into ``hub_cache`` in the Hugging Face cache layout, as ``revision``."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    model, tokenizer = build_tiny_model("xlmr")
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(commit)


@pytest.mark.parametrize("offline", [True, False])
def test_cached_hub_model_loads_offline_and_without_the_hub(empty_hub_cache, monkeypatch, tmp_path, capsys, offline):
    _cache_model(empty_hub_cache, "some-org/cached-model")
    _offline(monkeypatch, offline)
    if not offline:
        monkeypatch.setattr(loading, "_hub_unreachable_reason", lambda: "ConnectError: simulated")
    started = time.perf_counter()
    backbone = load_backbone(ModelConfig(name="m", pretrained="some-org/cached-model"), str(tmp_path))
    assert time.perf_counter() - started < 10  # no retries against the unreachable Hub
    assert backbone.source == "hub:some-org/cached-model" and backbone.hidden_size == 32
    if not offline:
        assert "Hub is unreachable (ConnectError: simulated); loading some-org/cached-model from the cache" \
            in capsys.readouterr().out


# ------------------------------------------------------------------ (12) trust_remote_code notice
def test_trust_remote_code_prints_the_code_before_loading(tmp_path, capsys):
    model, tokenizer = build_tiny_model("xlmr")
    plain, custom = tmp_path / "plain", tmp_path / "custom"
    for directory in (plain, custom):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    load_backbone(ModelConfig(name="m", pretrained=str(plain), trust_remote_code=True), str(tmp_path))
    assert (f"[xlt-run] model.trust_remote_code=true: transformers may run Python code from the local directory "
            f"{plain}; its config.json names no custom code (no auto_map)") in capsys.readouterr().out

    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel",
                          "AutoTokenizer": ["other-org/code--tokenization_tiny.TinyTokenizer", None]}
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception):  # the modules do not exist: the notice must come before any loading
        load_backbone(ModelConfig(name="m", pretrained=str(custom), trust_remote_code=True), str(tmp_path))
    assert (f"Python code from the local directory {custom}: configuration_tiny.py, modeling_tiny.py, "
            "other-org/code:tokenization_tiny.py (config.json auto_map)") in capsys.readouterr().out


def test_trust_remote_code_names_hub_repo_and_revision(empty_hub_cache, monkeypatch, tmp_path, capsys):
    _offline(monkeypatch, True)
    _cache_model(empty_hub_cache, "some-org/cached-model", revision="v1")
    load_backbone(ModelConfig(name="m", pretrained="some-org/cached-model", revision="v1", trust_remote_code=True),
                  str(tmp_path))
    assert ("[xlt-run] model.trust_remote_code=true: transformers may run Python code from the Hub repo "
            "some-org/cached-model at revision v1; its config.json names no custom code") in capsys.readouterr().out


# --------------------------------------------------------- (12) shareable, atomic report files
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"])
def test_records_get_the_mode_the_umask_allows(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "run" / record.RESULTS_FILE, make_record("lora", 0))
        with atomic_path(tmp_path / "run" / "weights.bin") as tmp:
            tmp.write_bytes(b"\0" * 8)
    finally:
        os.umask(previous)
    for name in (record.RESULTS_FILE, "weights.bin"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == mode
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [record.RESULTS_FILE, "weights.bin"]


def _complete_runs(tmp_path: Path) -> pd.DataFrame:
    for seed in (0, 1):
        write_json_atomic(tmp_path / f"r{seed}" / record.RESULTS_FILE, make_record("lora", seed))
    return report.collect_runs(tmp_path)


def _fail_midway(path, *args, **kwargs):
    Path(path).write_bytes(b"half a file")
    raise OSError("disk full (simulated)")


def test_parquet_export_is_atomic(tmp_path, monkeypatch):
    runs, out = _complete_runs(tmp_path), tmp_path / "out"
    parquet = report.export_all(runs, out)[1]
    before = parquet.read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda self, path, **kwargs: _fail_midway(path))
    with pytest.raises(OSError, match="simulated"):
        report.export_all(runs, out)
    assert parquet.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["per_language_all.csv", "per_language_all.parquet"]


def test_plot_is_atomic(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    runs, plot = _complete_runs(tmp_path), tmp_path / "out" / "plot.png"
    report.plot_per_language(runs, plot)
    before = plot.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kwargs: _fail_midway(path))
    with pytest.raises(OSError, match="simulated"):
        report.plot_per_language(runs, plot)
    assert plot.read_bytes() == before
    assert [p.name for p in plot.parent.iterdir()] == ["plot.png"]
