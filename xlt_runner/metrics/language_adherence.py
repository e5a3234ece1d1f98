"""Language adherence of closed-book QA answers: CoCo-CoLa's ratios (Correct Concept – Correct
Language, MRL 2025) and the cumulative accuracy, from predictions and parallel gold answers.

For questions asked in language Li, C(Li→L) is the set of question ids whose prediction is
correct against language L's gold answers for the same question id, "correct" being
:func:`~xlt_runner.metrics.generation.answer_accuracy` with L as its language (L's articles are
removed; an empty prediction is never correct). A question without gold answers in L is not in
C(Li→L). From these sets, per input language:

- general ratio (paper Eq. 3): |C(Li→Li) − O| / |C(Li→Li) Δ O| with O = ∪ C(Li→Lo) over the
  other languages Lo: among questions correct in exactly one of {Li, some other language}, the
  share correct in Li. Questions correct in both (a name spelled alike everywhere) drop out.
- simplified ratio (paper Eq. 4): |C_D(Li→Li)| / (|C_D(Li→Li)| + |C_D(Li→en)|), C_D being C
  restricted to the questions whose Li and English gold answers differ, as the paper writes it:
  a question correct against both counts in both terms.
- cumulative accuracy: |C(Li→Li) ∪ C(Li→en)| over the questions asked in Li.

Decisions where the paper leaves room:

- The other languages are the keys of ``references`` whose ISO 639-1 code (macrolanguages folded,
  :func:`~xlt_runner.metrics.language_id.iso639_1`) differs from Li's: for ``zh_cn``, MKQA's
  ``zh_tw`` and ``zh_hk`` are neither Li nor another language, so an answer in traditional
  characters is not counted as wrong-language output (as the output-language rate folds them).
- The Li and English gold answers of a question differ when both have a reference that
  normalises to a non-empty text (:func:`~xlt_runner.metrics.generation.normalize_answer`, each
  in its own language) and no normalised Li reference equals a normalised English one. So "١٩٨٤"
  and "1984" or "Helsinki" and "Helsinki" do not differ, "Tokio" and "Tokyo" do; a question
  without English gold is outside the simplified ratio's population.
- When Li is English (same ISO 639-1 code as ``english``) the simplified ratio is undefined.
  Without English gold in ``references`` the simplified ratio is undefined and the cumulative
  accuracy is the input-language accuracy.
- A ratio whose denominator is 0 is None (undefined), never 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from xlt_runner.metrics.generation import answer_accuracy, normalize_answer
from xlt_runner.metrics.language_id import iso639_1

#: Gold answers: language code -> question id -> every accepted answer in that language.
References = Mapping[str, Mapping[str, Sequence[str]]]


@dataclass(frozen=True)
class LanguageAdherence:
    """Adherence of the answers to the questions asked in ``lang``. Values are fractions in
    [0, 1] or None where their denominator is 0; every ``*_n`` is that denominator, in questions.

    ``n``: questions asked in ``lang`` with a prediction. ``correct_in_input``: |C(Li→Li)|.
    ``correct_in_english``: |C(Li→en)|, None without English gold. ``cumulative_accuracy``:
    |C(Li→Li) ∪ C(Li→en)| / ``n``. ``ratio_general``: paper Eq. 3 over ``ratio_general_n``
    questions, correct in Li or in an ``other_languages`` one but not both.
    ``ratio_simplified``: paper Eq. 4 on the ``differing_gold`` questions whose Li and English
    gold differ; ``ratio_simplified_n`` = |C_D(Li→Li)| + |C_D(Li→en)|.
    """
    lang: str
    n: int
    correct_in_input: int
    correct_in_english: int | None
    cumulative_accuracy: float | None
    ratio_general: float | None
    ratio_general_n: int
    ratio_simplified: float | None
    ratio_simplified_n: int
    differing_gold: int
    other_languages: tuple[str, ...]

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (``other_languages`` as a list; None stays None)."""
        return {**asdict(self), "other_languages": list(self.other_languages)}


def _fraction(count: int, total: int) -> float | None:
    return count / total if total else None


