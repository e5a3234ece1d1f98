"""Sequential per-target tuning, the language-ID probe and delayed early stopping."""
from __future__ import annotations

import pytest
import torch

from xlt_runner.callbacks import DelayedEarlyStopping

from conftest import find_records, run_cli, tiny_run_args


def test_sequential_regime_tunes_and_tests_each_target(tmp_path, synthetic_data, shared_cache):
    args = tiny_run_args(synthetic_data, tmp_path, shared_cache, "method=xpe", "regime=sequential",
                         "regime.target_max_steps=4", "regime.target_val_check_interval=2",
                         "languages.targets=[fra_Latn,quy_Latn]")
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "target_fit 1/2: tuning on fra_Latn" in result.stdout and "target_fit 2/2" in result.stdout
    (record,) = find_records(tmp_path)
    assert record["status"] == "complete" and record["regime"] == "sequential"
    assert sorted(record["per_language"]) == ["fra_Latn", "quy_Latn"]
    assert sorted(record["zero_shot_per_language"]) == ["fra_Latn", "quy_Latn"]
    for lang in ("fra_Latn", "quy_Latn"):
        assert record["per_language"][lang]["n"] == 21
        assert record["target_phases"][lang]["training"]["max_steps"] == 4


def test_langid_probe_reports_language_identification_accuracy(tmp_path, synthetic_data, shared_cache):
    args = tiny_run_args(synthetic_data, tmp_path, shared_cache, "method=spt", "regime=langid_probe",
                         "regime.probe_languages=[eng_Latn,fra_Latn,quy_Latn]", "regime.probe_epochs=50",
                         "regime.probe_seeds=3", "languages.groups=[seen,unseen,all]")
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    probe = record["probe"]
    assert probe["n_languages"] == 3 and abs(probe["chance"] - 1 / 3) < 1e-9
    assert probe["train_examples"] == 3 * 70 and probe["test_examples"] == 3 * 21
    assert [s["probe_seed"] for s in probe["per_seed"]] == [0, 1, 2]
    # the synthetic languages differ by a word suffix: a linear probe must find that
    assert probe["accuracy"] > 0.9
    recall = probe["per_language_recall"]
    groups = record["groups"]
    assert groups["langid"] == {"langid_recall": probe["accuracy"], "n_languages": 3}
    # Table 4's cells: mean per-language recall over the group's probe languages, lower is better
    assert groups["langid:seen"]["langid_recall"] == pytest.approx((recall["eng_Latn"] + recall["fra_Latn"]) / 2)
    assert groups["langid:unseen"]["langid_recall"] == pytest.approx(recall["quy_Latn"])
    assert groups["langid:all"]["n_languages"] == 3
    (spec,) = [m for m in record["metrics"] if m["name"] == "langid_recall"]
    assert spec["higher_is_better"] is False and spec["percent"] is True
    # the zero-shot groups that hold source languages are not reported; the probe's are
    assert set(record["groups_not_reported"]) == {"seen", "all"} and "seen" not in groups


class _FakeTrainer:
    def __init__(self, step: int, value: float) -> None:
        self.global_step = step
        self.current_epoch = 0
        self.is_global_zero = True
        self.loggers = []
        self.callback_metrics = {"val/accuracy": torch.tensor(value)}
        self.should_stop = False
        self.strategy = type("S", (), {"reduce_boolean_decision": staticmethod(lambda x, all=True: x)})()
        self.fast_dev_run = False
        self.sanity_checking = False


def test_early_stopping_waits_for_start_step():
    stopper = DelayedEarlyStopping(start_step=100, monitor="val/accuracy", mode="max", patience=1)
    for step, value in [(10, 0.5), (20, 0.4), (30, 0.3), (40, 0.2)]:
        trainer = _FakeTrainer(step, value)
        stopper._run_early_stopping_check(trainer)
        assert not trainer.should_stop, "no stop before the first cycle ends"
    assert float(stopper.best_score) == 0.5  # the best score is still tracked
    trainer = _FakeTrainer(110, 0.45)
    stopper._run_early_stopping_check(trainer)
    assert trainer.should_stop  # after start_step, patience 1 applies
