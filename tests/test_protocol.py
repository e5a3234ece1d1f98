"""The XPE paper's protocol knobs: pooling per backbone, the checkpoint/early-stopping monitor,
patience in epochs, warmup as a fraction of the budget, and the paper presets."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import find_records, run_cli, tiny_run_args
from test_soft_prompt import TASK, encode_texts
from xlt_runner import runner, stages
from xlt_runner.callbacks import DelayedEarlyStopping
from xlt_runner.composition import CONF_DIR, compose
from xlt_runner.config import BenchmarkConfig, ConfigError, OptimConfig
from xlt_runner.methods.finetune import FullFTConfig, HeadOnlyConfig, LoraConfig
from xlt_runner.validation import validate
from xlt_runner.metrics import PerLanguageClassification
from xlt_runner.methods import ClassificationTask
from xlt_runner.methods.finetune import FullFineTuning, HeadOnly, Lora
from xlt_runner.methods.base import lr_lambda, masked_mean, resolve_warmup
from xlt_runner.results.record import RunRecord
from xlt_runner.methods.soft_prompt import SoftPromptTuning, SptConfig
from xlt_runner.models import Backbone, build_tiny_model
from xlt_runner.models.tiny import build_tiny_tokenizer


def backbone_with(pooling: str) -> Backbone:
    model, tokenizer = build_tiny_model("xlmr")
    return Backbone(model=model, tokenizer=tokenizer, kind="encoder", name="tiny_xlmr", hidden_size=32,
                    source="tiny:xlmr", pooling=pooling)


def build(method_cls, cfg, pooling: str):
    torch.manual_seed(0)
    return method_cls(cfg, backbone_with(pooling), TASK, 10).eval()


def hook_last_hidden(method) -> dict:
    seen: dict = {}
    method.backbone.register_forward_hook(lambda m, a, kw, out: seen.update(h=out.last_hidden_state),
                                          with_kwargs=True)
    return seen


def with_extra_padding(batch: dict, extra: int, pad_id: int) -> dict:
    n = batch["input_ids"].shape[0]
    return {**batch, "input_ids": torch.cat([batch["input_ids"], torch.full((n, extra), pad_id)], dim=1),
            "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(n, extra, dtype=torch.long)], dim=1)}


# --------------------------------------------------------------------------- 1. pooling
FINETUNE = [(HeadOnly, HeadOnlyConfig), (FullFineTuning, FullFTConfig), (Lora, LoraConfig)]


@pytest.mark.parametrize("method_cls,cfg_cls", FINETUNE)
def test_mean_backbone_pools_the_masked_mean_of_real_tokens(method_cls, cfg_cls):
    """With ``model.pooling=mean`` and ``method.pool=model``, ``encode`` is the float32 mean of the
    backbone's last hidden state over attention-masked real tokens; extra padding changes nothing."""
    method = build(method_cls, cfg_cls(), "mean")
    assert method.pooling == "mean"
    seen = hook_last_hidden(method)
    batch = encode_texts("xlmr")  # rows of different lengths: the shorter ones are padded already
    with torch.no_grad():
        pooled = method.encode(batch)
        h, mask = seen["h"].double(), batch["attention_mask"].double().unsqueeze(-1)
        reference = (h * mask).sum(1) / mask.sum(1)
        assert pooled.dtype == torch.float32
        assert torch.allclose(pooled.double(), reference, atol=1e-5)
        assert not torch.allclose(pooled, seen["h"][:, 0], atol=1e-3)  # not the first position
        padded = method.encode(with_extra_padding(batch, 7, build_tiny_tokenizer("xlmr").pad_token_id))
    assert torch.allclose(padded, pooled, atol=1e-5), "padding must not enter the mean"


@pytest.mark.parametrize("method_cls,cfg_cls", FINETUNE)
def test_cls_backbone_pools_position_zero_and_method_pool_overrides(method_cls, cfg_cls):
    """``model.pooling=cls`` reads the first position; ``method.pool`` overrides the backbone's
    choice either way (cls on a mean backbone, mean on a cls backbone)."""
    batch = encode_texts("xlmr")
    for backbone_pooling, pool, expected in [("cls", "model", "cls"), ("mean", "cls", "cls"),
                                             ("cls", "mean", "mean")]:
        method = build(method_cls, cfg_cls(pool=pool), backbone_pooling)
        assert method.pooling == expected
        seen = hook_last_hidden(method)
        with torch.no_grad():
            pooled = method.encode(batch)
        h, mask = seen["h"], batch["attention_mask"].unsqueeze(-1).float()
        want = h[:, 0] if expected == "cls" else (h * mask).sum(1) / mask.sum(1)
        assert torch.allclose(pooled, want, atol=1e-5), (backbone_pooling, pool)


