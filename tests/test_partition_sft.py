"""Simultaneous partition SFT and partial SFT (issue 12, items 3-4): each optimiser step updates one
partition from one dataset with its own AdamW state; the inactive partition's parameters, moments
and step count stay bitwise unchanged; what no partition covers never changes; LoRA adapters are
toggled the same way; runs record their training data and log losses per dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import find_records, run_cli, small_llama
from test_generation_run import make_synthetic_qa, qa_args
from test_sft_data import GSM8K_ROW, write_jsonl
from xlt_runner.data.batching import BatchedDataModule
from xlt_runner.data.generation import PromptCollator
from xlt_runner.data.generation import _pack
from xlt_runner.data.sft_data import ROLES, SftCollator, SftDataModule, SftDataset
from xlt_runner.methods.partition import LoraSettings, PartitionSft, PartitionSftConfig
from xlt_runner.models.layers import LayerSelection
from xlt_runner.models.loading import Backbone
from xlt_runner.tasks.generation import MATH_SCORING, GenerationTask

PARTITIONS = {"language": [LayerSelection(first=2)], "math": [LayerSelection(last=2)]}


class TwoDatasets(BatchedDataModule):
    """Random token rows of two datasets, served as :class:`SftDataModule` serves them (alternating)."""
    train_dataloader = SftDataModule.train_dataloader

    def __init__(self, accumulate: int, steps: int) -> None:
        super().__init__(source_languages=["en"], target_languages=["en"], batch_size=2, eval_batch_size=2,
                         num_training_batches=steps * accumulate, seed=0, splits={}, max_train_examples_per_language=None,
                         max_eval_examples_per_language=None, num_workers=0, train_collator=SftCollator(0),
                         test_collator=PromptCollator(0))
        rng = np.random.default_rng(0)
        parts = [_pack([(rng.integers(3, 60, 9).tolist(), 5) for _ in range(12)], [str(i) for i in range(12)], 0, 0)
                 for _ in ROLES]
        self._datasets = {"train": SftDataset(parts, [0, 0], [0, 1])}
        self.mode, self.accumulate, self.steps_per_switch = "alternate", accumulate, 1


class Snapshots(pl.Callback):
    """Every trainable tensor and both optimisers' states after each optimiser step."""

    def __init__(self) -> None:
        self.after: list[dict] = []

    def _state(self, trainer, module) -> dict:
        params = {n: p.detach().clone() for n, p in module.named_parameters()}
        optim = []
        for optimizer in trainer.optimizers:
            optim.append({(g, i): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in
                                   optimizer.state.get(p, {}).items()}
                          for g, group in enumerate(optimizer.param_groups) for i, p in enumerate(group["params"])})
        return {"step": trainer.global_step, "params": params, "optim": optim}

    def on_train_start(self, trainer, module) -> None:
        self.after.append(self._state(trainer, module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.after[-1]["step"]:
            self.after.append(self._state(trainer, module))


def _method(lora: bool = False) -> PartitionSft:
    backbone = Backbone(model=small_llama(6), tokenizer=None, kind="decoder", name="tiny", hidden_size=16,
                        source="test", pooling=None)
    task = GenerationTask(eval_languages=["en"], source_languages=["en"], datamodule=None, max_new_tokens=4,
                          stop_strings=[], stop_token_ids=(), language_identifier="py3langid", scoring=MATH_SCORING,
                          train_roles=ROLES)
    cfg = OmegaConf.structured(PartitionSftConfig(partitions=PARTITIONS, lora=LoraSettings(r=2) if lora else None))
    cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_ratio = 1e-2, "constant", 0.0
    method = PartitionSft(cfg, backbone, task, total_steps=6)
    method.accumulate_grad_batches = 2
    method.gradient_clip_val = 1.0
    return method


def _fit(method: PartitionSft, steps: int = 6) -> Snapshots:
    snapshots = Snapshots()
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[snapshots])
    trainer.fit(method, datamodule=TwoDatasets(accumulate=2, steps=steps))
    assert trainer.global_step == steps
    return snapshots


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_each_step_changes_only_the_active_partition_and_its_optimiser(lora):
    method = _method(lora)
    members = {ROLES.index(role): set(names) for role, names in method.role_parameters.items()}
    frozen = {n for n, _ in method.named_parameters()} - members[0] - members[1]
    assert members[0] and members[1] and frozen
    if lora:  # adapters only, each in the partition of the layer it adapts
        assert all(".lora_" in n for names in members.values() for n in names)
        assert all(".layers.4." in n or ".layers.5." in n for n in members[0])
        assert all(".layers.0." in n or ".layers.1." in n for n in members[1])
    snapshots = _fit(method)
    states = snapshots.after
    assert [s["step"] for s in states] == list(range(7))
    for before, after in zip(states, states[1:]):
        active = before["step"] % 2  # step 0: task (math) partition, step 1: language, ...
        inactive = 1 - active
        for name in members[inactive] | frozen:
            assert torch.equal(before["params"][name], after["params"][name]), f"step {before['step']}: {name} moved"
        assert any(not torch.equal(before["params"][n], after["params"][n]) for n in members[active])
        for key, state in before["optim"][inactive].items():  # moments and step count, bitwise
            assert state.keys() == after["optim"][inactive][key].keys()
            for k, v in state.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(after["optim"][inactive][key][k])), (key, k)
        steps = {float(s["step"]) for s in after["optim"][active].values() if "step" in s}
        assert steps == {float(before["step"] // 2 + 1)}, "the active optimiser counts only its own steps"
    # every tensor of both partitions is saved, whichever was active last
    assert set(method.trainable_state_dict()) == members[0] | members[1]


def test_each_partition_update_is_what_its_own_adamw_would_do_alone():
    """Steps 0 (task data) and 1 (language data) update their partitions exactly as a lone AdamW
    over those tensors would, from the gradient of that step's batches only (clipped): no
    gradient of the other dataset leaks in, not even one left over from the step before."""
    method = _method()
    reference = _method()
    batches = [b for _, b in zip(range(4), TwoDatasets(accumulate=2, steps=2).train_dataloader())]
    assert [int(b["dataset"].unique()) for b in batches] == [0, 0, 1, 1]
    params = dict(reference.named_parameters())
    for step, role in enumerate(ROLES):
        chosen = [params[n] for n in reference.role_parameters[role]]
        for p in reference.parameters():
            p.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
        for batch in batches[2 * step:2 * step + 2]:
            summed, count = reference.answer_losses(batch)
            (summed.sum() / count.sum() / 2).backward()
        torch.nn.utils.clip_grad_norm_(chosen, 1.0)
        torch.optim.AdamW(chosen, lr=1e-2, weight_decay=0.0).step()
    _fit(method, steps=2)
    got = dict(method.named_parameters())
    for role in ROLES:
        for name in reference.role_parameters[role]:
            assert torch.allclose(got[name], params[name], atol=1e-7, rtol=0), (role, name)


def make_sft_files(root: Path) -> dict[str, Path]:
    """A GSM8K-format task file (41 problems) and the synthetic QA benchmark (its Japanese train
    split is the language data)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"Tom has {i} apples and buys {i % 5 + 1} more. How many does he have?",
             "answer": f"Tom has {i} + {i % 5 + 1} = <<{i}+{i % 5 + 1}={i + i % 5 + 1}>>{i + i % 5 + 1} apples.\n"
                       f"#### {i + i % 5 + 1}"} for i in range(40)]
    return {"task": write_jsonl(root / "gsm8k.jsonl", rows + [GSM8K_ROW]), "qa": make_synthetic_qa(root / "mkqa")}


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory) -> dict[str, Path]:
    return make_sft_files(tmp_path_factory.mktemp("sft_data"))


def partition_args(files: dict[str, Path], out: Path, cache: Path, *extra: str) -> list[str]:
    """A partition SFT run on the synthetic QA benchmark: the GSM8K-format task data (en) and
    the QA benchmark's own Japanese train split as language data."""
    return qa_args(files["qa"], out, cache, "method=partition_sft", "train_data=gsm8k_mkqa",
                   f"train_data.task.path={files['task']}", "train_data.task.dev_size=4",
                   f"train_data.language.data_dir={files['qa']}", "train_data.language.dev_size=4",
                   "languages.source=[en,ja]", "languages.targets=[en,ja]", "method.optim.lr=1e-2",
                   "method.optim.warmup_ratio=0", "model.max_length=96",
                   "method.partitions={language: [{first: 1}], math: [{last: 1}]}", *extra)


def test_a_partition_sft_run_records_its_data_and_logs_each_dataset(sft_files, tmp_path, shared_cache):
    out = tmp_path / "out"
    result = run_cli(partition_args(sft_files, out, shared_cache, "trainer.max_steps=4", "trainer.val_check_interval=2",
                                    "trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1", "logger=default",
                                    "logger.wandb.enabled=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    assert record["status"] == "complete" and record["method_family"] == "partition_sft"
    assert record["train_data"]["mode"] == "alternate"
    assert record["train_data"]["datasets"]["task"] == {"name": "gsm8k", "language": "en", "train": 37, "dev": 4}
    assert record["train_data"]["datasets"]["language"]["dev"] == 4
    assert record["params"]["partition_math"] > 0 and record["params"]["partition_language"] > 0
    assert record["training"]["trained_steps"] == 4
    (metrics_csv,) = out.rglob("metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert {"train/loss_task", "train/loss_language", "val/loss_task", "val/loss_language", "val/loss"} <= set(header)
    trainable = (out / "runs" / record["run_id"] / "trainable_parameters.tsv").read_text()
    assert "layers.0." in trainable and "layers.1." in trainable  # tiny_llama: 2 layers, one per partition


def test_partial_sft_trains_one_partition_on_one_dataset(sft_files, tmp_path, shared_cache):
    out = tmp_path / "out"
    args = [a for a in partition_args(sft_files, out, shared_cache) if a not in ("method=partition_sft",)]
    args = [a if a != "languages.source=[en,ja]" else "languages.source=[en]" for a in args]
    result = run_cli(args + ["method=partial_sft", "method.partition=math", "train_data.mode=task",
                             "trainer.max_steps=2", "trainer.val_check_interval=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    assert record["status"] == "complete" and record["train_data"]["datasets"].keys() == {"task"}
    from safetensors.torch import load_file
    saved = load_file(str(out / "runs" / record["run_id"] / "method_weights.safetensors"))
    assert saved and all(".layers.1." in k for k in saved), sorted(saved)[:4]

