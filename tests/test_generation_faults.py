"""Fault injection on generation SFT: a decoder run killed at a hard point and relaunched with
the same command ends exactly (fp32 CPU: bitwise) as the same run left undisturbed.

Faults come from ``tests/fault_inject.py`` (see tests/test_faults.py for the classification
matrix). Every killed run is relaunched once and must then be ``complete`` with the reference's
trained steps, best (step, score), per-language results, ``predictions.jsonl`` and saved
weights; every optimiser step's loss, lr and weight sum and every validation's ``val/loss``,
in both attempts, must equal the reference's; and the relaunch must have trained exactly the
steps after the checkpoint it resumed from and redone every validation after it. (The results
alone cannot show a bad resume after the best validation: the tested weights predate it.)

Generation SFT of the tiny Llama draws no random numbers (no dropout, greedy decoding, batches
a function of (seed, batch index)), so the RNG-state restore is not exercised here.

The run: 12 steps of a tiny Llama at a linearly decaying lr, validated every 3 steps (3, 6, 9,
12). Its dev loss is best at step 9 and worse at 12, so a resumed run that lost the
best-checkpoint state, the optimiser or the scheduler, or that trained on other batches, picks
another best or ends with other weights. ``resume.ckpt`` is written at the end of the first step
after each validation (4, 7, 10) and at a caught signal.

To keep CI fast the reference and the four faulted runs go concurrently (one thread each, a
run's relaunch after its fault); single-threaded torch, the same in every process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO, find_records
from test_generation_run import make_synthetic_qa, qa_args

HARNESS = str(REPO / "tests" / "fault_inject.py")
MAX_STEPS, VAL_EVERY = 12, 3
SFT_RUN = ("method=sft", "method.optim.lr=1e-1", "method.optim.warmup_ratio=0", "method.optim.schedule=linear",
           f"trainer.max_steps={MAX_STEPS}", f"trainer.val_check_interval={VAL_EVERY}")
#: Reference facts the fault positions below are chosen for.
BEST_STEP = 9


@dataclass(frozen=True)
class Fault:
    spec: str  # XLT_FAULT
    first_status: str  # the killed attempt's record
    first_exit: int
    resumed_from: int  # step of the resume.ckpt the relaunch must start from


#: name -> fault. Resume checkpoints exist after steps 4, 7, 10 (and at a caught signal).
FAULTS = {
    # killed without warning in step 11 (past half the budget, between validations): the
    # relaunch restarts from the checkpoint after the validation at 9 (the best so far) and must
    # keep it as the best through the validation at 12
    "sigkill-past-half-the-budget": Fault("SIGKILL@train:10", "running", -signal.SIGKILL, 10),
    # killed at the first batch of the validation at step 9 (the best one, before best.safetensors
    # holds it): the relaunch restarts from step 7 and must redo that validation
    "sigkill-during-validation": Fault("SIGKILL@val:9", "running", -signal.SIGKILL, 7),
    # killed half-way through writing resume.ckpt at step 10 (the half-written temporary file is
    # left behind): the previous resume.ckpt (step 7) is intact; its best-checkpoint state (best
    # 6) is older than the best.safetensors on disk (9), which the relaunch recomputes
    "sigkill-during-resume-checkpoint-write": Fault("SIGKILL@write:10", "running", -signal.SIGKILL, 7),
    # SIGTERM in step 9, which the validation at 9 follows: no exact resume point before that
    # validation, so the checkpoint waits for the end of step 10; record preempted, exit 75
    "sigterm-preemption": Fault("SIGTERM@train:8", "preempted", 75, 10),
}


def launch(args: list[str], out: Path, *, fault: str = "") -> subprocess.CompletedProcess:
    """``python tests/fault_inject.py ARGS`` (as tests/test_faults.py launches it), logging every
    step's loss to ``out/losses.jsonl`` and every validation to ``out/val.jsonl``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline",
           "HYDRA_FULL_ERROR": "0", "XLT_FAULT": fault, "XLT_LOSS_LOG": str(out / "losses.jsonl"),
           "XLT_VAL_LOG": str(out / "val.jsonl"),
           # the runs share two cores; any fixed thread count gives bitwise-equal runs
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, HARNESS, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def saved_weights(run_dir: Path) -> tuple[dict, dict]:
    """(metadata, tensors) of ``method_weights.safetensors`` (the file's bytes are not comparable:
    safetensors writes its metadata in hash order, which differs between processes)."""
    from safetensors import safe_open
    with safe_open(str(run_dir / "method_weights.safetensors"), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_step(rows: list[dict], key) -> dict[int, list]:
    """step -> every value ``key(row)`` logged for it, across attempts."""
    steps: dict[int, list] = {}
    for row in rows:
        steps.setdefault(row["step"], []).append(key(row))
    return steps


def last_attempt(rows: list[dict]) -> list[int]:
    """Steps logged by the last process that logged (the relaunch), in order."""
    return [row["step"] for row in rows if row["pid"] == rows[-1]["pid"]]


@dataclass
class Outcome:
    out: Path
    first: subprocess.CompletedProcess | None
    first_record: dict | None
    last: subprocess.CompletedProcess

    @property
    def record(self) -> dict:
        (record,) = find_records(self.out)
        return record

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.record["run_id"]

    @property
    def loss_rows(self) -> list[dict]:
        return read_log(self.out / "losses.jsonl")

    @property
    def val_rows(self) -> list[dict]:
        return read_log(self.out / "val.jsonl")

    def losses(self) -> dict[int, list]:
        return by_step(self.loss_rows, lambda row: (row["loss"], row["param_sum"], row["lr"]))

    def validations(self) -> dict[int, list]:
        return by_step(self.val_rows, lambda row: row["metrics"])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, shared_cache) -> dict[str, Outcome]:
    """The undisturbed reference and every fault of :data:`FAULTS` followed by one relaunch."""
    root = tmp_path_factory.mktemp("generation_faults")
    data = make_synthetic_qa(root / "mkqa")

    def reference() -> Outcome:
        out = root / "reference"
        out.mkdir()
        return Outcome(out, None, None, launch(qa_args(data, out, shared_cache, *SFT_RUN), out))

    def faulted(name: str) -> Outcome:
        out = root / name
        out.mkdir()
        args = qa_args(data, out, shared_cache, *SFT_RUN)
        first = launch(args, out, fault=FAULTS[name].spec)
        records = find_records(out)
        return Outcome(out, first, records[0] if len(records) == 1 else None, launch(args, out))

    with ThreadPoolExecutor(max_workers=1 + len(FAULTS)) as pool:
        futures = {"reference": pool.submit(reference), **{name: pool.submit(faulted, name) for name in FAULTS}}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def reference(outcomes) -> Outcome:
    ref = outcomes["reference"]
    assert ref.last.returncode == 0, ref.last.stdout[-2000:] + ref.last.stderr[-3000:]
    record = ref.record
    assert record["status"] == "complete" and record["task"] == "generation"
    assert record["training"] == {"max_steps": MAX_STEPS, "trained_steps": MAX_STEPS, "stop_reason": "max_steps",
                                  "early_stopping": None}
    # the faults are placed around this: a best mid-way that later validations do not beat
    assert record["best"]["step"] == BEST_STEP and record["best"]["monitor"] == "val/loss", record["best"]
    assert sorted(ref.validations()) == list(range(VAL_EVERY, MAX_STEPS + 1, VAL_EVERY))
    assert len({row["prediction"] for row in map(json.loads, (ref.run_dir / "predictions.jsonl").open())}) > 1, \
        "predictions that are all alike would not tell weights apart"
    return ref


