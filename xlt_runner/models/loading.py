"""Load a backbone (model + tokenizer) from a :class:`~xlt_runner.config.ModelConfig`.

The model is returned on the CPU in eval mode: placement is Lightning's job. ``cfg.device``
is for code that runs outside Lightning's loops (the language-ID probe, pipelines): see
:func:`resolve_device`.

A Hub model that is not in the Hugging Face cache fails fast instead of retrying for about a
minute: at once in offline mode (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), else after one
request to the Hub with a :data:`HUB_CHECK_TIMEOUT_S` timeout. With
``model.trust_remote_code=true`` the loader first prints which code that lets transformers run.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from xlt_runner.config import ConfigError, ModelConfig

KINDS = ("encoder", "decoder", "seq2seq")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Seconds the one reachability request to the Hub may take (connect, and again for the answer).
HUB_CHECK_TIMEOUT_S = 3.0
_PACKAGED_HINT = "use a packaged model (model.packaged=me5_small|smollm2_135m|gemma3_270m)"


@dataclass
class Backbone:
    """A loaded backbone.

    ``model`` is the base model without a task head for encoders (``AutoModel``), an
    ``AutoModelForCausalLM`` for decoders and an ``AutoModelForSeq2SeqLM`` for seq2seq.
    ``tokenizer`` is a fast tokenizer with a pad token (decoders: pad = eos when the model has
    none, ``padding_side="left"``). ``hidden_size`` is the width of the model's hidden states.
    ``source`` says where the weights came from: ``tiny:xlmr``, ``packaged:me5_small -> /dir``,
    ``hub:FacebookAI/xlm-roberta-base``, ``local:/dir`` or ``gguf:/dir/file.gguf``.
    ``pooling`` is ``model.pooling``: how this backbone's sentence vector is read (cls | mean).
    """
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    kind: str
    name: str
    hidden_size: int
    source: str
    pooling: str = "cls"


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device: ``auto`` is the first GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but no CUDA device is available; use model.device=cpu or auto")
    return device


def load_backbone(cfg: ModelConfig, cache_dir: str) -> Backbone:
    """Load the backbone ``cfg`` names, from the first source set among ``tiny``, ``packaged``,
    ``gguf_file``, ``pretrained``. Weights are cast to ``cfg.dtype``.

    ``cache_dir`` holds converted packaged models (``<cache_dir>/models/<name>``). Raises
    ConfigError for an invalid kind/dtype/source, a missing local directory, or an unreachable Hub.
    """
    if cfg.kind not in KINDS:
        raise ConfigError(f"model.kind={cfg.kind!r} is not valid; choose one of {', '.join(KINDS)}")
    dtype = _torch_dtype(cfg.dtype)
    if cfg.tiny:
        from xlt_runner.models.tiny import TINY_KINDS, build_tiny_model

        _check_kind_matches(cfg, TINY_KINDS.get(cfg.tiny, cfg.kind), f"tiny model {cfg.tiny!r}")
        model, tokenizer = build_tiny_model(cfg.tiny)
        return _backbone(cfg, model.to(dtype), tokenizer, f"tiny:{cfg.tiny}")
    if cfg.packaged:
        from xlt_runner.models.packaged import ensure_packaged_model, packaged_model_spec

        spec = packaged_model_spec(cfg.packaged)
        _check_kind_matches(cfg, spec.kind, f"packaged model {cfg.packaged!r}")
        if spec.text_prefix and cfg.text_prefix != spec.text_prefix:
            warnings.warn(f"packaged model {cfg.packaged!r} expects inputs prefixed with {spec.text_prefix!r} but "
                          f"model.text_prefix={cfg.text_prefix!r}; override model.text_prefix='{spec.text_prefix}'",
                          stacklevel=2)
        directory = ensure_packaged_model(cfg.packaged, cache_dir)
        model, tokenizer = _from_pretrained(cfg, directory, dtype, **dict(spec.load_kwargs))
        return _backbone(cfg, model, tokenizer, f"packaged:{cfg.packaged} -> {directory}")
    if cfg.gguf_file:
        location, filename = _gguf_location(cfg)
        model, tokenizer = _from_pretrained(cfg, location, dtype, gguf_file=filename)
        return _backbone(cfg, model, tokenizer, f"gguf:{os.path.join(location, filename)}")
    if cfg.pretrained:
        if _looks_local(cfg.pretrained):
            directory = str(Path(cfg.pretrained).expanduser())
            if not os.path.isdir(directory):
                raise ConfigError(f"model.pretrained={cfg.pretrained!r}: no such directory ({os.path.abspath(directory)}); "
                                  "point it at a folder holding config.json and the weights, or use a hub id")
            model, tokenizer = _from_pretrained(cfg, directory, dtype)
            return _backbone(cfg, model, tokenizer, f"local:{os.path.abspath(directory)}")
        model, tokenizer = _from_pretrained(cfg, cfg.pretrained, dtype)
        return _backbone(cfg, model, tokenizer, f"hub:{cfg.pretrained}")
    raise ConfigError(f"model {cfg.name!r} names no source; set one of model.tiny (xlmr|bert|llama|m2m100), "
                      "model.packaged (me5_small|smollm2_135m|gemma3_270m), model.gguf_file or model.pretrained")


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements; tied parameters count once."""
    trainable = total = 0
    for parameter in module.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def _torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not valid; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _check_kind_matches(cfg: ModelConfig, actual: str, what: str) -> None:
    if cfg.kind != actual:
        raise ConfigError(f"{what} is a {actual} but model.kind={cfg.kind!r}; override model.kind={actual}")


