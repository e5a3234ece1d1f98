"""The layer-spec grammar of decoder parameter selection (xlt_runner/models/layers.py)."""
from __future__ import annotations

import pytest

from xlt_runner.config import ConfigError
from conftest import small_llama
from xlt_runner.models.layers import (LayerSelection, check_selection, describe_decoder, parameter_part,
                                      resolve_layers, select_parameters)


def _layers_of(names: list[str]) -> set[int]:
    return {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}


@pytest.mark.parametrize("spec, expected", [
    (dict(layers=[-8, -1]), list(range(8, 16))),     # the last eight, the last layer included
    (dict(layers=[10, 15]), list(range(10, 16))),    # Llama-3.2-1B's paper layers 11-16 (1-based)
    (dict(layers=[[0, 5], [-2, -1]]), [0, 1, 2, 3, 4, 5, 14, 15]),
    (dict(last=0.25), [12, 13, 14, 15]),
    (dict(first=0.25), [0, 1, 2, 3]),
    (dict(last=0.2), [12, 13, 14, 15]),              # 3.2 layers round up to 4
    (dict(first=6, last=2), [0, 1, 2, 3, 4, 5, 14, 15]),
    (dict(last=1.0), list(range(16))),               # a float is a fraction: every layer
    (dict(last=1), [15]),                            # an int is a count: one layer
    (dict(layers=[3, 3]), [3]),
])
def test_layer_ranges_are_inclusive_and_count_from_the_end(spec, expected):
    assert resolve_layers(LayerSelection(**spec), 16) == expected


@pytest.mark.parametrize("spec, message", [
    (dict(layers=[0, 16]), "outside the model's 16 layers"),
    (dict(layers=[-17, -1]), "outside the model's 16 layers"),
    (dict(layers=[5, 2]), "is empty"),
    (dict(layers=[[0, 5], [4, 8]]), "overlap in layer"),
    (dict(first=8, last=0.6), "overlap in layer"),
    (dict(last=17), "the model has 16 layers"),
    (dict(last=0.0), r"must be in \(0, 1\]"),
    (dict(last=1.5), r"must be in \(0, 1\]"),
    (dict(layers=[1, 2, 3]), r"\[start, end\]"),
    (dict(last="all"), "a fraction of the depth"),
])
def test_a_spec_the_model_cannot_satisfy_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_layers(LayerSelection(**spec), 16)


def test_an_empty_selection_and_unknown_parts_are_refused_without_a_model():
    with pytest.raises(ConfigError, match="selects nothing"):
        check_selection(LayerSelection(), "method.trainable")
    with pytest.raises(ConfigError, match="unknown part"):
        check_selection(LayerSelection(last=2, modules=["attn"]), "method.trainable")
    with pytest.raises(ConfigError, match="is empty"):  # empty whatever the depth: refused in the preflight
        check_selection(LayerSelection(layers=[5, 2]), "method.trainable")
    check_selection(LayerSelection(layers=[5, -1]), "method.trainable")  # depends on the depth: at construction
    with pytest.raises(ConfigError, match="no such file"):
        check_selection(LayerSelection(from_analysis="/nonexistent/layer_ranking.json", top=2), "method.trainable")


def test_parts_of_a_layer_and_outside_it_are_told_apart():
    model = small_llama(4)
    layout = describe_decoder(model)
    assert (layout.layers_prefix, layout.num_layers, layout.tied) == ("model.layers", 4, False)
    assert parameter_part("model.layers.2.self_attn.q_proj.weight", layout) == (2, "attention")
    assert parameter_part("model.layers.2.mlp.down_proj.weight", layout) == (2, "mlp")
    assert parameter_part("model.layers.3.post_attention_layernorm.weight", layout) == (3, "norms")
    assert parameter_part("model.embed_tokens.weight", layout) == (None, "embeddings")
    assert parameter_part("lm_head.weight", layout) == (None, "lm_head")
    assert parameter_part("model.norm.weight", layout) == (None, "final_norm")


def test_module_filters_and_switches_select_exactly_their_parameters():
    model = small_llama(8)
    names = select_parameters(model, LayerSelection(last=2, modules=["mlp"], lm_head=True))
    assert _layers_of(names) == {6, 7}
    assert all(".mlp." in n for n in names if n.startswith("model.layers."))
    assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names
    assert "model.norm.weight" not in names
    every_part = select_parameters(model, LayerSelection(layers=[7, 7]))
    assert every_part == [n for n, _ in model.named_parameters() if n.startswith("model.layers.7.")]


def test_tied_embeddings_train_together_or_not_at_all():
    tied = small_llama(4, tied=True)
    assert describe_decoder(tied).tied
    with pytest.raises(ConfigError, match="tied to the input embedding"):
        select_parameters(tied, LayerSelection(last=1, lm_head=True))
    names = select_parameters(tied, LayerSelection(last=1, lm_head=True, embeddings=True))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # one shared matrix
    untied = small_llama(4, tied=False)
    names = select_parameters(untied, LayerSelection(last=1, lm_head=True))
    assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names