@pytest.mark.parametrize("name", list(FAULTS))
def test_generation_sft_killed_then_relaunched_equals_the_undisturbed_run(name, outcomes, reference):
    fault, got = FAULTS[name], outcomes[name]
    first = got.first
    assert first.returncode == fault.first_exit, first.stdout[-2000:] + first.stderr[-3000:]
    assert "[fault]" in first.stdout
    assert got.first_record is not None and got.first_record["status"] == fault.first_status

    assert got.last.returncode == 0, got.last.stdout[-2000:] + got.last.stderr[-3000:]
    record, ref = got.record, reference.record
    assert record["status"] == "complete" and record["attempt"] == 2
    assert record.get("resumed_from_step") == fault.resumed_from
    assert record["training"]["trained_steps"] == MAX_STEPS
    assert record["training"] == ref["training"]
    assert record["best"] == ref["best"]  # step and score (bitwise)
    assert record["per_language"] == ref["per_language"] and record["groups"] == ref["groups"]
    for name_ in ("predictions.jsonl", "per_language.csv"):
        assert (got.run_dir / name_).read_bytes() == (reference.run_dir / name_).read_bytes(), f"{name_} differs"
    weights, ref_weights = saved_weights(got.run_dir), saved_weights(reference.run_dir)  # the tested weights
    assert weights[0] == ref_weights[0] and weights[1].keys() == ref_weights[1].keys()
    assert [k for k in weights[1] if not torch.equal(weights[1][k], ref_weights[1][k])] == []
    assert not (got.run_dir / "checkpoints" / "resume.ckpt").exists()

    # every attempt's value of every step and validation, bit for bit
    losses, ref_losses = got.losses(), reference.losses()
    assert sorted(losses) == list(range(MAX_STEPS))
    for step, values in losses.items():
        assert set(values) == set(ref_losses[step]), f"step {step}: {values} != {ref_losses[step]}"
    validations, ref_validations = got.validations(), reference.validations()
    assert sorted(validations) == sorted(ref_validations), "a validation was skipped or added"
    for step, values in validations.items():
        assert all(v == ref_validations[step][0] for v in values), f"validation {step}: {values}"
    # the relaunch trained exactly the steps after its checkpoint and redid every validation after it
    assert last_attempt(got.loss_rows) == list(range(fault.resumed_from, MAX_STEPS))
    assert last_attempt(got.val_rows) == [s for s in sorted(ref_validations) if s > fault.resumed_from]
