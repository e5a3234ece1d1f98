"""Layer-Swapping (Bandarkar et al.): one model from two experts tuned from the same base.

:func:`layer_swap` takes the transformer layers a :class:`~xlt_runner.models.layers.LayerSelection`
names (e.g. ``first: 6, last: 2``, partition [C]) from the *language* expert and every other
layer from the *math* expert; the parameters outside the layers (embeddings, final norm,
``lm_head``) come from the source ``non_layer`` names explicitly (``math``, ``language`` or
``base``), never by an implicit rule. Tensors are copied bit for bit, streamed from the experts'
safetensors one at a time into shards of at most ``shard_bytes``, so memory holds one shard and
the memory-mapped pages being read, never two or three models. The result is a standard
transformers folder (config, generation config and tokenizer files from the math expert, the
config donor), published atomically, with ``merge.json`` recording which expert gave each tensor.

Refused before anything is written: experts whose configs differ (architecture, depth, dtype,
vocabulary), whose tensor names, shapes or dtypes differ, a selection outside the depth, and
``non_layer: base`` without a base model.

**Which source gives each tensor** is decided in one place, :func:`tensor_sources`, for this
folder merge and for ``method=layer_swap`` (:mod:`xlt_runner.methods.merge`, a merge into the
run's loaded base, then evaluated): a tensor in partition ``P`` (``math`` | ``language`` |
``base``; partitions in the layer grammar, :func:`~xlt_runner.models.layers.select_partitions`)
comes from source ``P``, a tensor in no partition from ``uncovered_from``; and a tensor whose
source's weights do not hold it (a partial expert that never trained it, an expert given as
``base``) comes from the base. :func:`layer_swap` states its ``language_layers`` / ``non_layer``
as such partitions (:func:`swap_partitions`).
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlt_runner.config import ConfigError
from xlt_runner.models.layers import LAYER_PARTS, LayerSelection, describe_decoder, resolve_layers, select_partitions

#: Config keys that may differ between experts of one base (paths, versions), not what they compute.
CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "architectures")
MERGE_FILE = "merge.json"
#: Where a merged tensor can come from: the two experts and the base they were tuned from.
SOURCES = ("math", "language", "base")
_WEIGHT_SUFFIXES = (".safetensors",)
_INDEX_SUFFIX = ".safetensors.index.json"


def check_source(value: Any, key: str) -> str:
    """``value`` if it names a source (:data:`SOURCES`), else ConfigError naming ``key``."""
    if value not in SOURCES:
        raise ConfigError(f"{key}={value!r}: name the source of those tensors: {' | '.join(SOURCES)}")
    return value


def partition_of(model, partitions: Mapping[str, Any], key: str = "method.partitions") -> dict[str, str]:
    """Parameter name (``model.named_parameters()``) -> the partition holding it, for the parameters
    in one; ``partitions``: name (a source: :data:`SOURCES`) -> list of :class:`LayerSelection`,
    resolved by :func:`select_partitions` (disjoint, each selecting something). ConfigError otherwise."""
    for name in partitions:
        check_source(name, f"{key}: partition {name!r}; a partition's name says where its tensors come from, so it")
    members = select_partitions(model, partitions, key).members
    return {tensor: partition for partition, tensors in members.items() for tensor in tensors}


def tensor_sources(partition: Mapping[str, str], names: Iterable[str], uncovered_from: str,
                   holds: Mapping[str, Container[str]],
                   weight_of: Callable[[str], str] | None = None) -> dict[str, str]:
    """The rule of every Layer-Swapping merge, in one place: tensor name -> the source that gives it
    (``math`` | ``language`` | ``base``).

    A tensor whose parameter is in partition ``P`` (``partition``: :func:`partition_of`) comes from
    source ``P``; a tensor in no partition from ``uncovered_from``. Then a tensor whose source is an
    expert whose weights do not hold it (``holds[source]``: the tensor names that expert's file
    holds; nothing for an expert given as the base) comes from the base. ``weight_of``: the
    parameter a tensor name stands for (a LoRA adapter tensor: the weight it adapts; default: the
    name itself); a name that is no parameter (a buffer saved with the weights) is in no partition."""
    check_source(uncovered_from, "uncovered_from")
    sources = {}
    for name in names:
        source = partition.get(weight_of(name) if weight_of else name, uncovered_from)
        sources[name] = source if source == "base" or name in holds[source] else "base"
    return sources


def _ranges(indices: list[int]) -> list[list[int]]:
    """Sorted layer indices as inclusive ``[start, end]`` runs."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def swap_partitions(language_layers: LayerSelection, depth: int) -> dict[str, list[LayerSelection]]:
    """:func:`layer_swap`'s arguments as partitions: ``language`` is ``language_layers``; ``math`` every
    other part of every layer (the other layers whole, and the chosen layers' parts that
    ``language_layers.modules`` leaves out). The parameters outside the layers are in neither."""
    if language_layers.embeddings or language_layers.lm_head or language_layers.final_norm:
        raise ConfigError("language_layers selects transformer layers only: say where embeddings, lm_head and the "
                          "final norm come from with non_layer")
    chosen = resolve_layers(language_layers, depth, "language_layers")
    others = [i for i in range(depth) if i not in chosen]
    rest = [part for part in LAYER_PARTS if part not in language_layers.modules]
    math = [LayerSelection(layers=_ranges(others))] if others else []
    if rest:
        math.append(LayerSelection(layers=_ranges(chosen), modules=rest))
    return {"language": [language_layers], **({"math": math} if math else {})}


@dataclass(frozen=True)
class MergeReport:
    out_dir: Path
    language_layers: list[int]
    tensors_from: dict[str, int]  # source -> number of tensors taken from it
    shards: int


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no config.json; give a transformers model folder (save_pretrained)")
    return json.loads(path.read_text())


