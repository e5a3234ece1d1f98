"""End-to-end runs through `python -m xlt_runner` (= xlt-run) on a tiny model, and bad input."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SIB_LABELS, find_records, make_synthetic_benchmark, run_cli, tiny_run_args, write_split


@pytest.fixture(scope="module")
def finished_run(synthetic_data, shared_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_cli(tiny_run_args(synthetic_data, out, shared_cache, "method=head_only"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_run_writes_complete_record_and_csv(finished_run):
    out, result = finished_run
    (record,) = find_records(out)
    assert record["status"] == "complete"
    assert record["source_languages"] == ["eng_Latn", "arb_Arab", "zho_Hans"]
    assert sorted(record["per_language"]) == sorted(["eng_Latn", "arb_Arab", "zho_Hans", "fra_Latn", "swh_Latn", "quy_Latn"])
    for metrics in record["per_language"].values():
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1 and metrics["n"] == 21
    # "all" holds the three source languages: no zero-shot mean, and the record says why
    assert set(record["groups"]) == {"unseen"}
    assert record["groups_not_reported"]["all"].startswith("3 of its 6 languages are source (training) languages")
    assert record["pooling"] == "cls"  # tiny_xlmr's model.pooling
    assert record["group_members"]["unseen"] == ["quy_Latn"]
    assert 0 < record["params"]["trainable"] < record["params"]["total"]
    assert record["best"]["step"] in (3, 6)
    assert record["config"]["method"]["name"] == "head_only"
    assert "torch" in record["versions"] and record["timings"]["total_s"] > 0
    run_dir = next(out.rglob("results.json")).parent
    rows = list(csv.DictReader(open(run_dir / "per_language.csv")))
    assert len(rows) == 6 and {"language", "accuracy", "macro_f1"} <= set(rows[0])
    assert (run_dir / "method_weights.safetensors").exists()
    # the best weights hold the head only, not the frozen backbone, and are what method_weights holds
    from safetensors.torch import load_file
    state = load_file(run_dir / "checkpoints" / "best.safetensors")
    assert state and all(k.startswith("head.") for k in state)
    assert (run_dir / "checkpoints" / "best.safetensors").samefile(run_dir / "method_weights.safetensors")


def test_second_run_into_complete_directory_is_skipped(finished_run, synthetic_data, shared_cache):
    out, _ = finished_run
    before = next(out.rglob("results.json")).read_text()
    result = run_cli(tiny_run_args(synthetic_data, out, shared_cache, "method=head_only"))
    assert result.returncode == 0
    assert "skip" in result.stdout and "complete" in result.stdout
    assert next(out.rglob("results.json")).read_text() == before


def test_overwrite_true_reruns(finished_run, synthetic_data, shared_cache):
    out, _ = finished_run
    before = json.loads(next(out.rglob("results.json")).read_text())
    result = run_cli(tiny_run_args(synthetic_data, out, shared_cache, "method=head_only", "overwrite=true"))
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads(next(out.rglob("results.json")).read_text())
    assert after["status"] == "complete" and after["started_at"] >= before["started_at"]
    assert after["per_language"] == before["per_language"]  # same seed, same numbers


def test_missing_data_directory(tmp_path, shared_cache):
    result = run_cli(tiny_run_args(tmp_path / "nowhere", tmp_path / "out", shared_cache))
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "data_dir" in result.stderr


def test_language_with_different_label_set(tmp_path, shared_cache):
    data = make_synthetic_benchmark(tmp_path / "data")
    (data / "fra_Latn" / "labels.txt").write_text("\n".join(SIB_LABELS[:-1] + ["weather"]) + "\n")
    result = run_cli(tiny_run_args(data, tmp_path / "out", shared_cache))
    assert result.returncode == 2
    assert "fra_Latn" in result.stderr and "weather" in result.stderr
    assert all(r["status"] != "complete" for r in find_records(tmp_path / "out"))


def test_empty_split(tmp_path, shared_cache):
    data = make_synthetic_benchmark(tmp_path / "data")
    write_split(data / "swh_Latn" / "test.tsv", [])
    result = run_cli(tiny_run_args(data, tmp_path / "out", shared_cache))
    assert result.returncode == 2
    assert "swh_Latn" in result.stderr and "empty" in result.stderr
    assert all(r["status"] != "complete" for r in find_records(tmp_path / "out"))


def test_nan_loss_stops_naming_the_step(tmp_path, synthetic_data, shared_cache):
    result = run_cli(tiny_run_args(synthetic_data, tmp_path, shared_cache, "method=full_ft",
                                   "method.optim.lr=1e30", "trainer.gradient_clip_val=null"))
    assert result.returncode != 0
    assert "at optimiser step" in result.stderr
    (record,) = find_records(tmp_path)
    assert record["status"] == "failed" and record["error"]["type"] == "NonFiniteValueError"
    assert "at optimiser step" in record["error"]["message"]


def test_sweep_of_two_methods_then_report(tmp_path, synthetic_data, shared_cache):
    args = tiny_run_args(synthetic_data, tmp_path, shared_cache, "sweep_name=pair")
    result = run_cli(["-m", "method=head_only,full_ft", "seed=0,1", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    records = find_records(tmp_path / "sweeps" / "pair")
    assert sorted((r["method"], r["seed"]) for r in records) == [("full_ft", 0), ("full_ft", 1), ("head_only", 0), ("head_only", 1)]
    assert all(r["status"] == "complete" for r in records)
    report = Path(sys.executable).parent / "xlt-report"
    import subprocess
    rep = subprocess.run([str(report), str(tmp_path / "sweeps" / "pair")], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    assert "head_only" in rep.stdout and "full_ft" in rep.stdout and "±" in rep.stdout
    out_dir = tmp_path / "sweeps" / "pair" / "report"
    for name in ("report.md", "report.csv", "report.tex"):
        assert (out_dir / name).exists(), list(out_dir.iterdir())
    assert any(p.suffix == ".png" and p.stat().st_size > 10_000 for p in out_dir.iterdir())


def test_wandb_offline_run_logs_per_language_table(tmp_path, synthetic_data, shared_cache):
    args = [a for a in tiny_run_args(synthetic_data, tmp_path, shared_cache) if a != "logger=none"]
    result = run_cli(args + ["logger=default", "sweep_name=wb"])
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    run_dir = next(tmp_path.rglob("results.json")).parent
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and record["run_id"] in offline[0].name, "wandb run id derives from the run id"
    assert list(offline[0].rglob("per_language*.table.json")), "the per-language table is logged as a wandb Table"
    assert (run_dir / "csv" / "metrics.csv").exists()


@pytest.mark.slow
def test_smoke_run_on_packaged_multilingual_e5_small(tmp_path, shared_cache):
    """The real packaged encoder, through the CLI, on the generated CLDR demo benchmark."""
    result = run_cli(["model=me5_small", "benchmark=cldr_demo", "method=head_only", "logger=none",
                      "languages.targets=[eng_Latn,fra_Latn,deu_Latn,swh_Latn]", "languages.groups=[all-enarzho]",
                      "trainer.max_steps=30", "trainer.val_check_interval=15", "trainer.enable_progress_bar=false",
                      f"paths.output_root={tmp_path}", f"paths.cache_dir={shared_cache}"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    assert record["status"] == "complete" and record["params"]["total"] > 100_000_000
    assert record["groups"]["all-enarzho"]["accuracy"] > 1 / 7 + 0.1, "the real encoder must beat 7-class chance clearly"


def test_train_overhead_bench_runs_on_the_tiny_model(synthetic_data, tmp_path):
    """``bench/train_overhead.py`` drives the runner's own trainer parts (build_callbacks, the checkpoint
    callback): a smoke run keeps it in step with their signatures."""
    result = subprocess.run([sys.executable, "bench/train_overhead.py", "--model", "tiny_xlmr", "--methods", "head_only",
                             "--steps", "2", "--warmup", "1", "--repeats", "1", "--data-dir", str(synthetic_data)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max |loss - plain loss| over all steps and runs = 0.00e+00" in result.stdout


def test_a_sweep_reports_only_its_own_failed_jobs(tmp_path):
    """Two commands may share a sweep directory (e.g. two languages of one preset in parallel): a
    failure of the other command's job is not this command's."""
    import json
    import time

    from xlt_runner.cli import failed_records_since, output_dir
    argv = ["-m", f"paths.output_root={tmp_path}", "sweep_name=shared", "seed=0,1"]
    sweep = output_dir(argv)
    started = time.time()
    for run_id in ("mine", "theirs"):
        (sweep / run_id).mkdir(parents=True)
        (sweep / run_id / "results.json").write_text(json.dumps({
            "run_id": run_id, "status": "failed", "started_at": "2099-01-01T00:00:00+00:00",
            "error": {"type": "RuntimeError", "message": "boom"}}))
    failed = failed_records_since(argv, started, {"mine", "another"})
    assert len(failed) == 1 and "mine: RuntimeError: boom" in failed[0]
