"""Reading an LLM judge's scores of a translation (QTT-RAG's quality tags).

The judge scores a translation from 0.0 to 5.0 on each of :data:`CRITERIA`. Asked for JSON, small
models garble it (code fences, prose around it, trailing commas, single quotes, full-width
punctuation, keys in the prompt's language): :func:`parse_judgement` repairs what it can and
returns None for the rest, so the pipeline records a missing score and counts it. In the
``logprob`` mode the judge is asked for one digit per criterion and :func:`expected_digit_score`
turns its logits over the digits 0–5 into an expected score.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator

import torch

CRITERIA = ("semantic_equivalence", "grammatical_accuracy", "naturalness_fluency")
MAX_SCORE = 5.0

# Full-width ASCII forms (！ to ～, digits ０-９, ．：，｛｝（）＂) and the ideographic space -> ASCII.
_FULL_WIDTH = {0xFF01 + i: chr(0x21 + i) for i in range(94)} | {0x3000: " "}
# Typographic quotes -> ASCII, tried as a repair only: inside a JSON string they break it.
_CURLY_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})
# Connectives dropped from keys: "naturalness and fluency", "luontevuus ja sujuvuus", "자연스러움 및 유창성".
_KEY_CONNECTIVES = re.compile(r"\b(?:and|ja|및)\b")

# Keys naming each criterion exactly (compared after _normalize_key): the English names and
# the wordings of the ko/fi/zh prompts and of judges that translate the keys.
_SYNONYMS = {
    "semantic_equivalence": (
        "semantic equivalence", "semantic", "semantics", "meaning", "의미적 동등성", "의미 동등성",
        "의미 일치", "의미적 일치", "semanttinen vastaavuus", "merkityksen vastaavuus", "语义等价",
        "语义等价性", "语义一致", "语义一致性"),
    "grammatical_accuracy": (
        "grammatical accuracy", "grammar", "grammatical", "grammaticality", "문법적 정확성",
        "문법 정확성", "문법", "kieliopillinen tarkkuus", "kielioppi", "语法准确性", "语法正确性", "语法"),
    "naturalness_fluency": (
        "naturalness fluency", "naturalness", "fluency", "자연스러움 유창성", "자연스러움", "유창성",
        "luontevuus sujuvuus", "luontevuus", "sujuvuus", "自然流畅度", "自然度", "流畅度", "流畅性"),
}
# Stems: a key containing the stems of exactly one criterion names it (ranked below a synonym).
_STEMS = {
    "semantic_equivalence": ("semant", "equivalen", "meaning", "vastaav", "merkity", "의미", "동등",
                             "语义", "語義", "意义", "意義", "等价"),
    "grammatical_accuracy": ("gramma", "kieliop", "문법", "语法", "語法", "文法"),
    "naturalness_fluency": ("natural", "fluen", "luonte", "sujuv", "자연", "유창", "流畅", "流暢", "自然"),
}
# Keys holding the score inside a per-criterion object: {"semantic_equivalence": {"score": 4, ...}}.
_SCORE_KEYS = frozenset({"score", "rating", "value", "점수", "pisteet", "pistemäärä", "arvosana",
                         "分数", "得分", "评分"})
_NUMBER = r"-?\d+(?:[.,]\d+)?"  # "," as a decimal separator too (Finnish "4,5")
_SCORE_TEXT = re.compile(rf"\s*({_NUMBER})\s*(?:/\s*({_NUMBER}))?\s*")
# Fallback without JSON: "key: number" or "key = number/5", keys starting with a letter,
# markdown emphasis and quotes around key or number allowed; keys up to 81 characters.
_KEY_VALUE = re.compile(
    rf"(?P<key>[^\W\d_][^:=\n{{}}\[\]\",;]{{0,80}}?)[\"'*\s]*[:=]\s*[\"'*]*\s*(?P<value>{_NUMBER}(?:\s*/\s*{_NUMBER})?)")

_SYNONYM_RANK, _STEM_RANK = 0, 1


def _normalize_key(key: str) -> str:
    """Casefolded, connectives dropped, everything but letters and digits removed."""
    return re.sub(r"[\W_]+", "", _KEY_CONNECTIVES.sub(" ", key.casefold().replace("_", " ")))


_SYNONYM_OF = {_normalize_key(word): criterion for criterion, words in _SYNONYMS.items() for word in words}
_SYNONYM_OF |= {_normalize_key(criterion): criterion for criterion in CRITERIA}


def _criterion_of(key: str) -> tuple[str, int] | None:
    """(criterion, rank) that ``key`` names, or None for another key (or one naming several)."""
    normalized = _normalize_key(key)
    if normalized in _SYNONYM_OF:
        return _SYNONYM_OF[normalized], _SYNONYM_RANK
    named = [c for c, stems in _STEMS.items() if any(stem in normalized for stem in stems)]
    return (named[0], _STEM_RANK) if len(named) == 1 else None


def _to_float(number: str) -> float:
    return float(number.replace(",", "."))


def _score_value(value: Any) -> float | None:
    """The score a JSON value states: a number, a string "4.5", "4,5", "4/5", "4.5 / 5.0", or an
    object with a "score"-like key; None otherwise (a fraction of anything but 5 included: a
    score is never rescaled)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        match = _SCORE_TEXT.fullmatch(value)
        if match is None or (match[2] is not None and _to_float(match[2]) != MAX_SCORE):
            return None
        return _to_float(match[1])
    if isinstance(value, dict):
        scores = [_score_value(v) for k, v in value.items() if _normalize_key(str(k)) in _SCORE_KEYS]
        scores = [s for s in scores if s is not None]
        return scores[0] if len(scores) == 1 else None
    return None


