"""``method=layer_swap``: Layer-Swapping (Bandarkar et al.) as a run: merge two experts, then test.

Nothing trains (``trains = False``, like ``prompting``). The run's ``model=`` is the **base**: it
is loaded as every run loads its backbone, then the merged model is built in it by streaming the
experts' tensors from their ``method_weights.safetensors`` one at a time (``safe_open`` /
``get_tensor``, copied into the loaded parameter), so memory holds the base and one tensor, never
three models. Then it is tested like any run (any generation benchmark, MGSM included) and, with
``method.export_pretrained``, written as a standard transformers folder ``<run_dir>/model``.

Config (``conf/method/layer_swap.yaml``):

- ``math_expert`` / ``language_expert``: a decoder run's ``method_weights.safetensors`` (a path,
  or a glob matching exactly one file, as ``method.init_from``), or the word ``base``: that
  expert's tensors are the base's.
- ``partitions``: partition name -> selections in the layer grammar (a ``conf/partition/``
  preset: ``defaults: [/partition@partitions: layer_swap_c]``); a partition's name is the source
  of its tensors (``math``, ``language``, or ``base``).
- ``uncovered_from``: the source of every tensor in no partition (``math`` | ``language`` |
  ``base``; no default in code: the preset says it).

**Which source gives each tensor** (:func:`xlt_runner.merging.tensor_sources`, shared with the
folder merge :func:`xlt_runner.merging.layer_swap`): a tensor in partition ``P`` comes from source
``P``, a tensor in no partition from ``uncovered_from``; a tensor whose expert's file does not
hold it (a partial expert that never trained it; an expert given as ``base``) keeps the base's
value.

**LoRA experts** (files of adapter tensors: ``lora``, ``partition_sft`` with ``method.lora``):
the base is wrapped with the experts' LoRA settings (r, alpha, dropout, target modules: read from
the expert runs' ``results.json``; both experts must share them) and each adapter tensor comes
from the source of the weight it adapts, by the same rule; an adapter whose source is the base
(or whose expert's file lacks it) is zero (A and B), i.e. no change to that weight. The merged
adapters are tested on the base (``export_pretrained`` folds them into the weights). A LoRA
expert with a full (or partial) one is refused: the two kinds are not merged here.

**Reset-to-base ablation** (the paper's "train all parameters, then reset the unallocated ones to
the base" against "freeze them from the start"): the same rule with ``uncovered_from: base``
(preset ``method=layer_swap_reset``): each expert contributes only its own partition's tensors,
everything else is the base's. With both experts it is the merged model of the ablation; with one
expert and the other given as ``base`` (``method.language_expert=base``) it is that full expert
reset to the base outside its partition. Run the same preset on ``partial_sft`` experts for the
frozen-from-the-start counterpart: one code path, only the experts differ.

Refused with ConfigError before any compute (and in the CLI's preflight, for every sweep point,
as far as it goes without the model: files, headers, LoRA settings): a missing file, a glob
matching 0 or 2+ files, a file without tensors, an expert trained from another model (its header's
``backbone`` is not this run's ``model.name``; at run time also a tensor of another shape or
dtype, or a name the base lacks), LoRA mixed with full weights, LoRA experts of different
settings, both experts ``base``, ``method.init_from`` (it would overwrite the merge).

The run writes ``<run_dir>/merge.json`` (every tensor's source, counts, the experts' resolved paths,
sha256s, methods) and its record's ``merge`` section (the same without the per-tensor list), so a
result names exactly the experts it merged; ``method_weights.safetensors`` holds the tensors taken
from the experts (full merges: the rest is the base's, as a partial run's file) or every adapter
tensor (LoRA merges), so ``method.init_from`` and a later merge can take it.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from xlt_runner.config import ConfigError, MethodConfig
from xlt_runner.merging import MERGE_FILE, SOURCES, check_source, partition_of, tensor_sources
from xlt_runner.methods import METHODS
from xlt_runner.methods.decoder import DecoderMethod
from xlt_runner.models.layers import LayerSelection, check_partitions, partitions_of

#: The experts a merge takes tensors from, in config order (``<role>_expert``).
EXPERT_ROLES = ("math", "language")
#: What an expert key may say instead of a weights file: its tensors are the base's.
BASE = "base"
#: LoRA settings two LoRA experts must share (read from each expert run's results.json).
LORA_SETTINGS = ("r", "alpha", "target_modules")
_LORA_MARK = ".lora_"
_PEFT_PREFIX = "base_model.model."
#: safetensors dtype names -> torch dtypes, for the check against the loaded base.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@dataclass
class LayerSwapConfig(MethodConfig):
    """Layer-Swapping merge of two experts tuned from ``model=`` (see the module docstring).
    ``math_expert`` / ``language_expert``: a run's ``method_weights.safetensors`` (path or glob
    matching one) or ``base``; ``partitions``: name (the source of its tensors) -> selections;
    ``uncovered_from``: the source of the tensors in no partition; ``export_pretrained``: also
    write the merged model as a transformers folder ``<run_dir>/model``."""
    name: str = "layer_swap"
    family: str = "layer_swap"
    math_expert: str = MISSING
    language_expert: str = MISSING
    partitions: dict[str, list[LayerSelection]] = field(default_factory=dict)
    uncovered_from: str = MISSING
    export_pretrained: bool = False


# ----------------------------------------------------------------------------- experts
@dataclass
class Expert:
    """One resolved ``<role>_expert``: ``path`` None for ``base``; ``tensors``: name -> (shape,
    safetensors dtype) as the file's header lists them; ``lora``: the LoRA settings of a LoRA run."""
    role: str
    spec: str
    path: Path | None = None
    method: str | None = None
    backbone: str | None = None
    tensors: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    lora: dict[str, Any] | None = None
    sha256: str | None = None

    @property
    def key(self) -> str:
        return f"method.{self.role}_expert"

    @property
    def kind(self) -> str:
        return BASE if self.path is None else "lora" if self.lora is not None else "weights"

    def describe(self) -> dict[str, Any]:
        if self.path is None:
            return {"spec": BASE, "kind": BASE}
        return {"spec": self.spec, "path": str(self.path.resolve()), "sha256": self.sha256, "method": self.method,
                "backbone": self.backbone, "kind": self.kind, "tensors": len(self.tensors),
                **({"lora": self.lora} if self.lora is not None else {})}