def test_invalid_pool_is_a_config_error():
    """A pool the method cannot read fails at validation and at construction: ``first_virtual``
    exists only for soft prompts; soft prompts resolve ``model`` to the backbone's pooling too."""
    for method_cls, cfg_cls in FINETUNE:
        with pytest.raises(ConfigError, match="method.pool='first_virtual'"):
            build(method_cls, cfg_cls(pool="first_virtual"), "cls")
    with pytest.raises(ConfigError, match="method.pool='max'"):
        build(SoftPromptTuning, SptConfig(prompt_length=2, pool="max"), "cls")
    assert build(SoftPromptTuning, SptConfig(prompt_length=2), "mean").pooling == "mean"
    assert build(SoftPromptTuning, SptConfig(prompt_length=2, pool="first_virtual"), "mean").pooling == "first_virtual"
    # and before any model is loaded: validation.validate, which the CLI's preflight runs on every sweep point
    with pytest.raises(ConfigError, match="method.pool='first_virtual' is not valid for method=head_only"):
        validate(compose(["method=head_only", "method.pool=first_virtual"]))
    validate(compose(["method=spt", "method.pool=first_virtual"]))


def test_every_encoder_config_states_its_pooling():
    """Each ``conf/model/*.yaml`` of an encoder names ``pooling`` explicitly: mean for the e5
    models, cls for XLM-R and the tiny encoders."""
    encoders = {}
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data.get("kind", "encoder") == "encoder":
            assert "pooling" in data, f"{path.name} does not state pooling"
            encoders[path.stem] = data["pooling"]
    assert {"me5_small", "me5_small_hub", "xlmr_base", "xlmr_large", "tiny_xlmr", "tiny_bert"} <= set(encoders)
    for name, pooling in encoders.items():
        assert pooling == ("mean" if name.startswith("me5") else "cls"), name


def test_masked_mean_sums_bfloat16_in_float32():
    """``masked_mean`` of bf16 hidden states returns float32, excludes masked positions, and is
    far closer to the float64 reference than a plain bf16 sum over 512 tokens."""
    torch.manual_seed(0)
    hidden = (1.0 + 0.01 * torch.randn(3, 512, 16)).to(torch.bfloat16)
    mask = torch.ones(3, 512, dtype=torch.long)
    mask[1, 300:] = 0
    hidden[1, 300:] = 100.0  # padding garbage must not count
    weights = mask.double().unsqueeze(-1)
    reference = (hidden.double() * weights).sum(1) / weights.sum(1)
    out = masked_mean(hidden, mask)
    assert out.dtype == torch.float32 and out.shape == (3, 16)
    error = (out.double() - reference).abs().max().item()
    plain = (hidden * mask.unsqueeze(-1).to(torch.bfloat16)).sum(1) / mask.sum(1, keepdim=True).to(torch.bfloat16)
    plain_error = (plain.double() - reference).abs().max().item()
    assert error < 1e-5, error
    assert plain_error > 1e-3 and plain_error > 100 * error, (plain_error, error)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_mean_pooling_feeds_a_head_held_in_another_dtype(dtype):
    """Under ``trainer.precision=bf16-true`` / ``64-true`` the whole module is cast; the float32
    mean must reach the head in the head's dtype instead of failing in its first matmul."""
    method = build(HeadOnly, HeadOnlyConfig(), "mean").to(dtype).eval()
    with torch.no_grad():
        logits = method(encode_texts("xlmr"))
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()


def test_saved_weights_refuse_another_representation(tmp_path):
    """``method.init_from`` checks the pooling (and a soft prompt's layout) the weights were trained
    with: a head trained on mean-pooled vectors must not silently read the first position."""
    path = tmp_path / "w.safetensors"
    build(HeadOnly, HeadOnlyConfig(), "mean").save_trainable(path)
    build(HeadOnly, HeadOnlyConfig(), "mean").load_trainable(str(path))
    with pytest.raises(ConfigError, match="trained with pool='mean'.*pool='cls'"):
        build(HeadOnly, HeadOnlyConfig(), "cls").load_trainable(str(path))
    prompt = tmp_path / "p.safetensors"
    build(SoftPromptTuning, SptConfig(prompt_length=3), "mean").save_trainable(prompt)
    with pytest.raises(ConfigError, match="prompt_position='after_cls'"):
        build(SoftPromptTuning, SptConfig(prompt_length=3, prompt_position="before_cls"), "mean").load_trainable(str(prompt))


