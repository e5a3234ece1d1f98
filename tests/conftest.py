"""Shared fixtures: a synthetic benchmark in the SIB-200 layout and a CLI runner.

Tests never touch the network or ../shared/data: data are generated here, models are
tiny random ones (``model=tiny_xlmr``) or packaged ones (slow tests).
"""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIB_LABELS = ["science/technology", "travel", "politics", "sports", "health", "entertainment", "geography"]
SYNTH_LANGUAGES = ["eng_Latn", "arb_Arab", "zho_Hans", "fra_Latn", "swh_Latn", "quy_Latn"]


def write_split(path: Path, rows: list[tuple[int, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index_id", "category", "text"])
        writer.writerows(rows)


def make_synthetic_benchmark(root: Path, languages=SYNTH_LANGUAGES, sizes=(70, 14, 21), seed=0) -> Path:
    """A parallel 7-label benchmark: each label has topic words shared across languages
    (with a language-specific suffix), so a classifier can transfer between them."""
    rng = random.Random(seed)
    topic_words = {label: [f"{label.split('/')[0][:4]}{i}" for i in range(5)] for label in SIB_LABELS}
    noise = [f"w{i}" for i in range(40)]
    index = 0
    splits = {}
    for split, n in zip(("train", "dev", "test"), sizes):
        rows = []
        for _ in range(n):
            label = SIB_LABELS[index % len(SIB_LABELS)]
            words = rng.sample(topic_words[label], 2) + rng.sample(noise, rng.randint(2, 8))
            rng.shuffle(words)
            rows.append((index, label, words))
            index += 1
        splits[split] = rows
    for lang in languages:
        suffix = lang[:2]
        for split, rows in splits.items():
            write_split(root / lang / f"{split}.tsv",
                        [(i, label, " ".join(w + suffix for w in words)) for i, label, words in rows])
        (root / lang / "labels.txt").write_text("\n".join(SIB_LABELS) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_synthetic_benchmark(tmp_path_factory.mktemp("synthetic_sib"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache dir for the session: converted models and tokenised data are reused."""
    return tmp_path_factory.mktemp("cache")


def tiny_run_args(data_dir: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["model=tiny_xlmr", "benchmark=sib200", f"benchmark.data_dir={data_dir}", "logger=none",
            "languages=enarzho", "languages.groups=[all,unseen]",
            "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
            "benchmark.batch_size=8", "benchmark.eval_batch_size=16",
            f"paths.output_root={out}", f"paths.cache_dir={cache}", *extra]


def run_cli(args: list[str], module: str = "xlt_runner", timeout: int = 600, env: dict | None = None):
    """Run ``python -m <module> ARGS`` the way a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline",
                "HYDRA_FULL_ERROR": "0", **(env or {})}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def find_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def small_llama(layers: int = 6, tied: bool = False):
    """A random LlamaForCausalLM of ``layers`` layers (hidden 16, vocabulary 64), seed 0; the global
    RNG untouched. For layer-selection tests that need more depth than ``tiny_llama``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)