def _spec(cfg, role: str) -> str:
    key = f"{role}_expert"
    if (isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key)) or not getattr(cfg, key, None):
        raise ConfigError(f"method.{key} is not set: give a {role} run's method_weights.safetensors (a path, or a "
                          f"glob matching exactly one file), or {BASE} for the base's tensors")
    return str(getattr(cfg, key))


def _lora_settings(path: Path, key: str) -> dict[str, Any]:
    """The LoRA settings of the run that wrote ``path``, from its ``results.json`` beside it:
    ``config.method`` (``lora``), ``config.method.lora`` (``partition_sft``), or the ``merge``
    section of a ``layer_swap`` run of LoRA experts."""
    from xlt_runner.results.record import RESULTS_FILE, load_record
    record = load_record(path.parent)
    if record is None:
        raise ConfigError(f"{key}={path} holds LoRA adapters, and their scaling (r, alpha) is not in the file: it "
                          f"is read from the run's {RESULTS_FILE} beside it, which is missing. Give the weights of a "
                          "run directory as the run wrote it")
    method = (record.get("config") or {}).get("method") or {}
    settings = method.get("lora") if isinstance(method.get("lora"), dict) else method
    if not all(k in settings for k in ("r", "alpha")):
        settings = (record.get("merge") or {}).get("lora") or {}
    if not all(k in settings for k in ("r", "alpha")):
        raise ConfigError(f"{key}={path} holds LoRA adapters, but its run's {RESULTS_FILE} names no LoRA settings "
                          "(config.method r and alpha)")
    return {"r": settings["r"], "alpha": settings["alpha"], "dropout": settings.get("dropout", 0.0),
            "target_modules": settings.get("target_modules")}