def _looks_local(pretrained: str) -> bool:
    """A path rather than a hub id: exists, or starts like a path (hub ids are ``org/name``)."""
    return os.path.exists(os.path.expanduser(pretrained)) or pretrained.startswith(("/", ".", "~")) \
        or pretrained.count("/") > 1


def _gguf_location(cfg: ModelConfig) -> tuple[str, str]:
    """(directory or hub repo, file name) of the GGUF file; ``pretrained`` may be omitted
    when ``gguf_file`` is a path to an existing file."""
    if cfg.pretrained:
        return cfg.pretrained, cfg.gguf_file
    path = Path(cfg.gguf_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.gguf_file={cfg.gguf_file!r}: no such file ({path.resolve()}); give the path of the "
                          ".gguf file, or its name plus model.pretrained=<directory or hub repo holding it>")
    return str(path.resolve().parent), path.name


_AUTO_CLASSES = {"encoder": "AutoModel", "decoder": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}


def _from_pretrained(cfg: ModelConfig, location: str, dtype: torch.dtype, **model_kwargs):
    """Tokenizer and model from ``location``, a local directory or a Hub repo id."""
    import transformers

    auto_class = getattr(transformers, _AUTO_CLASSES[cfg.kind])
    common = dict(trust_remote_code=cfg.trust_remote_code)
    if cfg.revision:
        common["revision"] = cfg.revision
    if "gguf_file" in model_kwargs:
        common["gguf_file"] = model_kwargs.pop("gguf_file")
    on_hub = not os.path.isdir(location)
    load_from = (_cached_snapshot_if_hub_unreachable(location, cfg.revision, common.get("gguf_file")) if on_hub
                 else None) or location
    if cfg.trust_remote_code:
        print(f"[xlt-run] {_remote_code_notice(location, cfg.revision)}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(load_from, **common)
        model = auto_class.from_pretrained(load_from, dtype=dtype, **common, **model_kwargs)
    except OSError as error:
        if not on_hub:
            raise
        raise ConfigError(
            f"could not load {location!r} from the Hugging Face Hub ({error}). Check the id and model.revision "
            "(and, for a gated or private model, that HF_TOKEN grants access), point model.pretrained at a local "
            f"directory holding config.json and the weights, or {_PACKAGED_HINT}.") from error
    return model, tokenizer


def _cached_snapshot_if_hub_unreachable(repo_id: str, revision: str | None, gguf_file: str | None) -> str | None:
    """Check, before any download, that Hub repo ``repo_id`` can be loaded.

    The model counts as cached when its ``config.json`` (its GGUF file, with ``gguf_file``) is in
    the Hugging Face cache. Returns None to load through the Hub as usual (it answered, or offline
    mode is on and the model is cached: transformers then reads the cache), or the cached
    snapshot directory to load from when the Hub does not answer. Raises ConfigError at once
    when the model is not cached and offline mode is on or the Hub does not answer one request
    within :data:`HUB_CHECK_TIMEOUT_S`.
    """
    from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache

    cached_file = try_to_load_from_cache(repo_id, gguf_file or "config.json", revision=revision)
    cached = isinstance(cached_file, str)
    what = f"model.pretrained={repo_id!r}" + (f" (model.gguf_file={gguf_file!r})" if gguf_file else "")
    not_here = f"is not a local directory and is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if is_offline_mode():
        if cached:
            return None
        raise ConfigError(
            f"{what} {not_here}, and the Hugging Face Hub is switched off (offline mode: HF_HUB_OFFLINE or "
            "TRANSFORMERS_OFFLINE is set), so there is nothing to load. Point model.pretrained at a local directory "
            f"holding config.json and the weights, {_PACKAGED_HINT}, or download the model into the cache once "
            f"where the Hub is reachable (e.g. `hf download {repo_id}` with the same HF_HOME).")
    problem = _hub_unreachable_reason()
    if problem is None:
        return None
    if cached:  # a directory, not local_files_only: transformers still asks the Hub for some files then
        snapshot = os.path.dirname(cached_file)
        print(f"[xlt-run] the Hugging Face Hub is unreachable ({problem}); "
              f"loading {repo_id} from the cache ({snapshot})")
        return snapshot
    raise ConfigError(
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({problem}) to download {what}, which "
        f"{not_here}. Point model.pretrained at a local directory holding config.json and the weights, "
        f"{_PACKAGED_HINT}, or download the model into the cache where the Hub is reachable and run with "
        "HF_HUB_OFFLINE=1 (which also skips this check).")


def _hub_unreachable_reason() -> str | None:
    """Why one HEAD request to the Hub endpoint (through huggingface_hub's session, so with its
    proxy settings) got no answer within :data:`HUB_CHECK_TIMEOUT_S`; None when it answered
    (any HTTP status)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_CHECK_TIMEOUT_S)
    except Exception as exc:  # whatever the HTTP library raises (DNS, refused, timeout, TLS, proxy): no answer
        return f"{type(exc).__name__}: {str(exc) or f'no answer within {HUB_CHECK_TIMEOUT_S:g} s'}"
    return None


def _remote_code_notice(location: str, revision: str | None) -> str:
    """Which code ``trust_remote_code`` lets transformers run for ``location`` (local directory or
    Hub repo): the source, the revision and the Python modules named by ``auto_map`` in its
    ``config.json`` when that file is available locally."""
    if os.path.isdir(location):
        source = f"the local directory {os.path.abspath(location)}"
        config_path = os.path.join(location, "config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        source = f"the Hub repo {location} at revision {revision or 'main'}"
        config_path = try_to_load_from_cache(location, "config.json", revision=revision)
    notice = f"model.trust_remote_code=true: transformers may run Python code from {source}"
    try:
        with open(config_path, encoding="utf-8") as handle:
            auto_map = json.load(handle).get("auto_map") or {}
    except (TypeError, OSError, ValueError, AttributeError):  # not cached (TypeError: no path), unreadable, not a dict
        return (f"{notice}; its config.json is not available here yet, so the modules it names (auto_map) are "
                "not known before download: pin model.revision to a commit you have reviewed")
    modules = sorted({_auto_map_module(reference) for value in auto_map.values()
                      for reference in (value if isinstance(value, list) else [value]) if reference})
    if not modules:
        return f"{notice}; its config.json names no custom code (no auto_map)"
    return f"{notice}: {', '.join(modules)} (config.json auto_map)"


def _auto_map_module(reference: str) -> str:
    """``"modeling_x.Cls"`` -> ``"modeling_x.py"``; ``"org/repo--modeling_x.Cls"`` -> ``"org/repo:modeling_x.py"``."""
    repo, _, class_path = reference.rpartition("--")
    module = class_path.rpartition(".")[0].replace(".", "/") + ".py"
    return f"{repo}:{module}" if repo else module


def _backbone(cfg: ModelConfig, model, tokenizer, source: str) -> Backbone:
    _prepare_tokenizer(cfg, model, tokenizer)
    text_config = model.config.get_text_config()
    hidden_size = getattr(text_config, "hidden_size", None) or getattr(text_config, "d_model")
    return Backbone(model=model.eval(), tokenizer=tokenizer, kind=cfg.kind, name=cfg.name,
                    hidden_size=int(hidden_size), source=source, pooling=cfg.pooling)


def _prepare_tokenizer(cfg: ModelConfig, model, tokenizer) -> None:
    """Ensure a pad token (eos, else unk, for models without one), left padding for decoders,
    and the model's ``pad_token_id`` agreeing with the tokenizer."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"model {cfg.name!r}: its tokenizer has no pad, eos or unk token to pad with; "
                              "use a tokenizer that defines one")
        tokenizer.pad_token = fallback
    if cfg.kind == "decoder":
        tokenizer.padding_side = "left"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
