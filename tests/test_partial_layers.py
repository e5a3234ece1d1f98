"""``method=partial_layers``: only the selected decoder parameters train, and cheaply."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlt_runner.config import ConfigError
from xlt_runner.methods.decoder import PartialLayers, PartialLayersConfig
from xlt_runner.models.layers import LayerSelection
from xlt_runner.models.loading import Backbone
from xlt_runner.tasks.generation import QA_SCORING, GenerationTask

from conftest import find_records, run_cli, small_llama
from test_generation_run import make_synthetic_qa, qa_args


def _method(selection: LayerSelection, layers: int = 6, tied: bool = False, **cfg) -> PartialLayers:
    model = small_llama(layers, tied)
    backbone = Backbone(model=model, tokenizer=None, kind="decoder", name="tiny", hidden_size=16, source="test",
                        pooling=None)
    task = GenerationTask(eval_languages=["en"], source_languages=["en"], datamodule=None, max_new_tokens=4,
                          stop_strings=[], stop_token_ids=(), language_identifier="py3langid", scoring=QA_SCORING)
    return PartialLayers(PartialLayersConfig(trainable=selection, **cfg), backbone, task, total_steps=4)


def _batch(rows: int = 3, width: int = 10) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 60, (rows, width), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_only_the_selected_parameters_train_and_get_gradients():
    method = _method(LayerSelection(layers=[-2, -1], modules=["mlp", "norms"]))
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("backbone.model.layers.4.", "backbone.model.layers.5.")) for n in trainable)
    assert not any(".self_attn." in n for n in trainable)
    summed, count = method.answer_losses(_batch())
    (summed.sum() / count.sum()).backward()
    for name, param in method.named_parameters():
        assert (param.grad is not None) == (name in trainable), name
    optimizer = method.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in method.named_parameters() if n in trainable}


def test_no_autograd_graph_below_the_lowest_trainable_layer():
    """Layers under the lowest trainable one produce outputs that need no gradient, so autograd
    keeps none of their activations; from the lowest trainable layer on, it does."""
    method = _method(LayerSelection(last=2))
    needs_grad: dict[int, bool] = {}
    hooks = [layer.register_forward_hook(lambda mod, args, out, i=i: needs_grad.__setitem__(
        i, (out[0] if isinstance(out, tuple) else out).requires_grad))
        for i, layer in enumerate(method.backbone.model.layers)]
    method.answer_losses(_batch())
    for hook in hooks:
        hook.remove()
    assert needs_grad == {0: False, 1: False, 2: False, 3: False, 4: True, 5: True}


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = _method(LayerSelection(last=2))
    checkpointed = _method(LayerSelection(last=2), gradient_checkpointing=True)
    checkpointed.train(), plain.train()
    for method in (plain, checkpointed):
        summed, count = method.answer_losses(_batch())
        (summed.sum() / count.sum()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_a_layer_range_outside_the_model_fails_at_construction():
    with pytest.raises(ConfigError, match="outside the model's 6 layers"):
        _method(LayerSelection(layers=[2, 6]))
    with pytest.raises(ConfigError, match="tied to the input embedding"):
        _method(LayerSelection(last=1, lm_head=True), tied=True)


def test_a_partial_run_records_which_parameters_trained(tmp_path, shared_cache):
    data = make_synthetic_qa(tmp_path / "mkqa")
    out = tmp_path / "out"
    result = run_cli(qa_args(data, out, shared_cache, "method=partial_layers", "method.trainable.last=null",
                             "method.trainable.layers=[-1,-1]", "method.optim.lr=1e-3", "trainer.max_steps=4",
                             "trainer.val_check_interval=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    run_dir = Path(next(out.rglob("results.json")).parent)
    assert record["status"] == "complete" and record["method_family"] == "partial_layers"
    table = list(csv.DictReader(open(run_dir / record["outputs"]["trainable_parameters"]), delimiter="\t"))
    assert table and all(row["name"].startswith("backbone.model.layers.1.") for row in table)  # tiny llama: 2 layers
    assert sum(int(row["count"]) for row in table) == record["params"]["trainable"] < record["params"]["total"]
    assert set(load_file(run_dir / "method_weights.safetensors")) == {row["name"] for row in table}


def test_under_fsdp_the_optimiser_holds_only_the_trainable_parameters():
    """The optimiser gets the parameters that require a gradient, whatever the strategy; with
    frozen and trainable parameters in one FSDP unit that needs FSDP to keep the original
    parameters, which Lightning's ``fsdp`` strategy (``trainer=fsdp``) does by default: pinned here."""
    from pytorch_lightning.strategies import FSDPStrategy
    assert FSDPStrategy().kwargs["use_orig_params"] is True
    from xlt_runner.composition import compose
    assert compose(["trainer=fsdp"]).trainer.strategy == "fsdp"
