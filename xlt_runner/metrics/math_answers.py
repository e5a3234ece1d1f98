"""The number a math answer (MGSM, GSM8K) states, and whether it equals the gold number.

:func:`extract_answer` follows lm-evaluation-harness's ``flexible-extract`` (the last number
of the generation) and adds what that misses: after the language's answer phrase ("The answer
is", "答案是", "Die Antwort ist", ... as MGSM's exemplars end) the first number following its
last occurrence is taken, so a model that keeps writing after its answer is not scored on the
last number it rambled; digits of every script (Bengali, Thai, Devanagari, full-width) read as
ASCII; thousands separators (``2,125``, ``1.234``, ``114 200``) dropped; a trailing ``.`` is
sentence punctuation, not a decimal point. Numbers compare by value (``18.00`` equals ``18``), and the
harness's quirks are not kept: its ``-5`` equals ``5`` and ``1.5`` equals ``15`` because
punctuation is deleted before comparison (../shared/NOTES.md). A generation without a number
is *unparsable*: wrong, and counted as such (:func:`score_math_answer`), never an error.
"""
from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal
from typing import Sequence

import torch
from torchmetrics import Metric

from xlt_runner.metrics.spec import MetricSpec

#: The phrase before the final answer in MGSM's step-by-step exemplars (each language's answers
#: end "<phrase> <number>."), and GSM8K's "####". Lower-cased; matched case-insensitively.
ANSWER_PHRASES = {
    "en": ("the answer is",), "de": ("die antwort ist", "die antwort lautet"), "es": ("la respuesta es",),
    "fr": ("la réponse est",), "ru": ("ответ —", "ответ:", "ответ"), "sw": ("jibu ni",), "bn": ("উত্তর হল",),
    "te": ("సమాధానం",), "th": ("คำตอบคือ",), "ja": ("答えは",), "zh": ("答案是",),
}
GSM8K_MARKER = "####"

# A number (after digits are made ASCII): optional minus; digits, or 1-3 digits followed by groups
# of exactly three joined by one separator (comma, full stop, apostrophe, space, no-break spaces:
# "2,125", "1.234", "114 200"); then optionally a decimal part after "." or ",". So a separator
# followed by exactly three digits groups thousands in every language ("1.234" is 1234, as German
# writes it), any other is a decimal mark ("1.5", "1,5"). Grade-school answers are integers, which
# makes this the reading that is right far more often than a per-language rule.
_NUMBER = re.compile(r"(?<![\d.,])(?P<sign>-?)(?P<int>\d{1,3}(?P<sep>[,.'\u00a0\u202f ])\d{3}(?:(?P=sep)\d{3})*|\d+)"
                     r"(?:(?P<dec>[.,])(?P<frac>\d+))?(?!\d)")


def _ascii_digits(text: str) -> str:
    """Every Unicode decimal digit as its ASCII digit; full-width forms folded (NFKC)."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(c)) if not c.isascii() and unicodedata.decimal(c, None) is not None
                   else c for c in text)


def _value(found: re.Match) -> Decimal:
    integer = found.group("int").replace(found.group("sep") or "\0", "")
    number = found.group("sign") + integer + ("." + found.group("frac") if found.group("frac") else "")
    return Decimal(number).normalize() + 0  # + 0: -0 is 0


def answer_phrases(lang: str | None) -> tuple[str, ...]:
    """The phrases that introduce a final answer in ``lang``, in the order they are tried: the
    language's own, then English's (models often switch to it)."""
    return (*ANSWER_PHRASES.get(lang or "", ()), *ANSWER_PHRASES["en"])


def parse_number(text: str) -> Decimal | None:
    """A gold answer (``"2,125"``, ``"18"``, ``"-3.5"``) as a number; None if it is not one."""
    found = _NUMBER.fullmatch(_ascii_digits(text.strip()).rstrip("."))
    return _value(found) if found else None


def extract_answer(generation: str, lang: str | None = None) -> Decimal | None:
    """The number ``generation`` gives as its answer: the first number after the last answer
    phrase of ``lang`` (or GSM8K's ``####``) when one is followed by a number; else the last
    number in the text; None when there is none."""
    text = _ascii_digits(generation)
    lowered = text.lower()
    for phrase in (*answer_phrases(lang), GSM8K_MARKER):
        at = lowered.rfind(phrase)
        if at >= 0:
            found = _NUMBER.search(text, at + len(phrase))
            if found:
                return _value(found)
    numbers = list(_NUMBER.finditer(text))
    return _value(numbers[-1]) if numbers else None


def score_math_answer(generation: str, gold: str, lang: str | None = None) -> dict[str, bool]:
    """``{"exact_match": the extracted number equals the gold one, "unparsable": no number
    found}``; a gold answer that is not a number raises ValueError (a data error)."""
    expected = parse_number(gold)
    if expected is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    answer = extract_answer(generation, lang)
    return {"exact_match": answer is not None and answer == expected, "unparsable": answer is None}


class PerLanguageMath(Metric):
    """Per-language counts of math answers: ``update_from_scores(lang_index, scores)`` with
    :func:`score_math_answer` dicts; ``per_language()`` gives ``(languages,)`` tensors
    ``exact_match`` and ``unparsable_rate`` (fractions of ``n``, float64, NaN where ``n`` is 0) and
    ``n``. Sum states, so DDP evaluation adds up to one process's numbers."""

    full_state_update = False

    def __init__(self, num_languages: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_languages = num_languages
        for name in ("n", "exact_match", "unparsable"):
            self.add_state(name, default=torch.zeros(num_languages, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, lang: torch.Tensor, exact_match: torch.Tensor, unparsable: torch.Tensor) -> None:
        """Language indices and two bool tensors, all ``(batch,)``."""
        lang = lang.long()
        self.n += torch.bincount(lang, minlength=self.num_languages)
        self.exact_match += torch.bincount(lang[exact_match.bool()], minlength=self.num_languages)
        self.unparsable += torch.bincount(lang[unparsable.bool()], minlength=self.num_languages)

    def update_from_scores(self, lang_index: Sequence[int] | torch.Tensor, scores: Sequence[dict]) -> None:
        """``update`` from :func:`score_math_answer` dicts, ``lang_index[i]`` the language of ``scores[i]``."""
        def flags(key: str) -> torch.Tensor:
            return torch.tensor([bool(s[key]) for s in scores], dtype=torch.bool, device=self.device)
        self.update(torch.as_tensor(lang_index, dtype=torch.long, device=self.device),
                    flags("exact_match"), flags("unparsable"))

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.full_like(self.n, math.nan, dtype=torch.float64)
        rate = lambda count: torch.where(self.n > 0, count.double() / self.n.clamp(min=1), nan)  # noqa: E731
        return {"exact_match": rate(self.exact_match), "unparsable_rate": rate(self.unparsable), "n": self.n.clone()}

    def per_language(self) -> dict[str, torch.Tensor]:
        return {k: v.reshape(-1) for k, v in self.compute().items()}


#: Math metrics (MGSM); ``exact_match`` is the primary one.
MATH_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(name="exact_match", description="the answer's number (after the answer phrase, else the last "
                                               "number) equals the gold number"),
    MetricSpec(name="unparsable_rate", higher_is_better=False,
               description="share of answers without a number (scored wrong)"),
)