def resolve_expert(cfg, role: str, model_name: str, digest: bool = False) -> Expert:
    """``method.<role>_expert`` resolved and its header read (no tensor): the file (as
    ``method.init_from``: a path or a glob matching one), the model it was trained from, its
    tensors' names, shapes and dtypes, LoRA settings for adapters. ConfigError naming the key."""
    from safetensors import safe_open

    from xlt_runner.fileio import file_sha256
    from xlt_runner.methods.base import resolve_init_from
    spec = _spec(cfg, role)
    expert = Expert(role=role, spec=spec)
    if spec == BASE:
        return expert
    expert.path = resolve_init_from(spec, expert.key)
    where = f"{expert.key}={expert.path}"
    try:
        with safe_open(str(expert.path), "pt") as handle:
            meta = handle.metadata() or {}
            for name in handle.keys():
                piece = handle.get_slice(name)
                expert.tensors[name] = (tuple(piece.get_shape()), str(piece.get_dtype()))
    except Exception as exc:  # not a safetensors file
        raise ConfigError(f"{where} is not a readable safetensors file ({type(exc).__name__}: {exc}); give a run's "
                          "method_weights.safetensors") from None
    expert.method, expert.backbone = meta.get("method"), meta.get("backbone")
    if expert.backbone is None:
        raise ConfigError(f"{where} does not say which model it was trained from (no 'backbone' in its header): "
                          "give a run's method_weights.safetensors")
    if expert.backbone != model_name:
        raise ConfigError(f"{where} was trained from model {expert.backbone!r}, but this run's base is "
                          f"model={model_name}: the experts must be tuned from the model the run loads (set "
                          f"model={expert.backbone}, or give experts of {model_name})")
    if not expert.tensors:
        raise ConfigError(f"{where} holds no tensors (a run that trained nothing, such as method=prompting): "
                          f"give {BASE} for the base's tensors")
    adapters = [name for name in expert.tensors if _LORA_MARK in name]
    if adapters and len(adapters) != len(expert.tensors):
        plain = next(name for name in expert.tensors if _LORA_MARK not in name)
        raise ConfigError(f"{where} holds LoRA adapters and plain weights ({plain}): not one run's weights")
    if adapters:
        expert.lora = _lora_settings(expert.path, expert.key)
    if digest:
        expert.sha256 = file_sha256(expert.path)
    return expert


def resolve_experts(cfg, model_name: str, digest: bool = False) -> dict[str, Expert]:
    """Both experts resolved (:func:`resolve_expert`) and checked against each other: not both
    ``base``; both LoRA or neither; LoRA experts with the same r, alpha and target modules."""
    experts = {role: resolve_expert(cfg, role, model_name, digest) for role in EXPERT_ROLES}
    given = [e for e in experts.values() if e.path is not None]
    if not given:
        raise ConfigError(f"method.math_expert and method.language_expert are both {BASE}: that is the base model "
                          "as it is; use method=prompting")
    kinds = {e.kind for e in given}
    if len(kinds) > 1:
        lora = next(e for e in given if e.kind == "lora")
        full = next(e for e in given if e.kind != "lora")
        raise ConfigError(f"{lora.key} holds LoRA adapters ({lora.method} run) and {full.key} full or partial "
                          f"weights ({full.method} run): layer_swap merges two LoRA experts (adapters by layer) or "
                          "two weight experts, not one of each; train both experts the same way")
    if kinds == {"lora"} and len(given) == 2:
        a, b = given
        differing = [k for k in LORA_SETTINGS if a.lora[k] != b.lora[k]]
        if differing:
            settings = {e.key: {k: e.lora[k] for k in differing} for e in (a, b)}
            raise ConfigError(f"the LoRA experts differ in {', '.join(differing)} ({settings}): their adapters "
                              "cannot be combined into one adapter set; train them alike")
    return experts


def check_experts(cfg) -> None:
    """The CLI preflight's check of a ``layer_swap`` run's experts against ``model=`` (a no-op for
    other methods): everything :func:`resolve_experts` checks without loading the model."""
    if cfg.method.family == LayerSwap.name:
        resolve_experts(cfg.method, cfg.model.name)