# --------------------------------------------------------------------------- 2. monitor
def test_per_language_loss_is_each_languages_mean_cross_entropy():
    """``PerLanguageClassification.loss``: per language, the mean of the losses given; NaN for a
    language whose examples came without a loss (or that had none)."""
    metric = PerLanguageClassification(num_languages=4, num_classes=3)
    metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]),
                  torch.tensor([1.0, 3.0, 4.0]))
    metric.update(torch.tensor([2]), torch.tensor([2]), torch.tensor([0]), torch.tensor([5.0]))
    metric.update(torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([2, 2]))  # no losses given
    values = metric.per_language()
    assert values["loss"][:2].tolist() == [3.0, 4.0]
    assert math.isnan(values["loss"][2]) and math.isnan(values["loss"][3])
    assert values["n"].tolist() == [3, 1, 2, 0] and values["accuracy"][2] == 0.5


def test_val_loss_is_the_mean_over_source_languages_of_their_mean_loss():
    """``val/loss`` averages each source language's mean dev cross-entropy (languages weigh
    alike, whatever their example counts) and ignores non-source evaluation languages."""
    task = ClassificationTask(labels=["a", "b", "c"], eval_languages=["eng_Latn", "fra_Latn", "quy_Latn"],
                              source_languages=["eng_Latn", "fra_Latn"])
    torch.manual_seed(0)
    method = HeadOnly(HeadOnlyConfig(), backbone_with("cls"), task, 10)
    method._trainer = SimpleNamespace(world_size=1)
    logged = {}
    method.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    method.val_metric.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2]),
                             torch.tensor([1.0, 3.0, 4.0, 100.0]))
    method.on_validation_epoch_end()
    assert logged["val/loss"] == pytest.approx((2.0 + 4.0) / 2)  # not (1 + 3 + 4) / 3, not with quy's 100
    assert logged["val/accuracy"] == pytest.approx((1.0 + 0.0) / 2)


