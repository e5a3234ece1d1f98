"""Fault injection on partition SFT (issue 12, item 3): a ``partition_sft`` run killed at a hard
point and relaunched with the same command ends bitwise equal to the same run left undisturbed:
both AdamW states, the data position and with it the alternation phase come back exactly.

The run: 12 optimiser steps of tiny_llama, 2 batches per step (manual accumulation), the task
and language datasets alternating every step, validated every 3 steps; ``resume.ckpt`` is
written at the end of the first step after each validation (4, 7, 10) and at a caught signal.
Each fault is relaunched once; the relaunch must be ``complete`` with the reference's best,
training, per-language results, predictions and saved weights, and must have logged exactly the
reference's batches (loss, lr and weight sum, in order) from the step it resumed from.
"""
from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from test_generation_faults import Fault, Outcome, launch, saved_weights
from test_partition_sft import make_sft_files, partition_args

MAX_STEPS, VAL_EVERY, ACCUMULATE = 12, 3, 2
RUN = (f"trainer.max_steps={MAX_STEPS}", f"trainer.val_check_interval={VAL_EVERY}",
       f"trainer.accumulate_grad_batches={ACCUMULATE}", "method.optim.lr=5e-2", "method.optim.schedule=linear")

#: Resume checkpoints exist after steps 4, 7, 10 (and at a caught signal).
FAULTS = {
    # killed in the first batch of step 8 (a language step, past half the budget): the relaunch
    # restarts from step 7, whose next step is the language partition's
    "sigkill-past-half-the-budget-in-a-language-step": Fault("SIGKILL@train:7", "running", -signal.SIGKILL, 7),
    # killed at the first batch of the validation at step 6: back to step 4, that validation redone
    "sigkill-during-validation": Fault("SIGKILL@val:6", "running", -signal.SIGKILL, 4),
    # killed half-way through writing resume.ckpt at step 7: the one of step 4 is intact
    "sigkill-during-resume-checkpoint-write": Fault("SIGKILL@write:7", "running", -signal.SIGKILL, 4),
    # SIGTERM in step 6 (a language step), which the validation at 6 follows: no exact resume
    # point before that validation, so the checkpoint waits for the end of step 7
    "sigterm-preemption": Fault("SIGTERM@train:5", "preempted", 75, 7),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, shared_cache) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("partition_faults")
    sft_files = make_sft_files(root / "data")

    def one(name: str) -> Outcome:
        out = root / name
        out.mkdir()
        args = partition_args(sft_files, out, shared_cache, *RUN)
        if name == "reference":
            return Outcome(out, None, None, launch(args, out))
        first = launch(args, out, fault=FAULTS[name].spec)
        from conftest import find_records
        records = find_records(out)
        return Outcome(out, first, records[0] if len(records) == 1 else None, launch(args, out))

    with ThreadPoolExecutor(max_workers=1 + len(FAULTS)) as pool:
        futures = {name: pool.submit(one, name) for name in ["reference", *FAULTS]}
        return {name: future.result() for name, future in futures.items()}


def rows_of(out: Outcome, pid: int | None = None) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"], r["param_sum"]) for r in out.loss_rows if pid is None or r["pid"] == pid]


@pytest.mark.parametrize("name", list(FAULTS))
def test_partition_sft_killed_then_relaunched_equals_the_undisturbed_run(name, outcomes):
    fault, got, ref = FAULTS[name], outcomes[name], outcomes["reference"]
    assert ref.last.returncode == 0, ref.last.stderr[-3000:]
    first = got.first
    assert first.returncode == fault.first_exit, first.stdout[-2000:] + first.stderr[-3000:]
    assert "[fault]" in first.stdout
    assert got.first_record is not None and got.first_record["status"] == fault.first_status
    assert got.last.returncode == 0, got.last.stdout[-2000:] + got.last.stderr[-3000:]
    record, reference = got.record, ref.record
    assert record["status"] == "complete" and record["attempt"] == 2
    assert record.get("resumed_from_step") == fault.resumed_from
    assert record["training"] == reference["training"] and record["best"] == reference["best"]
    assert record["per_language"] == reference["per_language"]
    for file in ("predictions.jsonl", "per_language.csv"):
        assert (got.run_dir / file).read_bytes() == (ref.run_dir / file).read_bytes(), f"{file} differs"
    weights, ref_weights = saved_weights(got.run_dir), saved_weights(ref.run_dir)
    assert weights[1].keys() == ref_weights[1].keys()
    assert [k for k in weights[1] if not torch.equal(weights[1][k], ref_weights[1][k])] == []
    # the relaunch took exactly the reference's batches from its resume point on, in order
    reference_rows = rows_of(ref)
    assert len(reference_rows) == MAX_STEPS * ACCUMULATE
    relaunch = rows_of(got, got.loss_rows[-1]["pid"])
    assert len(relaunch) == (MAX_STEPS - fault.resumed_from) * ACCUMULATE
    assert relaunch == reference_rows[-len(relaunch):]
    # and the killed attempt's batches were the reference's too
    killed = [row for row in rows_of(got) if row not in relaunch]
    assert all(row in reference_rows for row in killed)
    assert not (got.run_dir / "checkpoints" / "resume.ckpt").exists()


def test_the_reference_alternates_and_its_best_is_mid_way(outcomes):
    ref = outcomes["reference"]
    assert ref.last.returncode == 0, ref.last.stderr[-3000:]
    record = ref.record
    assert record["training"]["trained_steps"] == MAX_STEPS
    lrs = [row[2] for row in rows_of(ref)]
    assert len(set(lrs)) > 1  # the schedule moves, so a lost step count would show
    assert Path(ref.run_dir / "predictions.jsonl").is_file()
