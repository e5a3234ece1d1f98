"""Parameter partitions (issue 12, item 2): named disjoint parameter sets in the layer grammar of
``method.trainable``, the paper's presets [A] [B] [C] on models of several depths, overlap and
tied-weight refusals, and the uncovered rest reported."""
from __future__ import annotations

import pytest
import yaml

from conftest import small_llama
from xlt_runner.composition import CONF_DIR
from xlt_runner.config import ConfigError
from xlt_runner.models.layers import LayerSelection, describe_decoder, parameter_part, select_partitions


def preset(name: str) -> dict[str, list[LayerSelection]]:
    spec = yaml.safe_load((CONF_DIR / "partition" / f"{name}.yaml").read_text())
    return {part: [LayerSelection(**selection) for selection in selections] for part, selections in spec.items()}


def parts_by_layer(model, names: list[str]) -> dict[int | None, set[str]]:
    """layer -> the parts (attention, mlp, norms, embeddings, ...) of ``names`` in it."""
    layout = describe_decoder(model)
    out: dict[int | None, set[str]] = {}
    for name in names:
        layer, part = parameter_part(name, layout)
        out.setdefault(layer, set()).add(part)
    return out


@pytest.mark.parametrize("depth", [16, 28, 32, 36])
def test_the_papers_presets_fit_every_depth(depth):
    model = small_llama(layers=depth)
    every = [n for n, _ in model.named_parameters()]
    language_layers = set(range(6)) | {depth - 2, depth - 1}
    a = select_partitions(model, preset("layer_swap_a"))
    lang, math = parts_by_layer(model, a.members["language"]), parts_by_layer(model, a.members["math"])
    assert set(lang) == set(range(depth))  # attention everywhere
    assert all(lang[i] == ({"attention", "mlp"} if i in language_layers else {"attention"}) for i in lang)
    assert math == {i: {"mlp"} for i in range(depth) if i not in language_layers}
    assert {parameter_part(n, describe_decoder(model))[1] for n in a.uncovered} == {"norms", "embeddings", "lm_head",
                                                                                    "final_norm"}
    assert sorted(a.members["language"] + a.members["math"] + a.uncovered) == sorted(every)  # a partition of all

    b = select_partitions(model, preset("layer_swap_b"))
    assert set(parts_by_layer(model, b.members["language"])) == set(range(8)) | set(range(depth - 4, depth))
    assert set(parts_by_layer(model, b.members["math"])) == set(range(8, depth - 4))
    assert all(parts == {"attention", "mlp", "norms"} for parts in parts_by_layer(model, b.members["math"]).values())
    c = select_partitions(model, preset("layer_swap_c"))
    assert set(parts_by_layer(model, c.members["math"])) == set(range(6, depth - 2))
    assert set(parts_by_layer(model, c.uncovered)) == {None}  # only what is outside the layers


def test_overlapping_partitions_are_refused_naming_both():
    model = small_llama(layers=12)
    with pytest.raises(ConfigError, match=r"partitions 'language' and 'math' overlap in \d+ parameter tensor"):
        select_partitions(model, {"language": [LayerSelection(first=8)], "math": [LayerSelection(layers=[6, -1])]})
    with pytest.raises(ConfigError, match="overlap"):  # the same layers' MLPs named in both
        select_partitions(model, {"language": [LayerSelection(layers=[0, -1], modules=["mlp"])],
                                  "math": [LayerSelection(layers=[2, 3], modules=["mlp", "norms"])]})
    disjoint = select_partitions(model, {"language": [LayerSelection(layers=[0, -1], modules=["attention"])],
                                         "math": [LayerSelection(layers=[0, -1], modules=["mlp"])]})
    assert disjoint.members["language"] and disjoint.members["math"]  # the same layers, other modules: fine


def test_tied_weights_belong_to_one_partition():
    tied = small_llama(layers=6, tied=True)
    with pytest.raises(ConfigError, match="overlap"):
        select_partitions(tied, {"language": [LayerSelection(embeddings=True)],
                                 "math": [LayerSelection(lm_head=True, embeddings=True)]})
    with pytest.raises(ConfigError, match="tied"):
        select_partitions(tied, {"language": [LayerSelection(first=2)], "math": [LayerSelection(lm_head=True)]})
    untied = small_llama(layers=6)
    split = select_partitions(untied, {"language": [LayerSelection(embeddings=True)],
                                       "math": [LayerSelection(lm_head=True)]})
    assert split.members == {"language": ["model.embed_tokens.weight"], "math": ["lm_head.weight"]}


