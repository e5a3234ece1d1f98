"""Layer-Swapping merges (issue 12, item 5): every tensor of the merged model is, bit for bit,
the tensor of the expert it should come from; sharded output loads with transformers; experts of
different architectures or tensors are refused before anything is written."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import small_llama
from xlt_runner.config import ConfigError
from xlt_runner.merging import MERGE_FILE, layer_swap
from xlt_runner.models.layers import LayerSelection


def expert(folder, seed: int, layers: int = 6, tied: bool = False):
    """The 6-layer base with every parameter moved by seeded noise, saved with save_pretrained."""
    model = small_llama(layers=layers, tied=tied)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * (0 if seed == 0 else 0.1))
    model.save_pretrained(folder)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def merged_tensors(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize("non_layer", ["math", "language", "base"])
def test_every_merged_tensor_is_the_right_experts_bit_for_bit(tmp_path, non_layer):
    base = expert(tmp_path / "base", seed=0)
    math = expert(tmp_path / "math", seed=1)
    language = expert(tmp_path / "language", seed=2)
    report = layer_swap(tmp_path / "math", tmp_path / "language", tmp_path / "merged",
                        language_layers=LayerSelection(first=2, last=1), non_layer=non_layer,
                        base=tmp_path / "base", shard_bytes=40_000)
    assert report.language_layers == [0, 1, 5] and report.shards > 1
    merged = merged_tensors(tmp_path / "merged")
    assert set(merged) == set(math)
    outside = {"math": math, "language": language, "base": base}[non_layer]
    for name, tensor in merged.items():
        if ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            expected = language[name] if layer in (0, 1, 5) else math[name]
        else:
            expected = outside[name]
        assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), name
    loaded = type(small_llama()).from_pretrained(tmp_path / "merged")
    assert all(torch.equal(loaded.state_dict()[name], merged[name]) for name in merged)
    record = json.loads((tmp_path / "merged" / MERGE_FILE).read_text())
    assert record["language_layers"] == [0, 1, 5] and record["non_layer"] == non_layer
    assert record["sources"]["model.layers.5.mlp.down_proj.weight"] == "language"
    assert record["sources"]["model.layers.2.self_attn.q_proj.weight"] == "math"


def test_a_module_filter_swaps_only_those_parts(tmp_path):
    math, language = expert(tmp_path / "math", seed=1), expert(tmp_path / "language", seed=2)
    layer_swap(tmp_path / "math", tmp_path / "language", tmp_path / "merged",
               language_layers=LayerSelection(layers=[0, -1], modules=["attention"]), non_layer="math")
    merged = merged_tensors(tmp_path / "merged")
    for name, tensor in merged.items():
        assert torch.equal(tensor, (language if ".self_attn." in name else math)[name]), name


def test_a_tied_model_merges_and_loads(tmp_path):
    expert(tmp_path / "math", seed=1, tied=True)
    language = expert(tmp_path / "language", seed=2, tied=True)
    layer_swap(tmp_path / "math", tmp_path / "language", tmp_path / "merged",
               language_layers=LayerSelection(last=2), non_layer="language")
    loaded = type(small_llama()).from_pretrained(tmp_path / "merged")
    assert torch.equal(loaded.lm_head.weight, language["model.embed_tokens.weight"])


def test_experts_that_differ_are_refused_before_anything_is_written(tmp_path):
    expert(tmp_path / "math", seed=1)
    expert(tmp_path / "deeper", seed=2, layers=8)
    with pytest.raises(ConfigError, match="num_hidden_layers=8 there, 6 in"):
        layer_swap(tmp_path / "math", tmp_path / "deeper", tmp_path / "out",
                   language_layers=LayerSelection(first=1), non_layer="math")
    expert(tmp_path / "language", seed=2)
    from safetensors.torch import load_file, save_file
    weights = load_file(tmp_path / "language" / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "language" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="model.norm.weight is only in the math model"):
        layer_swap(tmp_path / "math", tmp_path / "language", tmp_path / "out",
                   language_layers=LayerSelection(first=1), non_layer="math")
    expert(tmp_path / "language", seed=2)
    for kwargs, message in [({"non_layer": "base"}, "needs the base model"),
                            ({"non_layer": "average"}, "say where embeddings"),
                            ({"non_layer": "math", "language_layers": LayerSelection(layers=[0, 9])}, "outside")]:
        with pytest.raises(ConfigError, match=message):
            layer_swap(tmp_path / "math", tmp_path / "language", tmp_path / "out",
                       **{"language_layers": LayerSelection(first=1), **kwargs})
    assert not (tmp_path / "out").exists()
