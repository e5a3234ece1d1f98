r"""Which parameters of a decoder LLM train: a readable layer spec, resolved against the model.

A :class:`LayerSelection` (config section, e.g. ``method.trainable``) names transformer layers
and, within them, module types, plus switches for the parameters outside the layers:

- ``layers``: one inclusive range ``[start, end]`` or a list of them ``[[0, 5], [-2, -1]]``,
  0-based as in the module names (``model.layers.<i>``); a negative index counts from the end
  (``[-8, -1]`` = the last eight, the last layer included: no half-open ``range(start, end)``).
- ``first`` / ``last``: the first or last part of the depth, as a count (an int: ``last: 8``) or
  a fraction of the layers (a float in (0, 1]: ``last: 0.25``; rounded up, so at least one layer
  is chosen; ``1.0`` is every layer, ``1`` one layer). Relative specs fit 16-, 28- and 36-layer
  models alike.
- The chosen layers are the union of ``layers``, ``first`` and ``last``; ranges that overlap
  each other are refused (a spec that names a layer twice is usually a mistake).
- ``modules``: the parts of a chosen layer that train: ``attention`` (everything under the
  layer's attention module, its q/k norms included), ``mlp``, ``norms`` (the layer's own norms
  outside those two).
- ``from_analysis`` + ``top``: the ``top`` layers that ``xlt-analyze layers`` ranked highest in
  its ``layer_ranking.json`` (:mod:`xlt_runner.analysis`), joined to the layers above; a ranking of
  another model (another depth, or tensors of other shapes) is refused.
- ``embeddings``, ``lm_head``, ``final_norm``: the parameters outside the layers. On a model
  whose ``lm_head`` shares its weight with the input embedding (tied), training one trains the
  other: ``lm_head: true`` without ``embeddings: true`` is refused there, and ``embeddings:
  true`` trains the shared matrix.
- ``names``: a list of Python regular expressions, each matched with :func:`re.fullmatch`
  against the whole parameter name as ``model.named_parameters()`` gives it
  (``model.layers.3.self_attn.q_proj.weight``): ``'.*q_proj.*'``, ``'.*\.(q|v)_proj\..*'``,
  ``'model\.embed_tokens\.weight'``. Regular expressions rather than globs because a glob's ``*``
  crosses dots anyway and globs cannot say "q or v" or "a layer index" (``\d+``); a full match
  rather than a search so that a pattern means what it says (``'lm_head.*'`` cannot pick up a
  ``model.lm_head_norm``). Escape the dots that must be dots: ``'model.layers.1.*'`` also matches
  layer 10. How they combine with the rest:

  * with ``layers`` / ``first`` / ``last`` / ``from_analysis``, the patterns **filter** the chosen
    layers: ``{layers: [0, 5], names: ['.*q_proj.*']}`` is the q_proj of layers 0-5 (and
    ``modules`` still applies);
  * without any of them, the patterns **select by name** across the whole model, inside the
    layers (restricted to ``modules``, all three by default) and outside them:
    ``{names: ['.*embed_tokens.*']}`` is the input embedding alone;
  * the switches ``embeddings`` / ``lm_head`` / ``final_norm`` always add their parameters,
    unfiltered by the patterns.

  A parameter is chosen when it matches any one pattern. Each pattern must choose something: one
  that is not a valid regular expression, one that matches no parameter of the model (a typo: the
  closest names are given) and one that matches only parameters the rest of the selection rules
  out (``{last: 2, names: ['lm_head.*']}``: the patterns only filter the chosen layers) are
  refused. On a tied model a pattern that matches the head's name (``lm_head.weight``, the
  embedding's matrix under a second name) obeys the ``lm_head`` rule: refused unless the
  embedding is selected too, and then the shared matrix trains under the embedding's name.

:func:`select_parameters` returns the names (as ``model.named_parameters()`` gives them) that
the selection trains; everything else stays frozen. A partition spec (:func:`select_partitions`)
is a set of named lists of such selections: the same grammar, one per partition.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from xlt_runner.config import ConfigError

#: Parts of a transformer layer a selection can name in ``modules``.
LAYER_PARTS = ("attention", "mlp", "norms")
_ATTENTION_CHILDREN = ("self_attn", "attn", "attention", "self_attention")
_MLP_CHILDREN = ("mlp", "feed_forward", "ffn")


@dataclass
class LayerSelection:
    """Trainable parameters of a decoder (see the module docstring for the grammar). ``layers``:
    ``[start, end]`` or ``[[start, end], ...]`` (inclusive, negative from the end); ``first`` /
    ``last``: an int count or a float fraction of the depth; ``modules``: parts of a chosen layer;
    ``names``: regular expressions (full match on the parameter name) that filter the chosen layers,
    or, with no layer key, select by name across the model."""
    layers: Any = None
    first: Any = None
    last: Any = None
    from_analysis: str | None = None
    top: int | None = None
    modules: list[str] = field(default_factory=lambda: list(LAYER_PARTS))
    embeddings: bool = False
    lm_head: bool = False
    final_norm: bool = False
    names: list[str] = field(default_factory=list)


def _chooses_layers(selection: LayerSelection) -> bool:
    """Whether a layer key (``layers``, ``first``, ``last``, ``from_analysis``) is set: then
    ``names`` filter the chosen layers; otherwise they select by name across the model. (A
    function, not a method: the preflight passes the config node, not the dataclass.)"""
    return any(v is not None for v in (selection.layers, selection.first, selection.last, selection.from_analysis))


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder keeps its layers and the parameters outside them."""
    layers_prefix: str  # e.g. "model.layers"
    num_layers: int
    embedding_names: frozenset[str]
    lm_head_names: frozenset[str]  # empty when tied (the embedding's names hold the weight)
    tied: bool
    final_norm_names: frozenset[str]


