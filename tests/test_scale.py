"""Cluster-scale behaviour through the CLI on a tiny model: preemption and resume,
determinism, concurrent sweeps over one directory, failure containment under
submitit_local, detached sweeps, DDP evaluation on 2 CPU processes, launcher config
composition."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, find_records, run_cli, tiny_run_args

LONG_RUN = ("method=full_ft", "trainer.max_steps=40", "trainer.val_check_interval=10",
            "trainer.early_stopping_patience=3", "languages.groups=[all-enarzho]")


def cli_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}


def popen_cli(args: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "xlt_runner", *args], cwd=REPO, env=cli_env(),
                            stdout=handle, stderr=subprocess.STDOUT, text=True)


def results_of(record: dict) -> tuple:
    return record["per_language"], record["best"]


@pytest.fixture(scope="module")
def reference(synthetic_data, shared_cache, tmp_path_factory):
    """An uninterrupted 40-step run."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli(tiny_run_args(synthetic_data, out, shared_cache, *LONG_RUN))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    return record


def test_same_config_twice_gives_identical_metrics(reference, synthetic_data, shared_cache, tmp_path):
    result = run_cli(tiny_run_args(synthetic_data, tmp_path, shared_cache, *LONG_RUN))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    assert record["run_id"] == reference["run_id"]
    assert results_of(record) == results_of(reference)