def _correct_ids(predictions: Mapping[str, str], gold: Mapping[str, Sequence[str]], lang: str) -> set[str]:
    """Question ids whose prediction is correct against ``gold`` (answers in ``lang``); ids
    without gold are not."""
    return {qid for qid, prediction in predictions.items()
            if qid in gold and answer_accuracy(prediction, gold[qid], lang)}


def _normalized_set(answers: Sequence[str], lang: str) -> set[str]:
    return {a for a in (normalize_answer(answer, lang) for answer in answers) if a}


def _gold_differs(input_answers: Sequence[str], input_lang: str,
                  english_answers: Sequence[str], english: str) -> bool:
    """Whether both have a non-empty normalised answer and no normalised answer is shared."""
    input_set, english_set = _normalized_set(input_answers, input_lang), _normalized_set(english_answers, english)
    return bool(input_set) and bool(english_set) and input_set.isdisjoint(english_set)


def language_adherence(predictions: Mapping[str, str], references: References, input_lang: str,
                       english: str = "en") -> LanguageAdherence:
    """Adherence of ``predictions`` (question id -> generated text, for questions asked in
    ``input_lang``) against ``references`` (language -> question id -> gold answers; languages
    other than ``input_lang`` and ``english`` are the other languages of the general ratio).
    ValueError when ``references`` has no ``input_lang`` or lacks a predicted question id there."""
    if input_lang not in references:
        raise ValueError(f"no gold answers for the input language {input_lang!r} in references")
    input_gold = references[input_lang]
    missing = [qid for qid in predictions if qid not in input_gold]
    if missing:
        raise ValueError(f"question ids without {input_lang!r} gold answers: {', '.join(map(repr, missing[:5]))}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))

    input_iso = iso639_1(input_lang)
    other_languages = tuple(lang for lang in references if iso639_1(lang) != input_iso)
    correct_in_input = _correct_ids(predictions, input_gold, input_lang)
    correct_in_other = set().union(*(_correct_ids(predictions, references[lang], lang) for lang in other_languages))
    input_only = correct_in_input - correct_in_other
    exactly_one = correct_in_input ^ correct_in_other

    has_english = english in references
    correct_in_english = _correct_ids(predictions, references[english], english) if has_english else set()
    differing: set[str] = set()
    if has_english and input_iso != iso639_1(english):
        english_gold = references[english]
        differing = {qid for qid in predictions if qid in english_gold
                     and _gold_differs(input_gold[qid], input_lang, english_gold[qid], english)}
    simplified_input = len(correct_in_input & differing)
    simplified_n = simplified_input + len(correct_in_english & differing)

    return LanguageAdherence(
        lang=input_lang,
        n=len(predictions),
        correct_in_input=len(correct_in_input),
        correct_in_english=len(correct_in_english) if has_english else None,
        cumulative_accuracy=_fraction(len(correct_in_input | correct_in_english), len(predictions)),
        ratio_general=_fraction(len(input_only), len(exactly_one)),
        ratio_general_n=len(exactly_one),
        ratio_simplified=_fraction(simplified_input, simplified_n),
        ratio_simplified_n=simplified_n,
        differing_gold=len(differing),
        other_languages=other_languages,
    )


def adherence_from_predictions(rows: Iterable[Mapping], references: References,
                               english: str = "en") -> dict[str, LanguageAdherence]:
    """:func:`language_adherence` for every input language of ``rows`` (``predictions.jsonl``
    rows: ``id``, ``lang``, ``prediction``, ``references``), in order of first appearance.

    Gold answers are ``references`` plus, for each language of the rows that ``references``
    lacks, the rows' own ``references`` (so a run's English rows give the English gold of every
    input language). ValueError for a question id twice in one language."""
    predictions: dict[str, dict[str, str]] = {}
    gold_from_rows: dict[str, dict[str, Sequence[str]]] = {}
    for row in rows:
        qid, lang = row["id"], row["lang"]
        if qid in predictions.setdefault(lang, {}):
            raise ValueError(f"question id {qid!r} appears twice in language {lang!r}")
        predictions[lang][qid] = row["prediction"]
        gold_from_rows.setdefault(lang, {})[qid] = row["references"]
    gold = {**references, **{lang: g for lang, g in gold_from_rows.items() if lang not in references}}
    return {lang: language_adherence(by_id, gold, lang, english) for lang, by_id in predictions.items()}
