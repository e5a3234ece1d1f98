"""The best-weights file of a fit: written only when a validation improves, with its facts."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from xlt_runner.callbacks import BestWeights, read_best_facts


class _Module:
    """Stands in for a method: one trainable tensor, saved like ``MethodBase.save_trainable``."""

    def __init__(self) -> None:
        self.weight = torch.zeros(3)
        self.saves = 0

    def save_trainable(self, path, metadata=None) -> None:
        from safetensors.torch import save_file
        save_file({"w": self.weight.clone()}, str(path), metadata=metadata)
        self.saves += 1


def _validate(callback: BestWeights, module: _Module, step: int, score: float) -> None:
    module.weight = torch.full((3,), float(step))
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={callback.monitor: torch.tensor(score)},
                              global_step=step, is_global_zero=True,
                              strategy=SimpleNamespace(barrier=lambda name: None))
    callback.on_validation_end(trainer, module)


@pytest.mark.parametrize("mode, scores, best_step", [
    ("min", [3.0, 2.0, 2.0, 2.5, 1.0, 1.5], 50),   # ties do not replace the best
    ("max", [0.1, 0.4, 0.4, 0.2, 0.3, 0.35], 20),
    ("min", [math.nan, 2.0, 1.0], 30),             # a non-finite score is never the best
])
def test_the_file_is_written_only_when_a_validation_improves(tmp_path, mode, scores, best_step):
    callback = BestWeights(tmp_path / "best.safetensors", "val/loss", mode)
    module = _Module()
    for i, score in enumerate(scores):
        _validate(callback, module, 10 * (i + 1), score)
    improvements = sum(1 for i, s in enumerate(scores)
                       if math.isfinite(s) and all(not math.isfinite(p) or (s < p if mode == "min" else s > p)
                                                   for p in scores[:i]))
    assert module.saves == improvements
    assert callback.best_step == best_step and callback.saved == tmp_path / "best.safetensors"
    assert torch.equal(load_file(tmp_path / "best.safetensors")["w"], torch.full((3,), float(best_step)))
    facts = read_best_facts(tmp_path / "best.safetensors")
    assert facts == {"step": best_step, "monitor": "val/loss", "mode": mode, "score": callback.best_score}


def test_a_resumed_callback_compares_against_the_saved_best(tmp_path):
    first = BestWeights(tmp_path / "best.safetensors", "val/accuracy", "max")
    module = _Module()
    _validate(first, module, 10, 0.5)
    resumed = BestWeights(tmp_path / "best.safetensors", "val/accuracy", "max")
    resumed.load_state_dict(first.state_dict())
    _validate(resumed, module, 20, 0.4)
    assert module.saves == 1 and resumed.best_step == 10


def test_a_monitor_the_validation_did_not_log_is_an_error(tmp_path):
    callback = BestWeights(tmp_path / "best.safetensors", "val/f1", "max")
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/loss": torch.tensor(1.0)})
    with pytest.raises(RuntimeError, match="val/f1"):
        callback.on_validation_end(trainer, _Module())