def describe_decoder(model: nn.Module) -> DecoderLayout:
    """The layout of a causal LM (Llama, Gemma, Qwen, Mistral, SmolLM, ...): the ``ModuleList`` of
    ``config.num_hidden_layers`` layers, the input embedding, the output head and the final norm."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config  # multimodal: the LM's
    depth = getattr(text_config, "num_hidden_layers", None)
    prefix = next((name for name, module in model.named_modules()
                   if isinstance(module, nn.ModuleList) and len(module) == depth and name.endswith("layers")
                   and "vision" not in name), None)
    if prefix is None:
        raise ConfigError(f"{type(model).__name__}: no list of {depth} transformer layers found (config."
                          "num_hidden_layers); layer selection supports decoders laid out like Llama")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    embedding_names = frozenset(names[id(p)] for p in embedding.parameters())
    head_params = list(head.parameters()) if head is not None else []
    tied = any(p is q for p in head_params for q in embedding.parameters())
    head_names = frozenset(names[id(p)] for p in head_params if id(p) in names) - embedding_names
    decoder_prefix = prefix.rsplit(".", 1)[0]
    final_norm = frozenset(n for n in names.values() if n.startswith(f"{decoder_prefix}.norm."))
    return DecoderLayout(prefix, depth, embedding_names, head_names, tied, final_norm)


def _layer_count(value: Any, key: str, depth: int) -> int:
    """Layers named by ``first``/``last``: an int count or a float fraction of ``depth`` (rounded up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r}: give a number of layers (int) or a fraction of the depth (float)")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ConfigError(f"{key}={value}: a fraction of the depth must be in (0, 1]")
        return math.ceil(value * depth)
    if not 1 <= value <= depth:
        raise ConfigError(f"{key}={value}: the model has {depth} layers")
    return value


def _ranges(layers: Any, key: str) -> list[tuple[int, int]]:
    if layers is None:
        return []
    items = list(layers)
    if len(items) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        items = [items]
    ranges = []
    for item in items:
        pair = list(item) if not isinstance(item, (int, str)) else None
        if pair is None or len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
            raise ConfigError(f"{key}={layers!r}: write a range as [start, end] (inclusive; negative counts from "
                              "the end) or a list of such ranges")
        ranges.append((pair[0], pair[1]))
    return ranges


