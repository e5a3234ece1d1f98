"""Scores of generated answers to closed-book QA questions, per example and per language.

Per example (:func:`score_prediction`, written to predictions.jsonl and recomputed by rescoring):
exact match and answer accuracy after :func:`normalize_answer`, whether the prediction is empty,
and whether it is written in the question's language. Per language
(:class:`PerLanguageGeneration`): sums of those, reduced across processes by summation, so DDP
evaluation gives the numbers of one process when every example is seen exactly once.

Where this differs from the peers' code (MKQA's official eval, BERGEN, CoCo-CoLa): Unicode
normalisation (NFC = NFD, full-width = ASCII, every script's digits = ASCII digits), punctuation
between digits kept ("1.5" is not "15"), an empty prediction or a reference that normalises to ""
never matches, a 1–2 character CJK answer matches inside a longer CJK prediction, and a
prediction without letters (empty, digits) counts as no language rather than py3langid's ``af``.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Sequence

import torch
from torchmetrics import Metric

from xlt_runner.metrics.language_id import LanguageIdentifier, iso639_1
from xlt_runner.metrics.spec import MetricSpec

_ENGLISH_ARTICLES = frozenset({"a", "an", "the"})
# Articles of the question language (ISO 639-1), removed on top of the English ones. MKQA's
# official lists without its Arabic rule (it deletes "ال" inside words), Vietnamese (not
# articles) and Finnish (no articles; "yksi" is the numeral one).
_ARTICLES = {
    "es": {"un", "una", "unos", "unas", "el", "la", "los", "las"},
    "de": {"ein", "eine", "einen", "einem", "eines", "einer", "der", "die", "das", "den", "dem", "des"},
    "nl": {"de", "het", "een", "des", "der", "den"},
    "sv": {"en", "ett"},
    "da": {"en", "et"},
    "no": {"en", "et", "ei"},
    "fr": {"le", "la", "l", "les", "du", "de", "d", "des", "un", "une"},
    "pt": {"o", "a", "os", "as", "um", "uma", "uns", "umas"},
    "it": {"il", "lo", "la", "l", "i", "gli", "le", "del", "dello", "della", "dell", "dei", "degli",
           "degl", "delle", "un", "uno", "una"},
    "hu": {"a", "az", "egy"},
}
# Digit grouping: 1–3 digits (not starting with 0), then groups of exactly 3 digits, all joined
# by the same separator (comma, full stop, apostrophes, Arabic thousands separator, space).
_DIGIT_GROUPS = re.compile(r"(?<![0-9])[1-9][0-9]{0,2}([,.'’٬ ])[0-9]{3}(?:\1[0-9]{3})*(?![0-9])")
_DECIMAL_COMMA = re.compile(r"(?<=[0-9])[,٫](?=[0-9])")  # "," and the Arabic decimal separator
# Scripts written without spaces between words: Han (with radicals, 々 〇 and the extensions),
# Hiragana, Katakana (with ー), Thai, Lao, Tibetan, Myanmar, Khmer.
_NO_SPACE_CHARS = ("\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3038-\u303b\u3040-\u30ff\u31f0-\u31ff"
                   "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
                   "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\ua9e0-\ua9ff\uaa60-\uaa7f\u1780-\u17ff\u19e0-\u19ff")
_SPACE_IN_NO_SPACE_SCRIPT = re.compile(f"(?<=[{_NO_SPACE_CHARS}]) (?=[{_NO_SPACE_CHARS}])")
# A number after normalisation: an optional minus, digits joined by the punctuation or symbols
# kept between digits.
_NUMBER = re.compile(r"-?[0-9]+(?:[^\w\s][0-9]+)*")


def _is_ascii_digit(char: str) -> bool:
    return "0" <= char <= "9"


def _keeps_punctuation(text: str, i: int) -> bool:
    """Whether punctuation ``text[i]`` stays: between two digits, or a minus sign ("-" before a
    digit, not after a letter or digit)."""
    digit_follows = i + 1 < len(text) and _is_ascii_digit(text[i + 1])
    if text[i] == "-" and digit_follows and (i == 0 or not text[i - 1].isalnum()):
        return True
    return digit_follows and i > 0 and _is_ascii_digit(text[i - 1])


def normalize_answer(text: str, lang: str) -> str:
    """``text`` in the form answers are compared in; ``lang`` is the question's language code
    (any form :func:`~xlt_runner.metrics.language_id.iso639_1` accepts; ValueError otherwise).

    In order:
    1. NFKC, casefold, NFKC again: NFC and NFD spellings become equal, full-width and other
       compatibility forms become their plain form (``１９８４`` -> ``1984``, ``Ｔｏｋｙｏ`` -> ``tokyo``).
    2. Format characters (Unicode Cf: zero-width space and joiners, soft hyphen) are deleted.
    3. Every Unicode decimal digit becomes its ASCII digit (Arabic-Indic, Devanagari, Bengali, Thai, ...).
    4. Thousands separators are deleted where the digits are grouped exactly like a thousands
       grouping, with one separator (``,`` ``.`` ``'`` ``’`` ``٬`` or a space) throughout and no
       leading 0: ``1,000`` = ``1.000`` = ``1 000`` = ``1000``. So ``1.234`` is read as 1234 (as in
       German), while ``1.5``, ``1.23``, ``0.123`` and ``1.2345`` keep their point.
    5. A comma or Arabic decimal separator between two digits becomes ``.``: ``1,5`` = ``1.5``.
    6. Punctuation (Unicode P*) becomes a space, except between two digits (``1.5`` stays, unlike
       MKQA's eval where it equals ``15``; also ``12:30``, ``3/4``) and except a minus sign: ``-``
       or ``−`` (written ``-``) before a digit and not after a letter or digit, so ``-5`` is not
       ``5`` while ``COVID-19`` = ``covid 19``. Symbols (``$``, ``%``, ``°``) stay.
    7. Articles are removed as whole words: English a/an/the in every language (answers in other
       languages are often English titles and names, "The Office", "The Beatles"), plus the
       question language's articles for es, de, nl, sv, da, no, fr, pt, it, hu (MKQA's lists).
       Words that are all articles are kept ("The The", vitamin "A" stay non-empty).
    8. Whitespace collapses to one space and is then deleted between two characters of scripts
       written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar, Tibetan):
       ``东 京`` = ``东京``; Hangul keeps its spaces.
    """
    language = iso639_1(lang)
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = "".join(str(d) if (d := unicodedata.decimal(c, None)) is not None else c for c in text)
    text = _DIGIT_GROUPS.sub(lambda m: m.group(0).replace(m.group(1), ""), text)
    text = _DECIMAL_COMMA.sub(".", text).replace("\u2212", "-")
    text = "".join(" " if unicodedata.category(c).startswith("P") and not _keeps_punctuation(text, i) else c
                   for i, c in enumerate(text))
    words = text.split()
    articles = _ENGLISH_ARTICLES | _ARTICLES.get(language, frozenset())
    content = [w for w in words if w not in articles]
    return _SPACE_IN_NO_SPACE_SCRIPT.sub("", " ".join(content or words))


def _normalized(prediction: str, references: Sequence[str], lang: str) -> tuple[str, list[str]]:
    """The normalised prediction and the normalised references that are not "" (so "" never
    equals one); ValueError for no references."""
    if not references:
        raise ValueError("no reference answers (the data layer guarantees at least one)")
    normalized = (normalize_answer(r, lang) for r in references)
    return normalize_answer(prediction, lang), [r for r in normalized if r]


def _exact(prediction: str, references: list[str]) -> bool:
    return prediction in references


def _contains(text: str, part: str) -> bool:
    """``part`` occurs in ``text`` without cutting a number of ``text`` ("1984" is not in "19845",
    "1" is not in "1.5", "1984" is in "1984年")."""
    inside_numbers = {i for m in _NUMBER.finditer(text) for i in range(m.start() + 1, m.end())}
    start = text.find(part)
    while start != -1:
        if start not in inside_numbers and start + len(part) not in inside_numbers:
            return True
        start = text.find(part, start + 1)
    return False


def _accurate(prediction: str, references: list[str]) -> bool:
    return prediction != "" and any(_contains(prediction, r) or _contains(r, prediction) for r in references)


def exact_match(prediction: str, references: Sequence[str], lang: str) -> bool:
    """Whether the normalised prediction equals a normalised reference. A prediction or reference
    that normalises to "" matches nothing; ValueError for empty ``references``."""
    return _exact(*_normalized(prediction, references, lang))


def answer_accuracy(prediction: str, references: Sequence[str], lang: str) -> bool:
    """CoCo-CoLa's accuracy made sound: after :func:`normalize_answer`, a reference occurs in the
    prediction or the prediction in a reference, as raw substrings ("paris" is in "comparison";
    a 1–2 character CJK answer counts inside a sentence) except that a number is never cut
    ("1984" does not occur in "19845", nor "1" in "1.5").

    Unlike CoCo-CoLa's ``p in r or r in p`` on stripped lowercase text, an empty prediction (or
    one of only punctuation) is never correct, a reference that normalises to "" never matches,
    and the caller passes only the generated text (CoCo-CoLa's still held the prompt, so an
    answer quoted in the question counted). ValueError for empty ``references``."""
    return _accurate(*_normalized(prediction, references, lang))


def output_language(prediction: str, identifier: LanguageIdentifier) -> str | None:
    """ISO 639-1 code of the language ``identifier`` reads ``prediction`` in; None when the
    prediction has no letters (empty, digits, punctuation: py3langid would say ``af``) or the
    identifier abstains."""
    if not any(c.isalpha() for c in prediction):
        return None
    return identifier.identify(prediction.strip())


def language_matches(prediction: str, lang: str, identifier: LanguageIdentifier) -> bool | None:
    """Whether ``prediction`` is in the question's language ``lang`` (compared as ISO 639-1 codes
    with macrolanguages folded, see :func:`~xlt_runner.metrics.language_id.iso639_1`); None when
    :func:`output_language` is None."""
    identified = output_language(prediction, identifier)
    return None if identified is None else identified == iso639_1(lang)


def score_prediction(prediction: str, references: Sequence[str], lang: str,
                     identifier: LanguageIdentifier) -> dict:
    """Per-example scores: ``exact_match`` and ``accuracy`` (bool, as :func:`exact_match` and
    :func:`answer_accuracy`), ``empty`` (bool: the prediction normalises to ""),
    ``output_language`` (str or None) and ``language_match`` (bool or None), as
    :func:`output_language` and :func:`language_matches`."""
    normalized_prediction, normalized_references = _normalized(prediction, references, lang)
    identified = output_language(prediction, identifier)
    return {
        "exact_match": _exact(normalized_prediction, normalized_references),
        "accuracy": _accurate(normalized_prediction, normalized_references),
        "empty": normalized_prediction == "",
        "output_language": identified,
        "language_match": None if identified is None else identified == iso639_1(lang),
    }


def _rate(count: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``count / total`` in float64, NaN where ``total`` is 0."""
    nan = torch.full_like(count, math.nan, dtype=torch.float64)
    return torch.where(total > 0, count.double() / total.clamp(min=1), nan)


