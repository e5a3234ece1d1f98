"""Smoke runs of benchmark scripts: tiny model, generated data, tiny sizes. They keep the scripts in
step with the project APIs they drive; the speed figures of such runs mean nothing."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from conftest import REPO


def test_sft_throughput_bench_smoke(tmp_path, shared_cache):
    """``bench/sft_throughput.py --smoke``: tiny_llama on generated QA pairs, 1 + 2 steps of batch 4 per
    contender. Without trl installed (the ``bench`` extra) only the project's contenders run."""
    has_trl = importlib.util.find_spec("trl") is not None
    contenders = "a_trl,b_plain,c_lightning" if has_trl else "b_plain,c_lightning"
    out = tmp_path / "sft_throughput.json"
    result = subprocess.run([sys.executable, "bench/sft_throughput.py", "--smoke", "--threads", "1",
                             "--contenders", contenders, "--cache-dir", str(shared_cache), "--output", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert checks["same_initial_weights"] and checks["same_loss_tokens"] and checks["same_real_tokens"]
    assert checks["b_c_max_abs_loss_diff_all_steps"] == 0.0  # identical batches, identical steps
    project = report["where"]["c_lightning"]
    assert project["lm_head_rows_per_step"] == project["loss_tokens_per_step"]  # LM head on answer positions only
    assert "lightning_overhead_vs_plain" in report["ratios"]
    if has_trl:
        assert checks["a_vs_project_batch0_ok"], checks  # TRL's loss on the project's first batch agrees
        trl = report["where"]["a_trl"]
        assert trl["lm_head_rows_per_step"] > trl["loss_tokens_per_step"]  # TRL projects every position
        assert "c_over_a" in report["ratios"]


def test_partial_layers_bench_smoke(tmp_path, shared_cache):
    """``bench/partial_layers.py --smoke``: full and last-quarter fine-tuning of tiny_llama on
    generated QA pairs; same first loss, fewer trainable parameters, ratios written."""
    out = tmp_path / "partial_layers.json"
    result = subprocess.run([sys.executable, "bench/partial_layers.py", "--smoke", "--cache-dir", str(shared_cache),
                             "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    full, partial = report["runs"]["full"], report["runs"]["partial"]
    assert partial["params"]["trainable"] < full["params"]["trainable"] == full["params"]["total"]
    assert set(report["ratios"]) == {"time", "peak_memory", "memory_added"}


def test_layer_swap_bench_smoke(tmp_path):
    """``bench/layer_swap.py`` on a saved small Llama: both merges run in their subprocesses and
    give identical tensors; the memory figures are written."""
    from conftest import small_llama
    small_llama(layers=10).save_pretrained(tmp_path / "model")
    out = tmp_path / "layer_swap.json"
    result = subprocess.run([sys.executable, "bench/layer_swap.py", "--model-dir", str(tmp_path / "model"),
                             "--shard-mb", "1", "--output", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["identical_tensors"] is True and report["results"]["streamed"]["peak_rss_mb"] > 0


def test_partition_sft_bench_smoke(tmp_path, shared_cache):
    """``bench/partition_sft.py --smoke``: full SFT, partition SFT in Lightning and the same partition
    updates in a bare loop, on tiny_llama; the last two do the same arithmetic, so their losses agree."""
    out = tmp_path / "partition_sft.json"
    result = subprocess.run([sys.executable, "bench/partition_sft.py", "--smoke", "--cache-dir", str(shared_cache),
                             "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert runs["partition"]["losses"] == runs["bare"]["losses"]
    assert runs["full"]["losses"][0] == runs["partition"]["losses"][0]
    assert set(report["ratios"]) == {"partition_vs_full", "partition_vs_bare", "cpu_partition_vs_full",
                                     "cpu_partition_vs_bare"}


def test_rag_pipeline_bench_smoke(tmp_path, shared_cache):
    """``bench/rag_pipeline.py --smoke``: tiny models on a generated corpus; the one-at-a-time, the
    batched cold and the warm rerun contenders run and the warm run recomputes nothing upstream."""
    out = tmp_path / "rag_pipeline.json"
    result = subprocess.run([sys.executable, "bench/rag_pipeline.py", "--smoke", "--threads", "1",
                             "--cache-dir", str(shared_cache), "--output", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"one_at_a_time", "batched_cold", "warm_other_generator"}
    assert all(run["queries"] == 3 for run in runs.values())
    warm = runs["warm_other_generator"]["cache"]
    assert all(warm[stage]["computed"] == 0 for stage in ("retrieval", "translation", "judgement"))
    assert runs["batched_cold"]["cache"]["translation"]["computed"] > 0
    assert set(report["ratios"]) == {"batched_cold_over_one_at_a_time", "warm_over_cold",
                                     "batched_cold_over_one_at_a_time_cpu", "warm_over_cold_cpu"}