def validations(run_dir: Path) -> list[dict]:
    """The validation rows of the run's CSV log, with the optimiser step each was run at.

    Lightning logs a validation inside the epoch with ``step`` = the optimiser steps completed
    before the current batch's step was counted, i.e. one less than ``trainer.global_step`` at
    the validation (a validation after step 2 is logged at step 1); checkpoints store global_step."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    return [{"step": int(r["step"]) + 1, "val/loss": float(r["val/loss"]), "val/accuracy": float(r["val/accuracy"])}
            for r in rows]


MONITOR_RUN = ("method=full_ft", "model.pooling=mean", "method.optim.warmup_steps=0",
               "method.optim.schedule=constant", "trainer.max_steps=16", "trainer.val_check_interval=2",
               "languages.groups=[all-enarzho]")


@pytest.mark.parametrize("monitor,mode,lr", [("val/loss", "min", "3e-2"), ("val/accuracy", "max", "1e-2")])
def test_monitor_picks_the_best_checkpoint(monitor, mode, lr, synthetic_data, shared_cache, tmp_path):
    """``trainer.monitor`` chooses the checkpoint that is tested: the record's ``best`` has that
    monitor and mode, and its step is the (first) validation with the lowest val/loss or the
    highest val/accuracy in the run's CSV log."""
    result = run_cli(tiny_run_args(synthetic_data, tmp_path, shared_cache, *MONITOR_RUN,
                                   f"method.optim.lr={lr}", f"trainer.monitor={monitor}"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    assert record["status"] == "complete" and record["pooling"] == "mean"
    rows = validations(next(tmp_path.rglob("results.json")).parent)
    assert [r["step"] for r in rows] == list(range(2, 17, 2))
    values = [r[monitor] for r in rows]
    assert len(set(values)) > 1, f"{monitor} did not vary, the test proves nothing: {values}"
    target = min(values) if mode == "min" else max(values)
    best = record["best"]
    assert best["monitor"] == monitor and best["mode"] == mode
    assert best["step"] == rows[values.index(target)]["step"], (best, rows)
    assert best["score"] == pytest.approx(target, rel=1e-6)


# ------------------------------------------------------------------- 3. patience in epochs
class _FakeDataModule:
    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.calls = []

    def optimizer_steps_per_epoch(self, world_size: int, accumulate: int) -> int:
        self.calls.append((world_size, accumulate))
        return self.steps


def _fake_trainer(steps_per_epoch: int, world_size: int = 1, accumulate: int = 1):
    return SimpleNamespace(val_check_interval=8, check_val_every_n_epoch=None, world_size=world_size,
                           accumulate_grad_batches=accumulate, datamodule=_FakeDataModule(steps_per_epoch))


@pytest.mark.parametrize("epochs,steps_per_epoch,val_check_steps,expected", [
    (20, 66, 200, 7),     # 6.6 evaluations round up
    (1, 26, 4, 7),        # 6.5 -> 7
    (2.5, 4, 2, 5),       # exactly 5
    (0.01, 1, 100, 1),    # 0.0001 -> at least one evaluation
    (0.4, 13, 2, 3),      # 2.6 -> 3
    (0.0, 26, 2, 1),      # the config refuses 0 epochs; the callback still never waits fewer than 1
])
def test_patience_epochs_become_validations_rounded_up(epochs, steps_per_epoch, val_check_steps, expected):
    """``DelayedEarlyStopping.setup`` turns ``patience_epochs`` into
    ``max(1, ceil(epochs * steps_per_epoch / val_check_steps))`` validations, asking the data module
    for its steps per epoch with the trainer's world size and accumulation; ``describe`` states it."""
    stopper = DelayedEarlyStopping(start_step=5, monitor="val/loss", mode="min", patience=1,
                                   patience_epochs=epochs, val_check_steps=val_check_steps)
    trainer = _fake_trainer(steps_per_epoch, world_size=2, accumulate=3)
    stopper.setup(trainer, None, "fit")
    assert stopper.patience == expected
    assert trainer.datamodule.calls == [(2, 3)]
    assert stopper.describe() == {"monitor": "val/loss", "mode": "min", "patience_validations": expected,
                                  "patience_epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                  "val_check_steps": val_check_steps, "start_step": 5}


def test_patience_in_validations_is_left_alone():
    """Without ``patience_epochs`` the patience stays the given number of validations and the data
    module is not asked; a non-fit stage does not convert either."""
    stopper = DelayedEarlyStopping(monitor="val/accuracy", mode="max", patience=4, val_check_steps=10)
    trainer = _fake_trainer(26)
    stopper.setup(trainer, None, "fit")
    assert stopper.patience == 4 and trainer.datamodule.calls == []
    assert stopper.describe()["patience_epochs"] is None and stopper.describe()["steps_per_epoch"] is None
    by_epochs = DelayedEarlyStopping(monitor="val/accuracy", mode="max", patience=1, patience_epochs=3,
                                     val_check_steps=1)
    by_epochs.setup(trainer, None, "validate")
    assert by_epochs.patience == 1 and trainer.datamodule.calls == []


def test_optimizer_steps_per_epoch_on_the_synthetic_data(synthetic_data, tmp_path):
    """Training examples // (batch_size * world_size) // accumulation, at least 1: 3 source
    languages x 70 examples with batch 8 give 26 steps; 13 with accumulation 2 or 2 processes."""
    from xlt_runner.data import build_benchmark
    from xlt_runner.data.classification import ClassificationDataModule
    benchmark = build_benchmark(BenchmarkConfig(name="sib200", data_dir=str(synthetic_data)), cache_dir="unused")
    tokenizer = build_tiny_model("xlmr")[1]

    def datamodule(batch_size: int):
        return ClassificationDataModule(benchmark, tokenizer, source_languages=["eng_Latn", "arb_Arab", "zho_Hans"],
                                        target_languages=["fra_Latn"], max_length=32, text_prefix="",
                                        batch_size=batch_size, eval_batch_size=16, num_training_batches=5, seed=0,
                                        cache_dir=tmp_path)

    dm = datamodule(8)
    assert dm.optimizer_steps_per_epoch() == 26
    assert dm.optimizer_steps_per_epoch(1, 2) == 13
    assert dm.optimizer_steps_per_epoch(2, 1) == 13
    assert dm.optimizer_steps_per_epoch(2, 2) == 6
    assert dm.optimizer_steps_per_epoch(1, 3) == 8
    assert datamodule(256).optimizer_steps_per_epoch() == 1


def test_run_stops_when_patience_in_epochs_runs_out(synthetic_data, shared_cache, tmp_path):
    """``trainer.early_stopping_patience_epochs=0.4`` with 13 optimiser steps per epoch
    (210 examples, batch 8, accumulation 2) and a validation every 2 steps is ceil(2.6) = 3
    validations. The learning rate is too small to change any prediction, so val/accuracy never
    improves after the first validation (step 2): training stops at step 8, the record says why."""
    result = run_cli(tiny_run_args(synthetic_data, tmp_path, shared_cache, "method=head_only",
                                   "method.optim.lr=1e-12", "trainer.max_steps=30", "trainer.val_check_interval=2",
                                   "trainer.accumulate_grad_batches=2", "trainer.early_stopping_patience_epochs=0.4",
                                   "languages.groups=[all-enarzho]"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    assert record["status"] == "complete"
    training = record["training"]
    assert training["early_stopping"] == {"monitor": "val/accuracy", "mode": "max", "patience_validations": 3,
                                          "patience_epochs": 0.4, "steps_per_epoch": 13, "val_check_steps": 2,
                                          "start_step": 0}
    assert training["trained_steps"] == 8 and training["max_steps"] == 30
    assert training["stop_reason"].startswith("early_stopping: val/accuracy did not improve for 3 validations")
    assert training["stop_reason"].endswith("stopped at step 8")
    assert record["best"]["step"] == 2


@pytest.mark.parametrize("prefix,key", [("trainer", "early_stopping_patience"),
                                        ("regime", "target_early_stopping_patience")])
def test_patience_in_validations_and_epochs_are_exclusive_and_positive(prefix, key):
    """Patience set both in validations and in epochs is a ConfigError naming both keys; zero or
    negative patience (either unit) is refused; one positive value validates."""
    with pytest.raises(ConfigError) as error:
        validate(compose([f"{prefix}.{key}=5", f"{prefix}.{key}_epochs=2"]))
    assert f"{prefix}.{key}=5" in str(error.value) and f"{prefix}.{key}_epochs=2" in str(error.value)
    for value in ("0", "-1.5"):
        with pytest.raises(ConfigError, match=f"{prefix}.{key}_epochs={value}.*must be positive"):
            validate(compose([f"{prefix}.{key}=null", f"{prefix}.{key}_epochs={value}"]))
    with pytest.raises(ConfigError, match=f"{prefix}.{key}=0 must be positive"):
        validate(compose([f"{prefix}.{key}=0", f"{prefix}.{key}_epochs=null"]))
    validate(compose([f"{prefix}.{key}=null", f"{prefix}.{key}_epochs=0.5"]))


# ------------------------------------------------------------------- 4. warmup as a fraction
def test_warmup_steps_from_ratio_or_count():
    """``resolve_warmup``: ``floor(ratio * total)`` from the explicit ratio, else ``optim.warmup_ratio``,
    else ``optim.warmup_steps``."""
    assert resolve_warmup(OptimConfig(warmup_steps=7), 300) == 7
    assert resolve_warmup(OptimConfig(warmup_ratio=0.1), 300) == 30
    assert resolve_warmup(OptimConfig(warmup_ratio=0.1), 309) == 30  # rounded down
    assert resolve_warmup(OptimConfig(warmup_ratio=0.1), 300, 0.05) == 15
    assert resolve_warmup(OptimConfig(warmup_steps=7), 300, 0.05) == 15
    assert resolve_warmup(OptimConfig(warmup_ratio=0.1), 300, 0.0) == 0
    assert resolve_warmup(OptimConfig(warmup_ratio=0.29), 100) == 29  # int(0.29 * 100) would be 28


def test_lr_multiplier_reaches_one_at_the_end_of_warmup_then_follows_the_schedule():
    """Linear warmup ``(s + 1) / warmup`` reaches exactly 1 at the last warmup step; afterwards the
    schedule runs over the remaining ``total - warmup`` steps."""
    total, warmup = 330, 30
    for schedule in ("constant", "linear", "cosine", "cosine_restarts"):
        f = lr_lambda(OptimConfig(schedule=schedule, num_cycles=2), total, warmup)
        ramp = [f(s) for s in range(warmup)]
        assert ramp[0] == pytest.approx(1 / 30) and ramp[-1] == 1.0 and f(warmup) == 1.0
        assert all(a < b for a, b in zip(ramp, ramp[1:]))
    linear = lr_lambda(OptimConfig(schedule="linear"), total, warmup)
    assert linear(warmup + 150) == pytest.approx(0.5) and linear(total) == 0.0
    cosine = lr_lambda(OptimConfig(schedule="cosine"), total, warmup)
    assert cosine(warmup + 150) == pytest.approx(0.5) and cosine(total) == pytest.approx(0.0)
    restarts = lr_lambda(OptimConfig(schedule="cosine_restarts", num_cycles=2), total, warmup)
    assert restarts(warmup + 75) == pytest.approx(0.5) and restarts(warmup + 149) < 0.01
    assert restarts(warmup + 150) == 1.0 and restarts(total) == 0.0  # the restart, then the end
    assert lr_lambda(OptimConfig(schedule="constant"), total, warmup)(total - 1) == 1.0


def scheduler_factor(method):
    return method.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]


def test_method_scheduler_uses_the_warmup_ratio_and_the_phase_override():
    """A method with ``warmup_ratio=0.1`` and a 300-step budget warms up for 30 steps; setting
    ``method.warmup_ratio=0.05`` (a target phase) makes it 15 at the next configure_optimizers."""
    optim = OptimConfig(lr=1.0, warmup_ratio=0.1, warmup_steps=0, schedule="linear")
    torch.manual_seed(0)
    method = HeadOnly(HeadOnlyConfig(optim=optim), backbone_with("cls"), TASK, total_steps=300)
    f = scheduler_factor(method)
    assert f(0) == pytest.approx(1 / 30) and f(28) < 1.0 and f(29) == 1.0
    method.warmup_ratio = 0.05
    f = scheduler_factor(method)
    assert f(0) == pytest.approx(1 / 15) and f(13) < 1.0 and f(14) == 1.0
    assert f(15 + 142) == pytest.approx(1 - 142 / 285)  # linear decay over the remaining 285 steps


@pytest.mark.parametrize("overrides,method_ratio,expected", [
    ([], None, 100 + 900 // 2),
    ([], 0.05, 50 + 950 // 2),
    (["method.optim.warmup_ratio=null", "method.optim.warmup_steps=40"], None, 40 + 960 // 2),
    (["trainer.early_stopping_after_first_cycle=false"], None, 0),
])
def test_early_stopping_starts_after_the_first_cycle_with_the_resolved_warmup(overrides, method_ratio, expected):
    """``build_callbacks``: with ``early_stopping_after_first_cycle`` and cosine_restarts, early
    stopping may stop from ``warmup + (max_steps - warmup) // num_cycles``, the warmup being the
    phase's (``method.warmup_ratio``), else ``optim.warmup_ratio`` of max_steps, else warmup_steps."""
    cfg = compose(["method=spt", "trainer.early_stopping_after_first_cycle=true", "trainer.monitor=val/loss",
                   "trainer.enable_progress_bar=false", *overrides])
    assert cfg.method.optim.schedule == "cosine_restarts" and cfg.method.optim.num_cycles == 2
    callbacks = runner.build_callbacks(cfg, SimpleNamespace(warmup_ratio=method_ratio), "val/loss", "min", 1000, 100,
                                       runner.Patience(epochs=20))
    (stopper,) = [c for c in callbacks if isinstance(c, DelayedEarlyStopping)]
    assert stopper.start_step == expected
    assert (stopper.monitor, stopper.mode, stopper.patience_epochs) == ("val/loss", "min", 20)


def test_target_fit_uses_the_target_warmup_and_patience(monkeypatch, tmp_path):
    """``regime.target_warmup_ratio`` is the method's warmup ratio during every target phase (and
    null again afterwards); the target patience (validations or epochs) reaches fit_stage."""
    cfg = compose(["method=spt", "regime=sequential", "regime.target_max_steps=40",
                   "regime.target_val_check_interval=5", "regime.target_warmup_ratio=0.05",
                   "regime.target_early_stopping_patience=null", "regime.target_early_stopping_patience_epochs=30"])
    seen = []

    class FakeMethod:
        warmup_ratio = None
        task = ClassificationTask(labels=["a"], eval_languages=["eng_Latn"], source_languages=["eng_Latn"])
        test_results: dict = {}

        def trainable_state_dict(self):
            return {"w": torch.zeros(1)}

        def load_state_dict(self, state, strict=False):
            pass

        def reset_metrics(self):
            pass

        def enter_target_phase(self):
            pass

    method = FakeMethod()

    class FakeTrainer:
        def test(self, method, **kwargs):
            method.test_results = {lang: {"accuracy": 1.0} for lang in method.task.eval_languages}

    def fake_fit_stage(cfg, task_kind, method, dm, checkpoint_dir, loggers, *, max_steps, val_check_interval, patience,
                       **kw):
        seen.append((method.warmup_ratio, max_steps, val_check_interval, patience))
        return FakeTrainer(), None, {"step": 5}, {"trained_steps": max_steps}

    monkeypatch.setattr(runner, "fit_stage", fake_fit_stage)
    task_kind = SimpleNamespace(
        datamodule=lambda src, tgt, steps: SimpleNamespace(eval_languages=list(tgt)),
        method_task=lambda dm, src: ClassificationTask(labels=["a"], eval_languages=dm.eval_languages, source_languages=src),
        metric_names=lambda: ("accuracy",), test_results=lambda m: m.test_results)
    record = RunRecord(run_id="r", sweep_name="s", method="m", model="x", benchmark="b", languages="l", seed=0,
                       config={}, overrides=[], versions={}, git_commit=None, started_at="t", host="h", pid=1)
    ctx = stages.RunContext(cfg=cfg, run_dir=tmp_path, record=record, guard=None, task_kind=task_kind, table=None,
                            source=["eng_Latn"], targets=["fra_Latn", "quy_Latn"], members={}, datamodule=None,
                            method=method, loggers=[])
    stages.target_fit(ctx)
    results, phases = record.per_language, record.target_phases
    assert sorted(results) == ["fra_Latn", "quy_Latn"]
    assert phases["quy_Latn"] == {"best": {"step": 5}, "training": {"trained_steps": 40}}  # each phase's rule
    assert seen == [(0.05, 40, 5, runner.Patience(None, 30))] * 2
    assert method.warmup_ratio is None


def test_warmup_ratio_and_steps_are_exclusive():
    """``method.optim.warmup_ratio`` with a non-zero ``warmup_steps`` is a ConfigError naming both;
    a ratio outside [0, 1) is refused, for the method and for ``regime.target_warmup_ratio``."""
    with pytest.raises(ConfigError) as error:
        validate(compose(["method=head_only", "method.optim.warmup_ratio=0.1", "method.optim.warmup_steps=5"]))
    assert "method.optim.warmup_ratio=0.1" in str(error.value) and "method.optim.warmup_steps=5" in str(error.value)
    validate(compose(["method=head_only", "method.optim.warmup_ratio=0.1", "method.optim.warmup_steps=0"]))
    with pytest.raises(ConfigError, match="warmup_ratio=1.0"):
        validate(compose(["method=spt", "method.optim.warmup_ratio=1.0"]))
    with pytest.raises(ConfigError, match="regime.target_warmup_ratio=-0.1"):
        validate(compose(["regime.target_warmup_ratio=-0.1"]))


# ------------------------------------------------------------------------- 5. paper presets
PAPER_PROTOCOL = {"method.prompt_position": "before_cls", "method.pool": "first_virtual",
                  "trainer.monitor": "val/loss", "trainer.early_stopping_patience": None,
                  "trainer.early_stopping_patience_epochs": 20, "method.optim.warmup_ratio": 0.1,
                  "method.optim.warmup_steps": 0, "trainer.early_stopping_after_first_cycle": True}


def select(cfg, key):
    from omegaconf import OmegaConf
    return OmegaConf.select(cfg, key)


@pytest.mark.parametrize("experiment,seeds,methods", [
    ("xpe_table1", "range(10)", ["spt", "xpe", "dual_xpe30", "dual_xpe70"]),
    ("xpe_table3", "range(6)", ["dual_xpe70"]),
    ("xpe_table4", "range(10)", ["spt", "xpe", "dual_xpe30", "dual_xpe70"]),
])
def test_paper_presets_state_the_papers_protocol(experiment, seeds, methods):
    """Every XPE preset: prompt before <s>, head on the first virtual token, val/loss monitor,
    patience 20 epochs (not validations), warmup 10 % of the budget; its seed sweep; Table 3's target
    phases (30 epochs, 5 % warmup); Table 4's 5 probe seeds. The method keys hold for every
    swept method, whose pseudo prompt trains at 5e-3 without decay."""
    cfg = compose([f"experiment={experiment}"], with_hydra=True)
    params = cfg.hydra.sweeper.params
    assert params.seed == seeds
    if len(methods) > 1:
        assert params.method.split(",") == methods
    for method in methods:
        point = compose([f"experiment={experiment}", f"method={method}"])
        validate(point)
        for key, value in PAPER_PROTOCOL.items():
            assert select(point, key) == value, (experiment, method, key)
        if method != "spt":
            assert point.method.pseudo_prompt_lr == 5e-3 and point.method.pseudo_prompt_weight_decay == 0.0
    if experiment == "xpe_table3":
        assert cfg.regime.name == "sequential" and cfg.regime.target_early_stopping_patience is None
        assert cfg.regime.target_early_stopping_patience_epochs == 30 and cfg.regime.target_warmup_ratio == 0.05
    if experiment == "xpe_table4":
        assert cfg.regime.name == "langid_probe" and cfg.regime.probe_seeds == 5


@pytest.mark.parametrize("method", ["xpe", "dual", "dual_xpe30", "dual_xpe70"])
def test_xpe_method_yamls_train_the_pseudo_prompt_at_the_embedding_rate(method):
    """The xpe and dual method configs (and dual's presets) put the pseudo prompt at 5e-3 without
    weight decay, as the authors' code."""
    cfg = compose([f"method={method}"])
    assert cfg.method.pseudo_prompt_lr == 5e-3 and cfg.method.pseudo_prompt_weight_decay == 0.0


#: CoCo-CoLa's final layers per model: depth, then the paper's first and last layer (1-based).
COCO_PAPER_LAYERS = {"llama32_1b": (16, 11, 16), "llama32_3b": (28, 15, 28), "llama31_8b_base": (32, 16, 32),
                     "gemma3_4b": (34, 21, 34)}


def test_coco_presets_state_the_papers_protocol():
    """coco_sft: 4 models x 7 languages x 3 seeds, each tested in all seven; coco_partial: the
    paper's last layers, as many first layers, or everything, from the English-tuned run of the same
    model, on each other language; coco_balanced: 200 questions of each language, one point per
    model, method and seed. lr 5e-6, no warmup, 64 questions per step, 10 new tokens."""
    from xlt_runner.cli import job_overrides
    from xlt_runner.models.layers import LayerSelection, resolve_layers
    from omegaconf import OmegaConf
    counts = {"coco_sft": 84, "coco_partial": 216, "coco_balanced": 24}
    for experiment, count in counts.items():
        points = job_overrides([f"experiment={experiment}"], "config", multirun=True)
        assert len(points) == count, experiment
        for point in points[:: max(1, count // 12)]:
            cfg = compose(point)
            validate(cfg)
            assert cfg.benchmark.name == "mintaka" and cfg.benchmark.max_new_tokens == 10
            assert cfg.method.optim.lr == 5e-6 and cfg.method.optim.warmup_ratio == 0.0
            assert cfg.benchmark.batch_size * cfg.trainer.accumulate_grad_batches == 64
            if experiment == "coco_sft":
                assert list(cfg.languages.targets) == ["en", "de", "fr", "it", "pt", "hi", "es"]
                assert cfg.languages.name == f"coco_{cfg.languages.source[0]}" and cfg.method.init_from is None
            else:
                assert cfg.method.init_from == (f"outputs/sweeps/coco_sft/sft-{cfg.model.name}-coco_en-s0-*/"
                                                "method_weights.safetensors")
            if experiment == "coco_partial":
                assert list(cfg.languages.targets) == [cfg.languages.source[0], "en"] and cfg.languages.source != ["en"]
            if experiment == "coco_balanced":
                assert len(cfg.languages.source) == 7 and cfg.benchmark.max_train_examples_per_language == 200
    for model, (depth, first, last) in COCO_PAPER_LAYERS.items():
        chosen = {}
        for method in ("coco_last", "coco_first"):
            cfg = compose(["experiment=coco_partial", f"model={model}", f"method={method}"])
            validate(cfg)
            selection = LayerSelection(**OmegaConf.to_container(cfg.method.trainable, resolve=True))
            chosen[method] = resolve_layers(selection, depth)
        assert chosen["coco_last"] == list(range(first - 1, last)), model  # inclusive, to the last layer
        assert chosen["coco_first"] == list(range(len(chosen["coco_last"]))), model


def test_partition_presets_state_the_treatments_and_find_their_experts():
    """partition_table1: 10 training treatments (full and LoRA) x bn/sw/te x 3 seeds on MGSM, 64
    examples per step, constant lr after warmup, clipping 1.0; partition_table1_swap: 4 merges whose
    experts are the same model, language and seed's runs in the same sweep directory. The CPU pair
    likewise, and every point of both validates."""
    from xlt_runner.cli import job_overrides
    required = ["train_data.language.path=instructions.jsonl"]
    counts = {"partition_table1": 90, "partition_table1_swap": 45, "partition_cpu": 6, "partition_cpu_swap": 4}
    treatments = {}
    for experiment, count in counts.items():
        points = job_overrides([f"experiment={experiment}"], "config", multirun=True)
        assert len(points) == count, experiment
        for point in points:
            if not point[0].startswith("treatment=") or "seed=1" in point or "seed=2" in point:
                continue
            cfg = compose(point + (required if experiment == "partition_table1" else []))
            validate(cfg)
            treatments.setdefault(experiment, set()).add(cfg.method.name)
            assert cfg.benchmark.name == "mgsm" and cfg.languages.targets[0] == "en"
            assert cfg.languages.name == f"mgsm_{cfg.languages.targets[1]}"
            if cfg.method.family == "prompting":
                assert cfg.train_data is None and cfg.method.init_from is None
                continue
            if cfg.method.family == "layer_swap":
                assert cfg.train_data is None
                for role in ("math_expert", "language_expert"):
                    expected = (f"outputs/sweeps/{cfg.sweep_name}/" + "{}" +
                                f"-{cfg.model.name}-{cfg.languages.name}-s{cfg.seed}-*/method_weights.safetensors")
                    assert any(cfg.method[role] == expected.format(name) for name in
                               ("math_only", "language_only", "math_partial", "language_partial", "math_only_lora",
                                "language_only_lora")), cfg.method[role]
                language = cfg.method.partitions.language[0]  # [C]
                assert (language.get("first"), language.get("last")) == (6, 2)
                continue
            assert cfg.train_data.language.language == cfg.languages.targets[1]
            assert cfg.method.optim.schedule == "constant" and cfg.trainer.gradient_clip_val == 1.0
            lora = cfg.method.family == "lora" or cfg.method.get("lora") is not None
            assert cfg.method.optim.lr == (2e-4 if lora else (1e-5 if experiment == "partition_table1" else 2e-5))
            if experiment == "partition_table1":
                assert cfg.benchmark.batch_size * cfg.trainer.accumulate_grad_batches == 64
                assert cfg.model.name == "llama31_8b" and cfg.benchmark.shots == 2
    assert treatments["partition_table1"] == {"math_only", "language_only", "data_mixing", "partition_sft",
                                              "math_partial", "language_partial", "math_only_lora",
                                              "language_only_lora", "data_mixing_lora", "partition_sft_lora"}
    assert treatments["partition_table1_swap"] == {"layer_swap_full", "layer_swap_partial", "layer_swap_reset",
                                                   "layer_swap_full_lora", "prompting"}
    assert treatments["partition_cpu_swap"] == {"layer_swap_full", "layer_swap_partial", "layer_swap_reset",
                                                "prompting"}
