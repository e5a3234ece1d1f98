"""Metrics of the ``rag`` task: character 3-gram recall of answers (the QTT-RAG paper's metric),
and the specs of every metric a RAG run reports.

:func:`char3_recall` is BERGEN's ``Recall_char3gram`` (naver/bergen, ``modules/metrics.py``), the
framework the QTT-RAG paper evaluates with, rule for rule, so numbers compare with the paper's.
"""
from __future__ import annotations

import string
from collections import Counter
from typing import Sequence

import regex

from xlt_runner.metrics.spec import MetricSpec

_N = 3
_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as in BERGEN
# The ``regex`` module as in BERGEN, not ``re``: its \w counts combining marks as word characters,
# so an "a" right after a combining mark (U+0307 in lowercased "İa") is not a whole word.
_ENGLISH_ARTICLE = regex.compile(r"\b(a|an|the)\b")

#: Metrics of a RAG run, in display order.
RAG_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(name="char3_recall",
               description="character 3-gram recall of the answer, max over gold answers (BERGEN)"),
    MetricSpec(name="answer_language_rate",
               description="share of answers identified (py3langid) as the query language, "
                           "among answers with letters"),
    MetricSpec(name="r_lang",
               description="share of retrieved passages that were translated (not a quality measure)"),
    MetricSpec(name="retained_ratio", description="hard filter: share of translations kept"),
    MetricSpec(name="judge_failure_rate", higher_is_better=False,
               description="share of judged translations whose judge output gave no score"),
    MetricSpec(name="retrieval_recall",
               description="rag_local: share of queries whose gold passage is among the passages shown"),
    MetricSpec(name="retrieval_recall_at_k",
               description="rag_local: share of queries whose gold passage is among the top-k retrieved"),
)


def _normalize(text: str) -> str:
    """BERGEN's ``normalize``: lowercase, delete ASCII punctuation, replace the whole words
    a/an/the by a space, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ENGLISH_ARTICLE.sub(" ", text).split())


def char3_grams(text: str) -> list[str]:
    """The tokens :func:`char3_recall` counts for ``text``: after BERGEN's normalisation, each
    whitespace-separated word shorter than 3 characters as itself, every longer word as all its
    character 3-grams in order (a multiset: repeats stay)."""
    # BERGEN's ``ngrams`` lowercases and turns punctuation into spaces again; after
    # ``_normalize`` neither changes anything, so the words are split directly.
    tokens: list[str] = []
    for word in _normalize(text).split():
        if len(word) < _N:
            tokens.append(word)
        else:
            tokens.extend(word[i:i + _N] for i in range(len(word) - _N + 1))
    return tokens


def char3_recall(prediction: str, references: Sequence[str]) -> float:
    """Character 3-gram recall of ``prediction`` in [0, 1]: the largest, over ``references``, of
    ``|grams(prediction) ∩ grams(reference)| / |grams(reference)|`` with multiset intersection
    (a 3-gram counts as often as it occurs in both), grams from :func:`char3_grams`.

    Normalisation is BERGEN's exactly: lowercase (``str.lower``), delete the ASCII characters of
    ``string.punctuation`` only (Chinese and other full-width punctuation such as ``，。「」``
    stays part of the words it touches), remove English articles a/an/the as whole words in any
    language, collapse whitespace. Text written without spaces (Chinese, Japanese) is one word
    per run, so its 3-grams span the whole run; a word of 1–2 characters (Korean ``서울``,
    English ``na``) is one token and matches only the same whole word, never part of a longer
    word (``서울입니다`` gives 3-grams only, so it scores 0 against ``서울``).

    Blank references (empty or whitespace) are skipped; ValueError when none is left. A
    reference with no tokens after normalisation (``"the"``, ``"!!!"``) scores 0, as in BERGEN.
    """
    usable = [reference for reference in references if reference.strip()]
    if not usable:
        raise ValueError(f"char3_recall needs at least one non-blank reference, got {list(references)!r}")
    predicted = Counter(char3_grams(prediction))
    best = 0.0
    for reference in usable:
        gold = char3_grams(reference)
        overlap = sum((predicted & Counter(gold)).values())
        if overlap:
            best = max(best, overlap / len(gold))
    return best