def test_a_gemma3_decoder_is_laid_out_like_llama():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64)
    model = Gemma3ForCausalLM(config)
    layout = describe_decoder(model)
    assert (layout.layers_prefix, layout.num_layers, layout.tied) == ("model.layers", 4, True)
    names = select_parameters(model, LayerSelection(last=1, modules=["attention"]))
    assert names and all(n.startswith("model.layers.3.self_attn.") for n in names)
    assert any(n.endswith("q_norm.weight") for n in names)  # Gemma-3's q/k norms belong to attention


# ---------------------------------------------------------------- name patterns (``names``)

def test_name_patterns_alone_select_by_name_across_the_model():
    model = small_llama(8)
    assert select_parameters(model, LayerSelection(names=[".*embed_tokens.*"])) == ["model.embed_tokens.weight"]
    names = select_parameters(model, LayerSelection(names=[r".*\.(q|v)_proj\..*", r"model\.norm\.weight"]))
    assert _layers_of(names) == set(range(8)) and len(names) == 2 * 8 + 1  # every layer: no layer key given
    assert all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in names[:-1]) and names[-1] == "model.norm.weight"
    assert select_parameters(model, LayerSelection(names=["model.embed_tokens.weight"], lm_head=True)) == [
        "model.embed_tokens.weight", "lm_head.weight"]  # a switch adds its parameters to the patterns'
    # a pattern is a full match of the whole name, not a search
    with pytest.raises(ConfigError, match="matches no parameter"):
        select_parameters(model, LayerSelection(names=["q_proj"]))
    # ``modules`` still restricts what a pattern picks inside a layer
    mlp = select_parameters(model, LayerSelection(names=[r".*\.weight"], modules=["mlp"]))
    assert {n for n in mlp if n.startswith("model.layers.")} == {
        n for n, _ in model.named_parameters() if ".mlp." in n}
    assert {n for n in mlp if not n.startswith("model.layers.")} == {
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


def test_name_patterns_with_layers_filter_the_chosen_layers():
    model = small_llama(8)
    names = select_parameters(model, LayerSelection(layers=[0, 5], names=[".*q_proj.*"]))
    assert names == [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(6)]
    names = select_parameters(model, LayerSelection(last=2, names=[".*proj.*"], modules=["mlp"], embeddings=True))
    assert names == ["model.embed_tokens.weight"] + [f"model.layers.{i}.mlp.{p}_proj.weight"
                                                     for i in (6, 7) for p in ("gate", "up", "down")]
    # the switch's parameter is not filtered by the patterns; a pattern reaching outside the layers is refused
    with pytest.raises(ConfigError, match=r"names\[1\]='lm_head.\*' matches 1 parameter.*none in this selection's "
                                          r"layers \[6, 7\].*only filter the chosen layers"):
        select_parameters(model, LayerSelection(last=2, names=[".*mlp.*", "lm_head.*"]))
    with pytest.raises(ConfigError, match=r"none in this selection's modules \['attention'\]"):
        select_parameters(model, LayerSelection(names=[r".*mlp\.up.*"], modules=["attention"]))


def test_bad_name_patterns_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"method.trainable.names\[1\]='\(q' is not a valid regular expression"):
        check_selection(LayerSelection(names=[".*", "(q"]), "method.trainable")  # no model needed
    with pytest.raises(ConfigError, match="give a list of regular expressions"):
        check_selection(LayerSelection(names=".*q_proj.*"), "method.trainable")
    with pytest.raises(ConfigError, match="non-empty regular expression"):
        check_selection(LayerSelection(names=[""]), "method.trainable")
    check_selection(LayerSelection(names=[".*q_proj.*"]), "method.trainable")  # names alone select something
    from omegaconf import OmegaConf  # the preflight checks the config node, not the dataclass
    check_selection(OmegaConf.structured(LayerSelection(names=[".*q_proj.*"])), "method.trainable")
    with pytest.raises(ConfigError, match="is not a valid regular expression"):
        check_selection(OmegaConf.structured(LayerSelection(last=2, names=["[q"])), "method.trainable")
    with pytest.raises(ConfigError, match="selects nothing"):
        check_selection(LayerSelection(names=[]), "method.trainable")
    with pytest.raises(ConfigError) as err:  # a typo: the closest names are given, layer indices as <i>
        select_parameters(small_llama(4), LayerSelection(last=2, names=[".*q_prj.*"]))
    assert "method.trainable.names[0]='.*q_prj.*' matches no parameter of LlamaForCausalLM" in str(err.value)
    assert "closest names: ['model.layers.<i>.self_attn.q_proj.weight'" in str(err.value)


def test_a_name_pattern_on_a_tied_lm_head_obeys_the_lm_head_rule():
    tied = small_llama(4, tied=True)
    with pytest.raises(ConfigError, match=r"picks lm_head.weight, which is tied to model.embed_tokens.weight"):
        select_parameters(tied, LayerSelection(names=["lm_head.*"]))
    for selection in (LayerSelection(names=["lm_head.*"], embeddings=True),
                      LayerSelection(names=["lm_head.*", ".*embed_tokens.*"])):
        assert select_parameters(tied, selection) == ["model.embed_tokens.weight"]  # one shared matrix
    untied = small_llama(4)
    assert select_parameters(untied, LayerSelection(names=["lm_head.*"])) == ["lm_head.weight"]