# ----------------------------------------------------------------------------- merging
@dataclass
class MergeRecord:
    """What a merge took from where: ``sources`` (tensor -> source), ``missing`` (source -> the
    tensors the rule gave it that its file lacks, taken from the base instead)."""
    model: str
    kind: str
    experts: dict[str, Expert]
    uncovered_from: str
    partitions: dict[str, Any]
    sources: dict[str, str]
    missing: dict[str, list[str]]
    seconds: float = 0.0
    lora: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The record's ``merge`` section: the experts (resolved path, sha256, method), the rule,
        tensors per source; the per-tensor list is in merge.json."""
        counts = {s: sum(1 for v in self.sources.values() if v == s) for s in SOURCES}
        return {"model": self.model, "kind": self.kind,
                "experts": {role: e.describe() for role, e in self.experts.items()},
                "partitions": self.partitions, "uncovered_from": self.uncovered_from,
                "tensors": "adapter tensors" if self.kind == "lora" else "parameters",
                "tensors_from": counts,
                "base_instead_of_expert": {role: len(names) for role, names in self.missing.items()},
                **({"lora": self.lora} if self.lora is not None else {}),
                "seconds": round(self.seconds, 3), "file": MERGE_FILE}

    def to_json(self) -> dict[str, Any]:
        return {"method": "layer_swap", **self.summary(), "base_instead_of_expert": self.missing,
                "sources": self.sources}


def _check_tensor(expert: Expert, name: str, target: torch.Tensor, file_key: str) -> None:
    shape, dtype = expert.tensors[file_key]
    if tuple(target.shape) != shape:
        raise ConfigError(f"{expert.key}={expert.path}: {file_key} has shape {list(shape)}, the base's "
                          f"{name} {list(target.shape)}: it was trained from another model than model=")
    if _DTYPES.get(dtype) != target.dtype:
        raise ConfigError(f"{expert.key}={expert.path}: {file_key} is {dtype}, the base's {name} {target.dtype}: "
                          "set model.dtype to the experts' (a merge copies tensors bit for bit)")


def merge_weights(model: torch.nn.Module, experts: dict[str, Expert], partitions, uncovered_from: str,
                  prefix: str = "backbone.") -> tuple[dict[str, str], dict[str, list[str]]]:
    """Build the merged model in ``model`` (the loaded base): every parameter whose source
    (:func:`tensor_sources`) is an expert is overwritten, one tensor at a time, with that expert's
    tensor ``prefix + name``. Returns (sources, missing) as :class:`MergeRecord` holds them."""
    from safetensors import safe_open
    params = dict(model.named_parameters())
    holds: dict[str, set[str]] = {}
    for role, expert in experts.items():
        names = {key.removeprefix(prefix): key for key in expert.tensors}
        unknown = sorted(key for name, key in names.items() if not key.startswith(prefix) or name not in params)
        if unknown:
            raise ConfigError(f"{expert.key}={expert.path} holds tensors the base (model=) lacks, e.g. {unknown[:3]}: "
                              "it was written for another model or method")
        for name, key in names.items():
            _check_tensor(expert, name, params[name], key)
        holds[role] = set(names)
    partition = partition_of(model, partitions)
    intended = tensor_sources(partition, params, uncovered_from, holds={r: params for r in SOURCES})
    sources = tensor_sources(partition, params, uncovered_from, holds)
    with contextlib.ExitStack() as stack, torch.no_grad():
        handles = {role: stack.enter_context(safe_open(str(e.path), "pt")) for role, e in experts.items() if e.path}
        for name, param in params.items():
            if sources[name] != BASE:
                param.copy_(handles[sources[name]].get_tensor(prefix + name))
    return sources, _missing(intended, sources)


def _missing(intended: dict[str, str], sources: dict[str, str]) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for name, source in intended.items():
        if sources[name] != source:
            missing.setdefault(source, []).append(name)
    return missing


def _adapted_weight(adapter_key: str) -> str:
    """The plain model's name of the weight an adapter tensor adapts:
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``."""
    return adapter_key.removeprefix(_PEFT_PREFIX).split(_LORA_MARK)[0] + ".weight"


def merge_adapters(model: torch.nn.Module, experts: dict[str, Expert], partitions, uncovered_from: str,
                   settings: dict[str, Any], prefix: str = "backbone.") -> tuple[torch.nn.Module, dict, dict]:
    """Wrap the plain base ``model`` with LoRA ``settings`` and fill its adapters: each adapter
    tensor from the source of the weight it adapts (partitions resolved on the plain model, then
    :func:`tensor_sources`); a base-sourced adapter is zero. Returns (wrapped model, sources,
    missing) keyed by adapter tensor name."""
    from safetensors import safe_open

    from xlt_runner.methods.finetune import LoraConfig, apply_lora
    partition = partition_of(model, partitions)  # before wrapping: the names the partitions speak of
    wrapped = apply_lora(model, LoraConfig(r=settings["r"], alpha=settings["alpha"], dropout=settings["dropout"],
                                           target_modules=settings["target_modules"]))
    adapters = {name: p for name, p in wrapped.named_parameters() if _LORA_MARK in name}
    holds: dict[str, set[str]] = {}
    for role, expert in experts.items():
        holds[role] = {key.removeprefix(prefix) for key in expert.tensors}
        unknown = sorted(k for k in expert.tensors if k.removeprefix(prefix) not in adapters)
        if unknown:
            raise ConfigError(f"{expert.key}={expert.path} holds adapter tensors the merged adapter set lacks, e.g. "
                              f"{unknown[:3]}: its LoRA settings differ from the run's record")
        for name in expert.tensors:
            _check_tensor(expert, name, adapters[name.removeprefix(prefix)], name)
    intended = tensor_sources(partition, adapters, uncovered_from, {r: adapters for r in SOURCES}, _adapted_weight)
    sources = tensor_sources(partition, adapters, uncovered_from, holds, _adapted_weight)
    with contextlib.ExitStack() as stack, torch.no_grad():
        handles = {role: stack.enter_context(safe_open(str(e.path), "pt")) for role, e in experts.items() if e.path}
        for name, param in adapters.items():
            if sources[name] == BASE:
                param.zero_()
            else:
                param.copy_(handles[sources[name]].get_tensor(prefix + name))
    return wrapped, sources, _missing(intended, sources)


# ------------------------------------------------------------------------------ method
@METHODS.register("layer_swap", LayerSwapConfig)
class LayerSwap(DecoderMethod):
    """The merge of ``method.math_expert`` and ``method.language_expert`` into the base, tested
    as loaded; nothing trains."""
    trains = False
    train_data_modes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_method_config(cls, cfg: LayerSwapConfig) -> None:
        """What needs no file: the rule's sources, the partitions' grammar and names, no
        ``init_from``. (The experts are checked by the preflight and when the run starts.)"""
        if cfg.init_from:
            raise ConfigError(f"method.init_from={cfg.init_from}: method=layer_swap builds its model from model= (the "
                              "base) and the two experts; starting weights would be overwritten by the merge. Give "
                              "those weights as an expert (method.math_expert=... or method.language_expert=...)")
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, "uncovered_from"):
            raise ConfigError(f"method.uncovered_from is not set: say where the tensors in no partition come from "
                              f"({' | '.join(SOURCES)})")
        check_source(cfg.uncovered_from, "method.uncovered_from")
        check_partitions(partitions_of(cfg), "method.partitions")
        for name in cfg.partitions:
            check_source(name, f"method.partitions: partition {name!r}; a partition's name says where its tensors "
                               "come from, so it")
        if all(isinstance(cfg, DictConfig) and not OmegaConf.is_missing(cfg, f"{r}_expert")
               and cfg[f"{r}_expert"] == BASE for r in EXPERT_ROLES):
            raise ConfigError(f"method.math_expert and method.language_expert are both {BASE}: that is the base model "
                              "as it is; use method=prompting")

    def configure_trainable(self) -> None:
        start = time.perf_counter()
        experts = resolve_experts(self.cfg, self.backbone_name, digest=True)
        partitions = partitions_of(self.cfg)
        lora = next((e.lora for e in experts.values() if e.lora is not None), None)
        if lora is not None:
            self.backbone, sources, missing = merge_adapters(self.backbone, experts, partitions,
                                                             self.cfg.uncovered_from, lora)
            self._saved = {f"backbone.{name}" for name in sources}  # the whole merged adapter set
        else:
            sources, missing = merge_weights(self.backbone, experts, partitions, self.cfg.uncovered_from)
            self._saved = {f"backbone.{name}" for name, source in sources.items() if source != BASE}
        self.backbone.requires_grad_(False)
        self.merge_record = MergeRecord(
            model=self.backbone_name, kind="lora" if lora is not None else "weights", experts=experts,
            uncovered_from=self.cfg.uncovered_from, sources=sources, missing=missing, lora=lora,
            partitions={name: [_stated(s) for s in selections] for name, selections in partitions.items()},
            seconds=time.perf_counter() - start)
        counts = self.merge_record.summary()["tensors_from"]
        print(f"[xlt-run] layer_swap: {self.merge_record.summary()['tensors']} from " +
              ", ".join(f"{source} {n}" for source, n in counts.items()) +
              "".join(f"; {len(names)} the {role} expert's file lacks came from the base"
                      for role, names in missing.items()))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The merge's own tensors (what ``method_weights.safetensors`` holds): those taken from the
        experts (full merges; the rest is the base's) or the whole adapter set (LoRA)."""
        return {k: v for k, v in self.state_dict().items() if k in self._saved}

    def load_trainable(self, path: str) -> None:
        raise ConfigError("method=layer_swap takes no method.init_from: give the weights as an expert")

    def export_pretrained(self, directory: Path) -> None:
        """The merged model as a transformers folder (LoRA: adapters folded in), with merge.json."""
        super().export_pretrained(directory)
        (Path(directory) / MERGE_FILE).write_text(json.dumps(self.merge_record.to_json(), indent=1))


def _stated(selection: LayerSelection) -> dict[str, Any]:
    """A selection's keys that differ from the grammar's defaults (as a preset writes it)."""
    default = LayerSelection()
    return {f.name: getattr(selection, f.name) for f in fields(selection)
            if getattr(selection, f.name) != getattr(default, f.name)}