class PerLanguageGeneration(Metric):
    """Per-language answer scores from per-example counts.

    ``update(lang, exact_match, accuracy, empty, language_match)`` takes, each of shape
    ``(batch,)``: language indices, three bool tensors as in :func:`score_prediction`, and
    ``language_match`` as int8 (1 in the question's language, 0 not, -1 no letters or not identified).
    ``compute()`` returns a dict of ``(languages,)`` tensors: ``exact_match``, ``accuracy`` and
    ``empty_rate`` (fractions of ``n``), ``output_language_rate`` (fraction of ``identified``),
    all float64 and NaN where the denominator is 0, and the counts ``n`` and ``identified``.
    """

    full_state_update = False

    def __init__(self, num_languages: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_languages = num_languages
        for name in ("n", "exact_match", "accuracy", "empty", "identified", "language_match"):
            self.add_state(name, default=torch.zeros(num_languages, dtype=torch.long), dist_reduce_fx="sum")

    def _count(self, lang: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return torch.bincount(lang[where], minlength=self.num_languages)

    def update(self, lang: torch.Tensor, exact_match: torch.Tensor, accuracy: torch.Tensor,
               empty: torch.Tensor, language_match: torch.Tensor) -> None:
        lang = lang.long()
        self.n += torch.bincount(lang, minlength=self.num_languages)
        self.exact_match += self._count(lang, exact_match.bool())
        self.accuracy += self._count(lang, accuracy.bool())
        self.empty += self._count(lang, empty.bool())
        self.identified += self._count(lang, language_match >= 0)
        self.language_match += self._count(lang, language_match == 1)

    def update_from_scores(self, lang_index: Sequence[int] | torch.Tensor, scores: Sequence[dict]) -> None:
        """``update`` from :func:`score_prediction` dicts, ``lang_index[i]`` being the language of ``scores[i]``."""
        def flags(key: str) -> torch.Tensor:
            return torch.tensor([s[key] for s in scores], dtype=torch.bool, device=self.device)
        language_match = [-1 if s["language_match"] is None else int(s["language_match"]) for s in scores]
        self.update(torch.as_tensor(lang_index, dtype=torch.long, device=self.device),
                    flags("exact_match"), flags("accuracy"), flags("empty"),
                    torch.tensor(language_match, dtype=torch.int8, device=self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "exact_match": _rate(self.exact_match, self.n),
            "accuracy": _rate(self.accuracy, self.n),
            "output_language_rate": _rate(self.language_match, self.identified),
            "empty_rate": _rate(self.empty, self.n),
            "n": self.n.clone(),
            "identified": self.identified.clone(),
        }

    def per_language(self) -> dict[str, torch.Tensor]:
        """``compute()`` with every value shaped ``(languages,)``, also for one language
        (torchmetrics squeezes single-element results to scalars)."""
        return {k: v.reshape(-1) for k, v in self.compute().items()}


class PerLanguageMean(Metric):
    """Per-language mean of a float value (e.g. teacher-forced dev loss in nats per example).

    ``update(lang, value)`` takes language indices and values, both ``(batch,)``. ``compute()``
    returns a float64 ``(languages,)`` tensor, NaN for a language with no values (a scalar
    when there is one language, as torchmetrics squeezes; ``per_language()`` keeps the shape).
    """

    full_state_update = False

    def __init__(self, num_languages: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_languages = num_languages
        self.add_state("total", default=torch.zeros(num_languages, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_languages, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, lang: torch.Tensor, value: torch.Tensor) -> None:
        lang = lang.long()
        self.total.index_add_(0, lang, value.detach().double())
        self.count += torch.bincount(lang, minlength=self.num_languages)

    def compute(self) -> torch.Tensor:
        return _rate(self.total, self.count)

    def per_language(self) -> torch.Tensor:
        """``compute()`` shaped ``(languages,)``, also for one language."""
        return self.compute().reshape(-1)


#: Generation metrics (closed-book QA); ``accuracy`` is the primary one.
GENERATION_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(name="accuracy", description="CoCo-CoLa accuracy: reference in prediction or prediction in "
                                            "reference, on normalised text; empty never correct"),
    MetricSpec(name="exact_match", description="normalised prediction equals a normalised reference"),
    MetricSpec(name="output_language_rate",
               description="share of predictions with letters that are in the question's language "
                           "(identifier: py3langid)"),
    MetricSpec(name="empty_rate", higher_is_better=False,
               description="share of predictions that are empty after normalisation"),
    # on parallel QA (every language's gold answer to the same question): language adherence
    MetricSpec(name="cococola_ratio",
               description="CoCo-CoLa ratio (Eq. 3): of the questions answered correctly in exactly one of "
                           "the question's language or another language, the share in the question's language"),
    MetricSpec(name="cococola_ratio_simplified",
               description="CoCo-CoLa ratio (Eq. 4): correct in the question's language / (that + correct in "
                           "English), on questions whose gold answers differ between the two"),
    MetricSpec(name="cumulative_accuracy",
               description="share of questions answered correctly in their own language or in English"),
)