@pytest.mark.parametrize("partitions,expected", [
    ({}, "is empty: name at least one partition"),
    ({"language": []}, "method.partitions.language is empty"),
    ({"language": [LayerSelection(layers=[0, 40])]}, "outside the model's 12 layers"),
    ({"language": [LayerSelection(first=2, modules=["ffn"])]}, "unknown part"),
])
def test_bad_partitions_are_refused(partitions, expected):
    with pytest.raises(ConfigError, match=None) as err:
        select_partitions(small_llama(layers=12), partitions)
    assert expected in str(err.value)


def test_describe_counts_each_partition_and_the_frozen_rest():
    model = small_llama(layers=12)
    text = select_partitions(model, preset("layer_swap_c")).describe(model)
    assert text.startswith("language: 72 tensors") and "math: 36 tensors" in text and "uncovered (frozen): 3 tensors" in text


# ---------------------------------------------------------------- name patterns in partitions

@pytest.mark.parametrize("depth", [16, 28])
def test_partition_a_written_with_name_patterns_equals_the_preset(depth):
    model = small_llama(layers=depth)
    by_name = {"language": [LayerSelection(names=[r"model\.layers\.\d+\.self_attn\..*"]),
                            LayerSelection(first=6, last=2, names=[r".*\.mlp\..*"])],
               "math": [LayerSelection(layers=[6, -3], names=[r".*\.mlp\..*"])]}
    assert select_partitions(model, by_name) == select_partitions(model, preset("layer_swap_a"))


def test_partitions_by_name_pattern_alone_and_with_layers():
    model = small_llama(layers=12)
    split = select_partitions(model, {"language": [LayerSelection(names=[".*embed_tokens.*", "lm_head.*"])],
                                      "math": [LayerSelection(layers=[4, 7], names=[".*down_proj.*"])]})
    assert split.members == {"language": ["model.embed_tokens.weight", "lm_head.weight"],
                             "math": [f"model.layers.{i}.mlp.down_proj.weight" for i in range(4, 8)]}
    assert len(split.uncovered) == sum(1 for _ in model.parameters()) - 6


def test_overlap_through_a_name_pattern_is_refused():
    model = small_llama(layers=12)
    with pytest.raises(ConfigError, match=r"partitions 'language' and 'math' overlap in 12 parameter tensor\(s\), "
                                          r"e.g. \['model.layers.0.self_attn.q_proj.weight'"):
        select_partitions(model, {"language": [LayerSelection(layers=[0, -1], modules=["attention"])],
                                  "math": [LayerSelection(names=[".*q_proj.*"])]})
    tied = small_llama(layers=6, tied=True)  # lm_head by name is the embedding: in one partition only
    with pytest.raises(ConfigError, match="overlap"):
        select_partitions(tied, {"language": [LayerSelection(embeddings=True)],
                                 "math": [LayerSelection(names=["lm_head.*", ".*embed_tokens.*"])]})
    with pytest.raises(ConfigError, match=r"method.partitions.math\[0\].names\[0\]='lm_head.\*' picks lm_head.weight, "
                                          "which is tied"):
        select_partitions(tied, {"language": [LayerSelection(first=2)], "math": [LayerSelection(names=["lm_head.*"])]})


@pytest.mark.parametrize("partitions,expected", [
    ({"math": [LayerSelection(names=["*.mlp.*"])]}, "method.partitions.math[0].names[0]='*.mlp.*' is not a valid "
                                                    "regular expression"),
    ({"math": [LayerSelection(layers=[6, -3], names=[".*mpl.*"])]},
     "method.partitions.math[0].names[0]='.*mpl.*' matches no parameter of LlamaForCausalLM"),
    ({"math": [LayerSelection(first=2, names=[".*embed.*"])]}, "but none in this selection's layers [0, 1]"),
])
def test_bad_name_patterns_in_partitions_are_refused(partitions, expected):
    with pytest.raises(ConfigError) as err:
        select_partitions(small_llama(layers=12), partitions)
    assert expected in str(err.value)
