"""Multilingual retrieval-augmented generation (the ``rag`` task kind): QTT-RAG and its baselines.

For a query in language Lq the pipeline (:mod:`xlt_runner.rag.pipeline`) retrieves passages from a
corpus with a dense retriever and an exact inner-product index (:mod:`~xlt_runner.rag.retrieval`),
reranks them, identifies each passage's language, translates the foreign ones into Lq
(:mod:`~xlt_runner.rag.translation`), has an LLM judge score each translation
(:mod:`~xlt_runner.rag.judging`), and lets the generator answer from the passages. Retrieval
results, translations, judgements and rewrites are cached by content in one SQLite store that
the jobs of a sweep share (:mod:`~xlt_runner.rag.cache`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Passage:
    """One corpus passage. ``pid`` is unique within its corpus; ``lang`` is the language the corpus
    declares for it (None when it declares none): the pipeline identifies every passage's language
    itself and records both."""
    pid: str
    title: str
    text: str
    lang: str | None = None