def _tensor_index(folder: Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """Tensor name -> (file, shape, dtype) over every safetensors file of ``folder``, without
    reading any tensor."""
    from safetensors import safe_open
    files = sorted(p for p in folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no *.safetensors weights")
    index = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                index[key] = (file, tuple(piece.get_shape()), str(piece.get_dtype()))
    return index


def _check_same_model(folders: dict[str, Path]) -> tuple[dict, dict[str, dict]]:
    """The math expert's config and every folder's tensor index; ConfigError naming the first
    difference between the math expert and another folder."""
    configs = {name: _config(folder) for name, folder in folders.items()}
    reference = {k: v for k, v in configs["math"].items() if k not in CONFIG_KEYS_IGNORED}
    for name, config in configs.items():
        other = {k: v for k, v in config.items() if k not in CONFIG_KEYS_IGNORED}
        differing = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
        if differing:
            key = differing[0]
            raise ConfigError(f"the {name} model ({folders[name]}) is not the math expert's architecture: config "
                              f"{key}={other.get(key)!r} there, {reference.get(key)!r} in {folders['math']} "
                              f"(differing keys: {differing[:6]}); experts must come from one base model")
    indexes = {name: _tensor_index(folder) for name, folder in folders.items()}
    for name, index in indexes.items():
        for key in sorted(set(index) ^ set(indexes["math"]))[:1]:
            where = name if key in index else "math"
            raise ConfigError(f"tensor {key} is only in the {where} model's weights ({folders[where]}); the experts "
                              "must hold the same tensors (save both with save_pretrained from one base)")
        for key, (_, shape, dtype) in index.items():
            _, math_shape, math_dtype = indexes["math"][key]
            if (shape, dtype) != (math_shape, math_dtype):
                raise ConfigError(f"tensor {key}: {dtype}{list(shape)} in the {name} model, {math_dtype}"
                                  f"{list(math_shape)} in the math expert")
    return configs["math"], indexes


def layer_swap(math_expert: str | Path, language_expert: str | Path, out_dir: str | Path, *,
               language_layers: LayerSelection, non_layer: str, base: str | Path | None = None,
               shard_bytes: int = 2 * 2**30) -> MergeReport:
    """Write to ``out_dir`` the model whose layers ``language_layers`` selects come from
    ``language_expert`` and whose other layers come from ``math_expert``; tensors outside the
    layers from ``non_layer`` (``math`` | ``language`` | ``base``). Returns what was taken from where."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from xlt_runner.fileio import publish_dir

    if non_layer not in SOURCES:  # said here, in the folder API's words
        raise ConfigError(f"non_layer={non_layer!r}: say where embeddings, final norm and lm_head come from: "
                          f"{' | '.join(SOURCES)}")
    if non_layer == "base" and base is None:
        raise ConfigError("non_layer=base needs the base model folder (base=...)")
    folders = {"math": Path(math_expert), "language": Path(language_expert)}
    if base is not None:
        folders["base"] = Path(base)
    config, indexes = _check_same_model(folders)

    with torch.device("meta"):  # names and layout only: no weight is allocated
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folders["math"]))
    layout = describe_decoder(skeleton)
    layers = set(resolve_layers(language_layers, layout.num_layers, "language_layers"))
    partition = partition_of(skeleton, swap_partitions(language_layers, layout.num_layers), key="language_layers")
    sources = tensor_sources(partition, indexes["math"], non_layer, holds=indexes)
    out_dir = Path(out_dir)
    shard_names: list[list[str]] = [[]]
    size = 0
    for name in indexes["math"]:  # plan the shards: consecutive tensors up to shard_bytes each
        _, shape, dtype = indexes["math"][name]
        nbytes = _nbytes(shape, dtype)
        if shard_names[-1] and size + nbytes > shard_bytes:
            shard_names.append([])
            size = 0
        shard_names[-1].append(name)
        size += nbytes
    files = (["model.safetensors"] if len(shard_names) == 1 else
             [f"model-{i + 1:05d}-of-{len(shard_names):05d}.safetensors" for i in range(len(shard_names))])
    with publish_dir(out_dir, replace=True) as tmp:
        for file_name, names in zip(files, shard_names):
            shard = {}
            for name in names:
                file = indexes[sources[name]][name][0]
                with safe_open(str(file), "pt") as handle:
                    shard[name] = handle.get_tensor(name)
            save_file(shard, str(tmp / file_name), metadata={"format": "pt"})
            del shard
        if len(files) > 1:
            weight_map = {name: file_name for file_name, names in zip(files, shard_names) for name in names}
            total = sum(_nbytes(s, d) for _, s, d in indexes["math"].values())
            (tmp / f"model{_INDEX_SUFFIX}").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        for item in folders["math"].iterdir():  # config, generation config, tokenizer: the math expert's
            if item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES + (_INDEX_SUFFIX,)) and item.name != MERGE_FILE:
                shutil.copy2(item, tmp / item.name)
        counts = {source: sum(1 for s in sources.values() if s == source) for source in SOURCES if source in folders}
        (tmp / MERGE_FILE).write_text(json.dumps({
            "method": "layer_swap", "inputs": {k: str(v.resolve()) for k, v in folders.items()},
            "language_layers": sorted(layers), "language_modules": list(language_layers.modules),
            "non_layer": non_layer, "config_from": "math", "tensors_from": counts, "sources": sources,
            "model_type": config.get("model_type")}, indent=1))
    return MergeReport(out_dir=out_dir, language_layers=sorted(layers), tensors_from=counts, shards=len(files))


#: Bytes per element of each safetensors dtype name.
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(shape) * _DTYPE_BYTES[dtype]
