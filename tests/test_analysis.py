"""Parameter-update analysis (xlt_runner/analysis.py, ``xlt-analyze layers``) and its ranking fed
back as a layer spec."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xlt_runner.analysis import AnalysisError, analyze_layers, layer_updates, rank_layers, top_layers
from xlt_runner.config import ConfigError
from xlt_runner.models.layers import LayerSelection, resolve_layers


def _base_state(layers: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(10, 4, generator=g)}
    for i in range(layers):
        state[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g)
        state[f"model.layers.{i}.mlp.down_proj.weight"] = torch.randn(4, 8, generator=g)
        state[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(4)
    return state


def _run(tmp_path: Path, name: str, changes: dict[str, float], layers: int = 3) -> Path:
    """A run directory whose method_weights are the base plus ``changes`` (name -> added constant),
    saved under the method's ``backbone.`` prefix."""
    state = {f"backbone.{k}": v + changes.get(k, 0.0) for k, v in _base_state(layers).items()}
    run = tmp_path / name
    run.mkdir()
    save_file(state, str(run / "method_weights.safetensors"))
    return run


@pytest.fixture
def base(tmp_path) -> Path:
    folder = tmp_path / "base_model"
    folder.mkdir()
    save_file(_base_state(), str(folder / "model.safetensors"))
    return folder


def test_updates_are_mean_absolute_changes_per_layer_and_module(tmp_path, base):
    run = _run(tmp_path, "a", {"model.layers.1.mlp.down_proj.weight": 0.5, "model.layers.2.self_attn.q_proj.weight": -0.25})
    updates = layer_updates(run, base)
    assert sorted(updates) == [0, 1, 2]  # the embedding is outside the layers
    assert updates[1]["down_proj"] == pytest.approx(0.5) and updates[2]["q_proj"] == pytest.approx(0.25)
    assert updates[0] == {"down_proj": 0.0, "input_layernorm": 0.0, "q_proj": 0.0}


def test_layers_are_ranked_by_how_much_more_the_target_run_moved_them(tmp_path, base):
    target = layer_updates(_run(tmp_path, "target", {"model.layers.2.mlp.down_proj.weight": 0.9,
                                                     "model.layers.0.mlp.down_proj.weight": 0.3}), base)
    english = layer_updates(_run(tmp_path, "english", {"model.layers.0.mlp.down_proj.weight": 0.6}), base)
    ranking = rank_layers(target, english)
    assert [row["layer"] for row in ranking] == [2, 1, 0]
    assert ranking[0]["score"] == pytest.approx(0.9 / 3) and ranking[2]["score"] == pytest.approx(-0.3 / 3)


def test_the_ranking_becomes_a_layer_spec_for_a_model_of_that_depth(tmp_path, base):
    out = tmp_path / "analysis"
    analyze_layers(_run(tmp_path, "target", {"model.layers.1.mlp.down_proj.weight": 1.0}),
                   _run(tmp_path, "english", {}), base, out)
    assert {p.name for p in out.iterdir()} == {"layer_ranking.json", "updates_a.png", "updates_b.png",
                                               "updates_a_minus_b.png"}
    ranking = out / "layer_ranking.json"
    assert top_layers(ranking, 1, depth=3) == [1]
    assert resolve_layers(LayerSelection(from_analysis=str(ranking), top=1), 3) == [1]
    assert resolve_layers(LayerSelection(from_analysis=str(ranking), top=1, first=1), 3) == [0, 1]
    with pytest.raises(ConfigError, match="3-layer model; this model has 16"):
        resolve_layers(LayerSelection(from_analysis=str(ranking), top=1), 16)
    with pytest.raises(ConfigError, match="overlap"):
        resolve_layers(LayerSelection(from_analysis=str(ranking), top=1, layers=[1, 2]), 3)
    with pytest.raises(ConfigError, match="ranks 3 layers"):
        resolve_layers(LayerSelection(from_analysis=str(ranking), top=4), 3)


def test_inputs_that_cannot_be_compared_are_refused(tmp_path, base):
    other = tmp_path / "other"
    other.mkdir()
    save_file({"backbone.model.layers.0.mlp.down_proj.weight": torch.zeros(8, 4)}, str(other / "method_weights.safetensors"))
    with pytest.raises(AnalysisError, match="not the same model"):
        layer_updates(other, base)
    with pytest.raises(AnalysisError, match="no safetensors weights"):
        layer_updates(tmp_path / "nowhere", base)
    not_ranking = tmp_path / "x.json"
    not_ranking.write_text(json.dumps({"hello": 1}))
    with pytest.raises(AnalysisError, match="not a layer ranking"):
        top_layers(not_ranking, 1, 3)


def test_xlt_analyze_layers_command(tmp_path, base):
    a = _run(tmp_path, "a", {"model.layers.0.self_attn.q_proj.weight": 2.0})
    b = _run(tmp_path, "b", {})
    script = Path(sys.executable).parent / "xlt-analyze"
    done = subprocess.run([str(script), "layers", str(a), str(b), "--base", str(base)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (a / "analysis" / "layer_ranking.json").is_file() and "layers changing more in A than in B: 0" in done.stdout
    wrong = subprocess.run([str(script), "layers", str(a), str(b), "--base", str(tmp_path / "missing")],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "no safetensors weights" in wrong.stderr


def test_a_ranking_of_another_model_of_the_same_depth_is_refused(tmp_path, base):
    """The ranking keeps the shapes of the tensors it compared: a model of the same depth but other
    shapes (another model) is refused when the spec is resolved against it; the model it was made
    on (same names and shapes) is accepted."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import small_llama
    from xlt_runner.models.layers import select_parameters
    out = tmp_path / "analysis"
    analyze_layers(_run(tmp_path, "target", {"model.layers.1.mlp.down_proj.weight": 1.0}),
                   _run(tmp_path, "english", {}), base, out)
    spec = LayerSelection(from_analysis=str(out / "layer_ranking.json"), top=1)
    with pytest.raises(ConfigError, match=r"ranks another model: its model.layers.0.\S+ has shape"):
        select_parameters(small_llama(layers=3), spec)
    same = LlamaForCausalLM(LlamaConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=3,
                                        num_attention_heads=1, num_key_value_heads=1))
    assert select_parameters(same, spec) and all(".layers.1." in n for n in select_parameters(same, spec))