def _patterns(names: Any, key: str) -> list[re.Pattern[str]]:
    """``names`` compiled; ConfigError (naming ``key.names[i]``) for a non-list, an empty or
    invalid regular expression."""
    if names is None:
        return []
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise ConfigError(f"{key}.names={names!r}: give a list of regular expressions, e.g. ['.*q_proj.*']")
    compiled = []
    for i, pattern in enumerate(names):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{key}.names[{i}]={pattern!r}: give a non-empty regular expression (a string)")
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{key}.names[{i}]={pattern!r} is not a valid regular expression: {exc}") from None
    return compiled


def _closest_names(pattern: str, names: list[str], n: int = 3) -> list[str]:
    """The ``n`` parameter names (layer indices written ``<i>``) whose dotted components best
    resemble the words of ``pattern``: the hint of a pattern that matches nothing."""
    generic = list(dict.fromkeys(re.sub(r"\.\d+\.", ".<i>.", name) for name in names))
    words = [w for w in re.split(r"\\.|[^A-Za-z0-9_]+", pattern) if len(w) > 1]
    if not words:
        return generic[:n]

    def score(name: str) -> float:
        parts = name.split(".")
        return sum(max(difflib.SequenceMatcher(None, w, part).ratio() for part in parts) for w in words)
    return sorted(generic, key=score, reverse=True)[:n]  # stable: ties keep model order


def check_selection(selection: LayerSelection, key: str) -> None:
    """The checks that need no model: the grammar, ranges empty whatever the depth, module names,
    switches, a ranking file that exists. Raises ConfigError."""
    for start, end in _ranges(selection.layers, f"{key}.layers"):
        if (start >= 0) == (end >= 0) and start > end:
            raise ConfigError(f"{key}.layers=[{start}, {end}] is empty: ranges are [start, end] with start <= end")
    if selection.from_analysis is not None and not Path(selection.from_analysis).is_file():
        raise ConfigError(f"{key}.from_analysis={selection.from_analysis}: no such file (a layer_ranking.json "
                          "written by `xlt-analyze layers`)")
    for name in ("first", "last"):
        value = getattr(selection, name)
        if value is not None:
            _layer_count(value, f"{key}.{name}", depth=10**9)
    if (selection.from_analysis is None) != (selection.top is None):
        raise ConfigError(f"{key}.from_analysis and {key}.top go together: the top K layers of a ranking file")
    if selection.top is not None and selection.top < 1:
        raise ConfigError(f"{key}.top={selection.top} must be at least 1")
    unknown = sorted(set(selection.modules) - set(LAYER_PARTS))
    if unknown:
        raise ConfigError(f"{key}.modules: unknown part(s) {unknown}; choose from {list(LAYER_PARTS)}")
    patterns = _patterns(selection.names, key)
    if not _chooses_layers(selection) and not patterns \
            and not (selection.embeddings or selection.lm_head or selection.final_norm):
        raise ConfigError(f"{key} selects nothing: set layers, first or last (or names, embeddings, lm_head, "
                          "final_norm)")


def resolve_layers(selection: LayerSelection, depth: int, key: str = "method.trainable") -> list[int]:
    """The 0-based layer indices ``selection`` chooses in a ``depth``-layer model, ascending.
    Raises ConfigError for an index outside the depth, an empty range or overlapping ranges."""
    chosen: list[tuple[str, set[int]]] = []
    for start, end in _ranges(selection.layers, f"{key}.layers"):
        lo, hi = (i + depth if i < 0 else i for i in (start, end))
        if not (0 <= lo < depth and 0 <= hi < depth):
            raise ConfigError(f"{key}.layers=[{start}, {end}] is outside the model's {depth} layers "
                              f"(indices 0..{depth - 1}, or -{depth}..-1 from the end)")
        if lo > hi:
            raise ConfigError(f"{key}.layers=[{start}, {end}] is empty (layer {lo} comes after layer {hi}); "
                              "ranges are [start, end] with start <= end")
        chosen.append((f"layers [{start}, {end}]", set(range(lo, hi + 1))))
    if selection.first is not None:
        chosen.append((f"first={selection.first}", set(range(_layer_count(selection.first, f"{key}.first", depth)))))
    if selection.last is not None:
        n = _layer_count(selection.last, f"{key}.last", depth)
        chosen.append((f"last={selection.last}", set(range(depth - n, depth))))
    if selection.from_analysis is not None:
        from xlt_runner.analysis import AnalysisError, top_layers
        try:
            ranked = top_layers(selection.from_analysis, selection.top, depth)
        except AnalysisError as exc:
            raise ConfigError(f"{key}.from_analysis: {exc}") from None
        chosen.append((f"the top {selection.top} of {selection.from_analysis}", set(ranked)))
    for i, (name_a, a) in enumerate(chosen):
        for name_b, b in chosen[i + 1:]:
            if a & b:
                raise ConfigError(f"{key}: {name_a} and {name_b} overlap in layer(s) {sorted(a & b)} of {depth}; "
                                  "name each layer once")
    return sorted(set().union(*(s for _, s in chosen)))


