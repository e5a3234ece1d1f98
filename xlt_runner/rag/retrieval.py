"""Dense retrieval: an encoder's passage and query vectors, an exact inner-product index, its
disk cache, and cross-encoder reranking scores.

Everything here works on one batch or one tensor at a time and knows nothing of Lightning: the
pipeline feeds :func:`encode_texts` and :func:`rerank_scores` batch by batch from predict steps.

**Inputs.** A query is encoded as ``query_prefix + question`` (:func:`query_input`); a passage as
``passage_prefix + title + ". " + text``, or ``passage_prefix + text`` when its title is empty
(:func:`passage_input`; e5 was trained with ``"query: "`` / ``"passage: "`` prefixes).

**Index.** :class:`ExactIndex` returns the exact top-k by inner product (cosine when the vectors
are normalised); equal scores are ordered by lower passage index (the torch backend also keeps
the lower indices when equal scores straddle the k-th place). Passage embeddings are cached in
``<cache_dir>/rag_index/<index_key>.safetensors`` (:func:`index_path`), keyed by the corpus
content and everything about the encoder that changes the embeddings (:func:`index_key`).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from xlt_runner.config import MODEL_POOLINGS, ConfigError, ModelConfig
from xlt_runner.fileio import atomic_path
from xlt_runner.methods.base import masked_mean
from xlt_runner.rag import Passage

INDEX_BACKENDS = ("auto", "torch", "faiss")
#: Bumped when the text an encoder sees for a passage (:func:`passage_input`) or the file layout
#: changes, so older cached embeddings are not reused.
INDEX_FORMAT = 1
#: Most query-by-passage scores :meth:`ExactIndex.search` holds at once (float32: 64 MiB).
MAX_SCORES_IN_MEMORY = 1 << 24
_EMBEDDINGS_TENSOR = "embeddings"
_META_KEY = "xlt_rag_index"
_SHA256_KEY = "sha256"


def _me5_small() -> ModelConfig:
    # text_prefix is what the packaged model declares (load_backbone warns otherwise); retrieval
    # prefixes inputs with RetrieverConfig.query_prefix / passage_prefix instead.
    return ModelConfig(name="me5_small", kind="encoder", packaged="me5_small", text_prefix="query: ",
                       pooling="mean", max_length=256)


@dataclass
class RetrieverConfig:
    """The dense retriever: an encoder (``model.pooling``: cls | mean; ``model.max_length``
    tokens per input, longer inputs truncated), input prefixes, the ``top_k`` passages kept per
    query, the encoding batch size and the index backend (auto: FAISS ``IndexFlatIP`` when
    ``faiss`` is installed, else torch; see :func:`resolve_index_backend`)."""
    model: ModelConfig = field(default_factory=_me5_small)
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    normalize: bool = True  # L2-normalise vectors: inner product = cosine similarity
    top_k: int = 50
    batch_size: int = 64
    index: str = "auto"  # auto | torch | faiss


@dataclass
class RerankerConfig:
    """A cross-encoder (a sequence-classification model scoring ``(query, passage)`` pairs) that
    reorders the ``top_k`` dense results and keeps ``top_n``; ``model: null`` keeps the dense
    order. ``max_length`` is in tokens for the pair, truncated longest-first."""
    model: Optional[ModelConfig] = None
    top_n: int = 5
    batch_size: int = 32
    max_length: int = 512


# ------------------------------------------------------------------------------ inputs
def query_input(question: str, prefix: str) -> str:
    """The text the encoder sees for a query: ``prefix + question``."""
    return prefix + question


def passage_input(passage: Passage, prefix: str) -> str:
    """The text the encoder sees for a passage: ``prefix + title + ". " + text``, or
    ``prefix + text`` when the title is empty."""
    body = f"{passage.title}. {passage.text}" if passage.title else passage.text
    return prefix + body


# ---------------------------------------------------------------------------- encoding
def encode_texts(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, pooling: str, normalize: bool,
                 max_length: int) -> torch.Tensor:
    """One batch of sentence vectors ``(len(texts), hidden)``, float32, on the model's device.

    ``model`` is a base encoder (``last_hidden_state``); ``pooling`` reads the first position
    (``cls``) or the mean over real tokens (``mean``, padding excluded); ``normalize`` scales each
    row to unit L2 norm. Inputs longer than ``max_length`` tokens are truncated.
    """
    if pooling not in MODEL_POOLINGS:
        raise ConfigError(f"retriever pooling {pooling!r} is not valid; set model.pooling to one of "
                          f"{', '.join(MODEL_POOLINGS)}")
    device = next(model.parameters()).device
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {name: tensor.to(device) for name, tensor in batch.items()}
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
        vectors = hidden[:, 0].float() if pooling == "cls" else masked_mean(hidden, batch["attention_mask"])
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors


def rerank_scores(model: torch.nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], *,
                  max_length: int) -> torch.Tensor:
    """One batch of cross-encoder relevance scores ``(len(pairs),)``, float32, on the model's
    device; higher is more relevant. ``pairs`` are ``(query, passage)`` texts, encoded as a text
    pair and truncated longest-first to ``max_length`` tokens. A one-logit head gives that logit,
    a two-logit head its second (the "relevant" class)."""
    device = next(model.parameters()).device
    queries, passages = [query for query, _ in pairs], [passage for _, passage in pairs]
    batch = tokenizer(queries, passages, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    batch = {name: tensor.to(device) for name, tensor in batch.items()}
    with torch.inference_mode():
        logits = model(**batch).logits.float()
    if logits.shape[-1] not in (1, 2):
        raise ConfigError(f"the reranker has {logits.shape[-1]} output labels; reranker.model must be a "
                          "cross-encoder with one relevance logit or two (not relevant, relevant)")
    return logits[:, -1]


# ------------------------------------------------------------------------------- index
def resolve_index_backend(name: str) -> str:
    """``retriever.index`` as the backend to use: ``torch`` or ``faiss`` (``auto``: faiss when it
    is installed). ConfigError for an unknown name or ``faiss`` without faiss installed."""
    if name not in INDEX_BACKENDS:
        raise ConfigError(f"retriever.index={name!r} is not valid; choose one of {', '.join(INDEX_BACKENDS)}")
    installed = _faiss_importable()
    if name == "faiss" and not installed:
        raise ConfigError("retriever.index=faiss but the faiss package is not installed; "
                          "`pip install faiss-cpu`, or set retriever.index=torch (same results, exact search)")
    if name == "auto":
        return "faiss" if installed else "torch"
    return name


def _faiss_importable() -> bool:
    try:
        importlib.import_module("faiss")
    except ImportError:
        return False
    return True


class ExactIndex:
    """Exact maximum-inner-product search over ``embeddings`` ``(n, d)`` (stored as float32).

    ``backend`` is ``retriever.index`` (resolved by :func:`resolve_index_backend`): ``torch``
    multiplies on the embeddings' device, a chunk of queries at a time with at most
    :data:`MAX_SCORES_IN_MEMORY` scores held; ``faiss`` uses a CPU ``faiss.IndexFlatIP``. Both
    return results ordered by score, then by lower index; torch also keeps the lower indices
    when equal scores straddle the k-th place (FAISS picks its own there).
    """

    def __init__(self, embeddings: torch.Tensor, backend: str = "torch") -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"ExactIndex needs a non-empty (n, d) tensor, got shape {tuple(embeddings.shape)}")
        self.backend = resolve_index_backend(backend)
        self.embeddings = embeddings.detach().float().contiguous()
        self._faiss = None
        if self.backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._faiss.add(self.embeddings.cpu().numpy())

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` passages per query: ``(scores, indices)``, each ``(m, min(k, n))`` on the CPU
        (float32 inner products, int64 row numbers of ``embeddings``), best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"queries must be (m, {self.embeddings.shape[1]}), got {tuple(queries.shape)}")
        k = min(k, len(self))
        queries = queries.detach().float()
        if self._faiss is not None:
            scores, indices = self._faiss.search(queries.cpu().contiguous().numpy(), k)
            return _order_selection(torch.from_numpy(scores), torch.from_numpy(indices).long())
        chunk = max(1, MAX_SCORES_IN_MEMORY // len(self))
        results = [_top_k(block.to(self.embeddings.device) @ self.embeddings.T, k)
                   for block in queries.split(chunk)]
        return torch.cat([s for s, _ in results]).cpu(), torch.cat([i for _, i in results]).cpu()


def _order_selection(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's selected entries ordered by value (descending), equal values by lower index."""
    indices, order = torch.sort(indices, dim=1)
    values, order = torch.sort(values.gather(1, order), dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


def _top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores per row and their columns; equal scores go to the lower column,
    also at the k-th place (``torch.topk`` picks arbitrarily among ties there)."""
    values, indices = torch.topk(scores, k, dim=1)
    values, indices = _order_selection(values, indices)
    kth = values[:, -1:]
    straddling = ((scores == kth).sum(1) > (values == kth).sum(1)).nonzero().squeeze(1)
    if straddling.numel():  # ties across the k-th place: a stable full sort of those rows decides
        tied_values, tied_indices = torch.sort(scores[straddling], dim=1, descending=True, stable=True)
        values[straddling], indices[straddling] = tied_values[:, :k], tied_indices[:, :k]
    return values, indices


# -------------------------------------------------------------------------- disk cache
def index_key(corpus_fingerprint: str, retriever: RetrieverConfig, backbone_source: str) -> str:
    """Hex sha256 naming a corpus's cached passage embeddings.

    It covers what changes the embeddings: the corpus content fingerprint, the encoder weights
    (``backbone_source`` as :class:`~xlt_runner.models.Backbone` reports it, a packaged model's
    cache directory left out, plus ``model.revision`` and ``model.dtype``), ``model.pooling``,
    ``model.max_length``, ``passage_prefix``, ``normalize`` and :data:`INDEX_FORMAT`. Labels and
    query-side or search settings (``model.name``, ``query_prefix``, ``top_k``, ``batch_size``,
    ``index``) are not in it.
    """
    model = retriever.model
    identity = {"format": INDEX_FORMAT, "corpus": corpus_fingerprint,
                "source": backbone_source.split(" -> ")[0] if backbone_source.startswith("packaged:")
                else backbone_source,
                "revision": model.revision, "dtype": model.dtype, "pooling": model.pooling,
                "max_length": model.max_length, "passage_prefix": retriever.passage_prefix,
                "normalize": retriever.normalize}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def index_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """Where the embeddings for :func:`index_key` ``key`` are cached: ``<cache_dir>/rag_index/<key>.safetensors``."""
    return Path(cache_dir).expanduser() / "rag_index" / f"{key}.safetensors"


def save_embeddings(path: str | os.PathLike, embeddings: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write ``embeddings`` (as float32) and ``meta`` (JSON-serialisable) to the safetensors file
    ``path`` atomically, with a sha256 of the tensor bytes that :func:`load_embeddings` checks."""
    from safetensors.torch import save_file

    tensor = embeddings.detach().float().cpu().contiguous()
    metadata = {_META_KEY: json.dumps(meta, sort_keys=True), _SHA256_KEY: _tensor_sha256(tensor)}
    with atomic_path(path) as tmp:
        save_file({_EMBEDDINGS_TENSOR: tensor}, str(tmp), metadata=metadata)


def load_embeddings(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """``(embeddings, meta)`` as :func:`save_embeddings` wrote them, or None when ``path`` does not
    exist or is unreadable, truncated or corrupt (then with a warning: the caller recomputes and
    saves over it)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensor = handle.get_tensor(_EMBEDDINGS_TENSOR)
        if metadata.get(_SHA256_KEY) != _tensor_sha256(tensor):
            raise ValueError("the embeddings do not match their checksum")
        return tensor, json.loads(metadata[_META_KEY])
    except (OSError, SafetensorError, KeyError, ValueError) as error:
        warnings.warn(f"cached retrieval index {path} is unreadable or corrupt ({error}); recomputing it",
                      stacklevel=2)
        return None


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy()).hexdigest()
