"""MGSM/GSM8K answer extraction (:mod:`xlt_runner.metrics.math_answers`): hand-computed cases in
the MGSM languages, the separators, the answer phrase against the last number, unparsable text."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from xlt_runner.metrics.math_answers import extract_answer, parse_number, score_math_answer

MGSM = Path(__file__).resolve().parents[2] / "shared" / "data" / "mgsm"


@pytest.mark.parametrize("text,lang,expected", [
    ("Step-by-Step Answer: 5 + 6 = 11. The answer is 11.", "en", "11"),
    ("The answer is 11. Question: Tom has 3 apples and 4 pears.", "en", "11"),  # the phrase beats the last number
    ("Die Antwort ist 1.234,5 Euro.", "de", "1234.5"),  # German grouping and decimal comma
    ("1,5 Liter", "de", "1.5"),
    ("La respuesta es 2,125.", "es", "2125"),
    ("La réponse est 114 200.", "fr", "114200"),  # space-grouped thousands
    ("Ответ — 42.", "ru", "42"),
    ("Jibu ni 8.", "sw", "8"),
    ("উত্তর হল ১১।", "bn", "11"),  # Bengali digits
    ("సమాధానం 26.", "te", "26"),
    ("คำตอบคือ ๑๒", "th", "12"),  # Thai digits
    ("答えは１８です。", "ja", "18"),  # full-width digits, no space after the phrase
    ("5個のボール、答えは11個です。", "ja", "11"),
    ("答案是 18。然后还有 5 个", "zh", "18"),
    ("#### 72", "en", "72"),  # GSM8K's marker
    ("So she pays $1,000,000.", "en", "1000000"),  # no phrase: the last number
    ("It drops to -5 degrees", "en", "-5"),
    ("5 - 3 = 2", "en", "2"),
    ("1.5 and then 15.", "en", "15"),  # 15, not 1.5 or 1515: punctuation is not deleted
    ("The answer is 18.00", "en", "18"),  # by value
    ("The answer is 11.", None, "11"),  # no language: the English phrase still counts
])
def test_the_answer_number_is_found(text, lang, expected):
    assert extract_answer(text, lang) == Decimal(expected)


@pytest.mark.parametrize("text", ["", "I do not know.", "The answer is unknown", "答案是多少？"])
def test_text_without_a_number_is_unparsable_and_wrong(text):
    assert extract_answer(text, "en") is None
    assert score_math_answer(text, "11", "en") == {"exact_match": False, "unparsable": True}


def test_gold_answers_compare_by_value_and_a_non_number_is_a_data_error():
    assert parse_number("2,125") == parse_number("2125") == Decimal(2125)
    assert score_math_answer("so 2125 in all", "2,125", "en") == {"exact_match": True, "unparsable": False}
    assert score_math_answer("The answer is 5.", "-5", "en")["exact_match"] is False  # the harness deletes "-"
    with pytest.raises(ValueError, match="not a number"):
        score_math_answer("11", "eleven", "en")


@pytest.mark.skipif(not MGSM.is_dir(), reason="needs ../shared/data/mgsm")
def test_every_mgsm_exemplar_answer_yields_its_number():
    rows = [json.loads(line) for line in (MGSM / "mgsm_exemplars.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 88
    assert all(extract_answer(row["a"], row["lang"]) == row["number_answer"] for row in rows)