def _decide(found: dict[str, list[tuple[int, float]]]) -> dict[str, float] | None:
    """The three scores from (rank, value) candidates per criterion: the best-ranked values must
    agree; every criterion present, every score in [0, 5]; else None."""
    scores = {}
    for criterion in CRITERIA:
        candidates = found.get(criterion)
        if not candidates:
            return None
        best = min(rank for rank, _ in candidates)
        values = {value for rank, value in candidates if rank == best}
        if len(values) != 1:
            return None
        value = values.pop()
        if not (math.isfinite(value) and 0.0 <= value <= MAX_SCORE):
            return None
        scores[criterion] = value
    return scores


def _scores_in_object(obj: dict) -> dict[str, list[tuple[int, float]]]:
    """(rank, value) per criterion from the keys of ``obj``; when none of its keys names a
    criterion, from the first nested object that has such keys ({"scores": {...}})."""
    found: dict[str, list[tuple[int, float]]] = {}
    for key, value in obj.items():
        named = _criterion_of(str(key))
        if named is None:
            continue
        criterion, rank = named
        found.setdefault(criterion, [])
        score = _score_value(value)
        if score is not None:
            found[criterion].append((rank, score))
    if found:
        return found
    for value in obj.values():
        if isinstance(value, dict) and (nested := _scores_in_object(value)):
            return nested
    return {}


def _string_end(text: str, start: int) -> int:
    """Index of the quote closing the string opened at ``text[start]`` (backslash escapes
    honoured), or the last index when it is never closed."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    return len(text) - 1


def _objects(text: str) -> Iterator[str]:
    """Every balanced ``{...}`` in ``text``, by position of its opening brace (an outer object
    before the objects inside it); braces inside double-quoted strings within an object do not
    count, quotes in the prose between objects are ignored."""
    pairs, open_at, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == '"' and open_at:
            i = _string_end(text, i)
        elif ch == "{":
            open_at.append(i)
        elif ch == "}" and open_at:
            pairs.append((open_at.pop(), i))
        i += 1
    return (text[start:end + 1] for start, end in sorted(pairs))


def _repair(obj_text: str) -> str:
    """``obj_text`` with typographic quotes made ASCII, single-quoted strings double-quoted and
    commas before ``}`` or ``]`` dropped (outside strings)."""
    text, out, i = obj_text.translate(_CURLY_QUOTES), [], 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            end = _string_end(text, i)
            if ch == '"':
                out.append(text[i:end + 1])
            else:
                out.append(json.dumps(text[i + 1:end].replace("\\'", "'"), ensure_ascii=False))
            i = end + 1
            continue
        if ch == ",":
            following = text[i + 1:].lstrip()
            if following[:1] in ("}", "]"):
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _load_object(obj_text: str) -> dict | None:
    for attempt in (obj_text, _repair(obj_text)):
        try:
            loaded = json.loads(attempt)
        except (ValueError, RecursionError):
            continue
        if isinstance(loaded, dict):
            return loaded
    return None


def _scores_in_lines(text: str) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for match in _KEY_VALUE.finditer(text):
        named = _criterion_of(match["key"])
        score = _score_value(match["value"])
        if named is not None and score is not None:
            found.setdefault(named[0], []).append((named[1], score))
    return found


def parse_judgement(text: str) -> dict[str, float] | None:
    """The judge's three scores ``{criterion: score}`` (keys :data:`CRITERIA`, scores in
    [0.0, 5.0]) read from its output ``text``, or None when they cannot be read. Never raises.

    Full-width forms (``｛｝：，＂``, digits ``０-９``, ``．``) count as ASCII. The first balanced
    ``{...}`` that parses as a JSON object (as written, or repaired: ``“”‘’`` made ASCII,
    single-quoted strings, trailing commas) and has a key naming a criterion decides; prose, code
    fences and text around it are ignored, and a wrapper object (``{"scores": {...}}``) is
    looked into. Without such an object, ``key: number`` pairs anywhere in the text decide
    (``Semantic equivalence: 4`` lines, ``**Fluency**: 4.5/5``). Keys are matched after
    casefolding and dropping spaces, ``_``, ``&`` and "and": a known name of a criterion in
    English, Korean, Finnish or Chinese, else a key containing the stems of exactly one criterion
    (``semant``, ``gramma``, ``fluen``, ``의미``, ``kieliop``, ``流畅``, ...); an exact name outranks
    a stem match. A value is a number or a string ``"4.5"``, ``"4,5"``, ``"4/5"``, ``"4.5/5"``.

    None (a failure, counted by the caller) when a criterion has no score, when the values given
    for one criterion disagree, when a fraction is not out of 5, or when a score lies outside
    [0, 5]: nothing is clamped or rescaled.
    """
    text = text.translate(_FULL_WIDTH)
    for obj_text in _objects(text):
        obj = _load_object(obj_text)
        if obj is not None and (found := _scores_in_object(obj)):
            return _decide(found)
    return _decide(_scores_in_lines(text))


def expected_digit_score(digit_logits: torch.Tensor) -> torch.Tensor:
    """Expected score under the judge's distribution over the digit tokens "0".."5":
    ``digit_logits`` of shape (..., 6), position d the logit of digit d -> float32 tensor of shape
    (...) with ``sum_d d * softmax(digit_logits)_d``, in [0, 5]."""
    if digit_logits.shape[-1:] != (6,):
        raise ValueError(f"expected_digit_score needs logits over the 6 digits 0-5 in the last "
                         f"dimension, got shape {tuple(digit_logits.shape)}")
    probabilities = torch.softmax(digit_logits.float(), dim=-1)
    digits = torch.arange(6, dtype=torch.float32, device=digit_logits.device)
    return probabilities @ digits