def test_sigterm_mid_training_then_relaunch_resumes_to_identical_metrics(reference, synthetic_data, shared_cache, tmp_path):
    args = tiny_run_args(synthetic_data, tmp_path, shared_cache, *LONG_RUN)
    proc = popen_cli(args, tmp_path / "first.log")
    deadline = time.time() + 300
    best = None
    while time.time() < deadline and proc.poll() is None:  # first validation (step 10) has written best.safetensors
        best = next(tmp_path.rglob("checkpoints/best.safetensors"), None)
        if best is not None:
            break
        time.sleep(0.05)
    assert best is not None, (tmp_path / "first.log").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    (record,) = find_records(tmp_path)
    assert record["status"] == "preempted" and "SIGTERM" in record["error"]["message"], record["error"]
    resume = best.parent / "resume.ckpt"
    import torch
    stopped_at = torch.load(resume, map_location="cpu", weights_only=True)["global_step"]
    assert 10 <= stopped_at < 40, "the signal must arrive mid-training for this test to mean anything"

    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    (record,) = find_records(tmp_path)
    assert record["status"] == "complete" and record["resumed_from_step"] == stopped_at
    assert record["attempt"] == 2 and not resume.exists()
    assert record["best"] == reference["best"]
    for lang, metrics in reference["per_language"].items():
        got = record["per_language"][lang]
        assert got["n"] == metrics["n"]
        assert got["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
        assert got["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-6)


def test_two_concurrent_sweeps_into_one_directory_run_each_job_once(synthetic_data, shared_cache, tmp_path):
    args = ["-m", "seed=0,1,2", "method=head_only", *tiny_run_args(synthetic_data, tmp_path, shared_cache,
                                                                "sweep_name=shared", "trainer.max_steps=2")]
    procs = [popen_cli(args, tmp_path / f"sweep{i}.log") for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    logs = "".join((tmp_path / f"sweep{i}.log").read_text() for i in range(2))
    records = find_records(tmp_path / "sweeps" / "shared")
    assert sorted(r["seed"] for r in records) == [0, 1, 2]
    assert all(r["status"] == "complete" for r in records)
    for record in records:  # each run trained and tested by exactly one of the two sweeps
        assert logs.count(f"{record['run_id']}: test accuracy") == 1, logs[-4000:]


def test_submitit_local_failure_is_contained_then_relaunch_reruns_only_it(synthetic_data, shared_cache, tmp_path):
    from xlt_runner.cli import compose
    from xlt_runner.identity import run_id

    base = [a for a in tiny_run_args(synthetic_data, tmp_path, shared_cache, "sweep_name=six", "trainer.max_steps=2",
                                     "method=head_only") if not a.startswith("benchmark.batch_size=")]
    args = ["-m", "hydra/launcher=submitit_local", "seed=0,1,2", "benchmark.batch_size=4,8", *base]
    # fault: seed=1 batch_size=8 finds a corrupt resume checkpoint in its run directory
    broken_overrides = [*base, "seed=1", "benchmark.batch_size=8"]
    broken_dir = tmp_path / "sweeps" / "six" / run_id(compose(broken_overrides))
    (broken_dir / "checkpoints").mkdir(parents=True)
    (broken_dir / "checkpoints" / "resume.ckpt").write_bytes(b"not a checkpoint")

    result = run_cli(args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 job(s) failed" in result.stderr and str(broken_dir.name) in result.stderr
    records = {r["run_id"]: r for r in find_records(tmp_path / "sweeps" / "six")}
    assert len(records) == 6
    failed = [r for r in records.values() if r["status"] != "complete"]
    assert [r["run_id"] for r in failed] == [broken_dir.name]
    assert failed[0]["status"] == "failed" and failed[0]["error"]["traceback"] and failed[0]["config"]

    (broken_dir / "checkpoints" / "resume.ckpt").unlink()  # the fix
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    after = {r["run_id"]: r for r in find_records(tmp_path / "sweeps" / "six")}
    assert all(r["status"] == "complete" for r in after.values())
    rerun = [k for k in after if after[k]["started_at"] != records[k]["started_at"]]
    assert rerun == [broken_dir.name]
    assert sorted(after[k]["attempt"] for k in rerun) == [2]


def test_detach_returns_at_once_and_the_sweep_finishes_in_the_background(synthetic_data, shared_cache, tmp_path):
    args = ["--detach", "-m", "seed=0,1", "method=head_only",
            *tiny_run_args(synthetic_data, tmp_path, shared_cache, "sweep_name=bg", "trainer.max_steps=2")]
    result = run_cli(args, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    pid = int(result.stdout.split("(pid ")[1].split(")")[0])
    os.kill(pid, 0)  # the sweep is still running (it is still importing torch) when the command returns
    sweep_dir = tmp_path / "sweeps" / "bg"
    (log,) = sweep_dir.glob("xlt-run-*.log")
    assert str(log) in result.stdout and f"xlt-report {sweep_dir}" in result.stdout
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len([r for r in find_records(sweep_dir) if r["status"] == "complete"]) < 2:
        time.sleep(1)
    assert sorted(r["seed"] for r in find_records(sweep_dir)) == [0, 1]
    assert log.read_text().count("test accuracy by group") == 2


def test_detach_still_rejects_a_bad_config_in_the_foreground(tmp_path):
    result = run_cli(["--detach", "-m", "seed=0,1", "method=head_onyl", f"paths.output_root={tmp_path}"], timeout=120)
    assert result.returncode == 2 and "Did you mean method=head_only" in result.stderr
    assert not list(tmp_path.rglob("xlt-run-*.log"))


def test_ddp_on_two_cpu_processes_evaluates_like_one(reference, synthetic_data, shared_cache, tmp_path):
    weights = next(Path(p) for p in Path(reference["config"]["paths"]["output_root"]).rglob("method_weights.safetensors"))
    common = ("method=full_ft", f"method.init_from={weights}", "method.optim.lr=0", "trainer.max_steps=1",
              "trainer.val_check_interval=1", "trainer.accelerator=cpu", "languages.groups=[all-enarzho]")
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        extra = ("trainer.strategy=ddp", "trainer.devices=2") if devices == 2 else ("trainer.devices=1",)
        result = run_cli(tiny_run_args(synthetic_data, out, shared_cache, *common, *extra), timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        (record,) = find_records(out)  # rank 1 wrote no record of its own
        outputs[devices] = record
    one, two = outputs[1]["per_language"], outputs[2]["per_language"]
    assert {k: v["n"] for k, v in one.items()} == {k: v["n"] for k, v in two.items()} == {k: 21 for k in one}
    for lang in one:
        assert two[lang]["accuracy"] == pytest.approx(one[lang]["accuracy"], abs=1e-6)
        assert two[lang]["macro_f1"] == pytest.approx(one[lang]["macro_f1"], abs=1e-6)
    assert outputs[2]["config"]["trainer"]["devices"] == 2


@pytest.mark.parametrize("launcher", ["slurm_a100", "submitit_local"])
def test_launcher_and_strategy_configs_compose(launcher, monkeypatch):
    from xlt_runner.cli import compose
    monkeypatch.setenv("XLT_SLURM_PARTITION", "gpu-a100")
    cfg = compose([f"hydra/launcher={launcher}", "trainer=ddp"], with_hydra=True)
    from omegaconf import OmegaConf
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher_cfg["_target_"].endswith("SlurmLauncher" if launcher == "slurm_a100" else "LocalLauncher")
    if launcher == "slurm_a100":
        assert cfg.hydra.launcher.partition == "gpu-a100"
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 8
        assert cfg.hydra.launcher.account is None
    assert cfg.trainer.strategy == "ddp"
    assert compose(["trainer=fsdp", "model=llama31_8b"]).trainer.strategy == "fsdp"


def test_preempted_record_counts_as_failed_in_sweep_status(tmp_path):
    from xlt_runner.results.report import sweep_status
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({
        "status": "preempted", "run_id": "x", "sweep_name": "s", "method": "m", "model": "t", "benchmark": "b",
        "languages": "l", "seed": 0, "overrides": [], "per_language": {}, "groups": {}, "config": {},
        "error": {"type": "RunPreempted", "message": "received SIGTERM"}}))
    status = sweep_status(tmp_path)
    assert list(status.runs["status"]) == ["failed"]