def parameter_part(name: str, layout: DecoderLayout) -> tuple[int | None, str]:
    """(layer index or None, part) of a parameter: part is one of :data:`LAYER_PARTS` inside a
    layer, else ``embeddings``, ``lm_head``, ``final_norm`` or ``other``."""
    match = re.match(rf"{re.escape(layout.layers_prefix)}\.(\d+)\.([^.]+)\.", name)
    if match:
        child = match.group(2)
        part = "attention" if child in _ATTENTION_CHILDREN else "mlp" if child in _MLP_CHILDREN else "norms"
        return int(match.group(1)), part
    if name in layout.embedding_names:
        return None, "embeddings"
    if name in layout.lm_head_names:
        return None, "lm_head"
    if name in layout.final_norm_names:
        return None, "final_norm"
    return None, "other"


def select_parameters(model: nn.Module, selection: LayerSelection, key: str = "method.trainable") -> list[str]:
    """Names of the parameters (``model.named_parameters()``) that ``selection`` trains, in model
    order. Raises ConfigError for a spec the model cannot satisfy or that selects nothing."""
    check_selection(selection, key)
    layout = describe_decoder(model)
    if selection.lm_head and layout.tied and not selection.embeddings:
        raise ConfigError(f"{key}.lm_head=true on a model whose lm_head is tied to the input embedding: "
                          f"training it trains the embedding too; set {key}.embeddings=true as well (or neither)")
    patterns = _patterns(selection.names, key)
    by_layer = _chooses_layers(selection)  # then the patterns filter the chosen layers
    layers = set(range(layout.num_layers)) if patterns and not by_layer else \
        set(resolve_layers(selection, layout.num_layers, key))
    if selection.from_analysis is not None:
        from xlt_runner.analysis import AnalysisError, check_ranking_model
        try:
            check_ranking_model(selection.from_analysis, {n: tuple(p.shape) for n, p in model.named_parameters()})
        except AnalysisError as exc:
            raise ConfigError(f"{key}.from_analysis: {exc}") from None
    outside = {"embeddings": selection.embeddings, "lm_head": selection.lm_head, "final_norm": selection.final_norm}

    def in_scope(name: str) -> bool:
        """Whether the patterns may choose ``name``: a part in ``modules`` of a chosen layer, or,
        with no layer key, any parameter outside the layers too."""
        layer, part = parameter_part(name, layout)
        return part in selection.modules and layer in layers if layer is not None else not by_layer

    names = [n for n, _ in model.named_parameters()]
    canonical = {id(p): n for n, p in model.named_parameters()}  # a tied lm_head.weight is an alias
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if canonical[id(p)] != n}
    matched = {n for n in names + list(aliases) if in_scope(n) and any(p.fullmatch(n) for p in patterns)}
    chosen = []
    for name in names:
        layer, part = parameter_part(name, layout)
        by_spec = name in matched if patterns else layer in layers and part in selection.modules
        if by_spec or (layer is None and outside.get(part, False)):
            chosen.append(name)
    for i, pattern in enumerate(patterns):
        hits = [n for n in names + list(aliases) if pattern.fullmatch(n)]
        where = f"{key}.names[{i}]={pattern.pattern!r}"
        if not hits:
            raise ConfigError(f"{where} matches no parameter of {type(model).__name__} (a full match of the whole "
                              f"name); closest names: {_closest_names(pattern.pattern, names)}")
        if not any(n in matched for n in hits):
            scope = (f"layers {sorted(layers)} × modules {list(selection.modules)}: with layers/first/last/"
                     "from_analysis given, names only filter the chosen layers (select the others in a "
                     "selection of their own)" if by_layer else
                     f"modules {list(selection.modules)}: inside a layer, names only choose those parts")
            raise ConfigError(f"{where} matches {len(hits)} parameter(s), e.g. {hits[:3]}, but none in this "
                              f"selection's {scope}")
        for alias in (n for n in hits if n in aliases and n in matched and aliases[n] not in chosen):
            raise ConfigError(f"{where} picks {alias}, which is tied to {aliases[alias]} on this model "
                              f"(one matrix): training it trains that too; select {aliases[alias]} as well "
                              f"({key}.embeddings=true or a pattern), or neither")
    if not chosen:
        raise ConfigError(f"{key} selects no parameter of {type(model).__name__} (layers {sorted(layers)}, "
                          f"modules {list(selection.modules)})")
    return chosen


@dataclass(frozen=True)
class ParameterPartitions:
    """Disjoint named sets of parameter names (``model.named_parameters()`` order within each),
    and ``uncovered``: the parameters in none of them, which stay frozen."""
    members: dict[str, list[str]]
    uncovered: list[str]

    def describe(self, model: nn.Module) -> str:
        """One line per partition and for the uncovered rest: parameter tensors and elements."""
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        parts = [*self.members.items(), ("uncovered (frozen)", self.uncovered)]
        return "; ".join(f"{name}: {len(names)} tensors, {sum(sizes[n] for n in names):,} parameters"
                         for name, names in parts)


def partitions_of(cfg) -> dict[str, list[LayerSelection]]:
    """``method.partitions`` as :class:`LayerSelection` s (Hydra keeps a preset's entries as plain
    mappings); ConfigError for a key the layer grammar does not have."""
    from omegaconf import DictConfig, OmegaConf
    known = [f.name for f in fields(LayerSelection)]
    out = {}
    for name, selections in cfg.partitions.items():
        out[name] = []
        for i, selection in enumerate(selections or []):
            data = OmegaConf.to_container(selection) if isinstance(selection, DictConfig) else dict(selection)
            unknown = sorted(set(data) - set(known))
            if unknown:
                raise ConfigError(f"method.partitions.{name}[{i}] has unknown key(s) {unknown}; the layer grammar "
                                  f"has {', '.join(known)}")
            out[name].append(LayerSelection(**data))
    return out


def check_partitions(partitions: Any, key: str = "method.partitions") -> None:
    """The checks that need no model: at least one partition, each a non-empty list of
    selections in the layer grammar (:func:`check_selection`). Raises ConfigError."""
    if not partitions:
        raise ConfigError(f"{key} is empty: name at least one partition, e.g. {{language: [...], math: [...]}}")
    for name, selections in partitions.items():
        if not selections:
            raise ConfigError(f"{key}.{name} is empty: give a list of selections (layers/first/last, modules, ...)")
        for i, selection in enumerate(selections):
            check_selection(selection, f"{key}.{name}[{i}]")


def select_partitions(model: nn.Module, partitions: Any, key: str = "method.partitions") -> ParameterPartitions:
    """Resolve ``partitions`` (name -> list of :class:`LayerSelection`; a partition is the union
    of its selections) against ``model``. Raises ConfigError when a selection cannot be satisfied
    or two partitions share a parameter (naming both and the shared parameters)."""
    check_partitions(partitions, key)
    owner: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for name, selections in partitions.items():
        chosen: set[str] = set()
        for i, selection in enumerate(selections):
            chosen.update(select_parameters(model, selection, f"{key}.{name}[{i}]"))
        shared = sorted(n for n in chosen if n in owner)
        if shared:
            raise ConfigError(f"{key}: partitions {owner[shared[0]]!r} and {name!r} overlap in {len(shared)} "
                              f"parameter tensor(s), e.g. {shared[:3]}; partitions must be disjoint")
        owner.update(dict.fromkeys(chosen, name))
        members[name] = [n for n, _ in model.named_parameters() if n in chosen]
    uncovered = [n for n, _ in model.named_parameters() if n not in owner]
    return ParameterPartitions(members=members, uncovered=uncovered)
