"""CoCo-CoLa's language-adherence measures: general and simplified ratio, cumulative accuracy.

Every expected value is worked out by hand: each question lists which gold answers its
prediction matches (``answer_accuracy`` after ``normalize_answer``), then the sets are counted.
"""
from __future__ import annotations

import json

import pytest

from xlt_runner.metrics.language_adherence import (
    LanguageAdherence,
    adherence_from_predictions,
    language_adherence,
)

# German questions; gold in de, en, es; the prediction and the gold answers it matches.
GERMAN_GOLD = {
    "de": {"q1": ["München"], "q2": ["Tokio"], "q3": ["Barack Obama"], "q4": ["Löwe"],
           "q5": ["Schweden"], "q6": ["Deutschland"], "q7": ["Paris"]},
    "en": {"q1": ["Munich"], "q2": ["Tokyo"], "q3": ["Barack Obama"], "q4": ["lion"],
           "q5": ["Sweden"], "q6": ["Germany"], "q7": ["Paris"]},
    "es": {"q1": ["Múnich"], "q2": ["Tokio"], "q3": ["Barack Obama"], "q4": ["león"],
           "q5": ["Suecia"], "q6": ["Alemania"], "q7": ["París"]},
}
GERMAN_PREDICTIONS = {
    "q1": "München",                          # de only
    "q2": "Tokyo",                            # en only
    "q3": "Barack Obama",                     # de, en, es: a name spelled alike everywhere
    "q4": "Katze",                            # nothing
    "q5": "Suecia",                           # es only
    "q6": "Die Hauptstadt von Deutschland",   # de only (reference inside the prediction)
    "q7": "",                                 # nothing: empty is never correct
}
# C(de→de) = {q1, q3, q6}; C(de→en) = {q2, q3}; C(de→es) = {q3, q5}; other = {q2, q3, q5}.
# Gold de/en differ (normalised) for q1, q2, q4, q5, q6; not for q3 ("barack obama"), q7 ("paris").


@pytest.fixture(scope="module")
def german() -> LanguageAdherence:
    return language_adherence(GERMAN_PREDICTIONS, GERMAN_GOLD, "de")


def without(mapping: dict, *keys: str) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


# ---------------------------------------------------------------- the three measures

def test_general_ratio_counts_questions_correct_on_exactly_one_side(german):
    # de only {q1, q6}, other only {q2, q5}, both {q3} drops out: 2 / 4
    assert german.ratio_general == 0.5
    assert german.ratio_general_n == 4
    assert german.other_languages == ("en", "es")


def test_simplified_ratio_on_questions_whose_gold_differs(german):
    # differing {q1, q2, q4, q5, q6}: correct in de {q1, q6}, in en {q2}: 2 / (2 + 1)
    assert german.differing_gold == 5
    assert german.ratio_simplified == pytest.approx(2 / 3)
    assert german.ratio_simplified_n == 3


def test_cumulative_accuracy_is_correct_in_input_or_english(german):
    # {q1, q3, q6} ∪ {q2, q3} = 4 of 7
    assert (german.lang, german.n, german.correct_in_input, german.correct_in_english) == ("de", 7, 3, 2)
    assert german.cumulative_accuracy == pytest.approx(4 / 7)


# ---------------------------------------------------------------- named entities, undefined values

def test_named_entity_identical_across_languages_drops_out():
    alone = language_adherence({"q3": "Barack Obama"}, GERMAN_GOLD, "de")
    assert (alone.correct_in_input, alone.correct_in_english, alone.cumulative_accuracy) == (1, 1, 1.0)
    assert (alone.ratio_general, alone.ratio_general_n) == (None, 0)  # correct on both sides: 0 / 0
    assert (alone.differing_gold, alone.ratio_simplified, alone.ratio_simplified_n) == (0, None, 0)
    # and removing it from the German set changes neither ratio
    rest = language_adherence(without(GERMAN_PREDICTIONS, "q3"), GERMAN_GOLD, "de")
    assert (rest.ratio_general, rest.ratio_general_n) == (0.5, 4)
    assert (rest.ratio_simplified, rest.ratio_simplified_n, rest.differing_gold) == (pytest.approx(2 / 3), 3, 5)


def test_no_differing_gold_leaves_simplified_ratio_undefined():
    # Arabic-Indic and ASCII digits normalise alike, so the gold does not differ; "1984" is
    # correct in ar and en alike, so the general ratio is 0 / 0 too.
    gold = {"ar": {"a1": ["١٩٨٤"]}, "en": {"a1": ["1984"]}}
    result = language_adherence({"a1": "1984"}, gold, "ar")
    assert (result.correct_in_input, result.correct_in_english, result.cumulative_accuracy) == (1, 1, 1.0)
    assert (result.differing_gold, result.ratio_simplified, result.ratio_simplified_n) == (0, None, 0)
    assert (result.ratio_general, result.ratio_general_n) == (None, 0)


def test_nothing_correct_leaves_ratios_undefined_and_accuracy_zero():
    wrong = {qid: "Katze" for qid in GERMAN_PREDICTIONS}
    result = language_adherence(wrong, GERMAN_GOLD, "de")
    assert (result.correct_in_input, result.correct_in_english, result.cumulative_accuracy) == (0, 0, 0.0)
    assert (result.ratio_general, result.ratio_general_n) == (None, 0)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (None, 0, 5)


def test_no_predictions_gives_no_values():
    result = language_adherence({}, GERMAN_GOLD, "de")
    assert (result.n, result.cumulative_accuracy, result.ratio_general, result.ratio_simplified) == (0, None, None, None)


def test_only_input_language_answers_give_ratio_one_and_only_other_give_zero():
    input_only = language_adherence({"q1": "München", "q6": "Deutschland"}, GERMAN_GOLD, "de")
    assert (input_only.ratio_general, input_only.ratio_simplified) == (1.0, 1.0)
    other_only = language_adherence({"q2": "Tokyo", "q5": "Suecia"}, GERMAN_GOLD, "de")
    # q5 is correct in es, not en: the simplified ratio sees q2 only
    assert (other_only.ratio_general, other_only.ratio_general_n) == (0.0, 2)
    assert (other_only.ratio_simplified, other_only.ratio_simplified_n) == (0.0, 1)


@pytest.mark.parametrize("empty", ["", "   ", "。", " . ", "\u200b"])
def test_empty_prediction_is_never_correct(empty):
    # an empty string is a substring of every gold answer; it must still match nothing
    result = language_adherence({"q7": empty}, GERMAN_GOLD, "de")
    assert (result.correct_in_input, result.correct_in_english, result.cumulative_accuracy) == (0, 0, 0.0)
    assert result.ratio_general is None


# ---------------------------------------------------------------- per-language normalisation

def test_chinese_answers_match_by_script_and_language():
    gold = {
        "zh_cn": {"c1": ["东京"], "c2": ["北京"], "c3": ["瑞典"]},
        "en": {"c1": ["Tokyo"], "c2": ["Beijing"], "c3": ["Sweden"]},
        "ja": {"c1": ["東京"], "c2": ["北京"], "c3": ["スウェーデン"]},
    }
    predictions = {
        "c1": "答案是东京。",   # zh_cn only: simplified 东 is not Japanese 東
        "c2": "Beijing",        # en only
        "c3": "スウェーデン",   # ja only
    }
    result = language_adherence(predictions, gold, "zh_cn")
    assert result.other_languages == ("en", "ja")
    assert (result.ratio_general, result.ratio_general_n) == (pytest.approx(1 / 3), 3)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (0.5, 2, 3)
    assert (result.correct_in_input, result.correct_in_english) == (1, 1)
    assert result.cumulative_accuracy == pytest.approx(2 / 3)


def test_variant_of_the_input_language_is_not_another_language():
    # zh_tw folds to zh like zh_cn: an answer in traditional characters is neither Li nor Lo
    gold = {"zh_cn": {"t1": ["台湾"]}, "zh_tw": {"t1": ["臺灣"]}, "en": {"t1": ["Taiwan"]}}
    result = language_adherence({"t1": "臺灣"}, gold, "zh_cn")
    assert result.other_languages == ("en",)
    assert (result.correct_in_input, result.ratio_general, result.ratio_general_n) == (0, None, 0)


def test_japanese_full_width_answer_correct_against_both_differing_golds():
    # "１９８４年" normalises to "1984年": equal to the ja gold, and contains the en gold "1984".
    # The golds differ ("1984年" ≠ "1984"), so j1 counts in both terms of the simplified ratio.
    gold = {"ja": {"j1": ["1984年"], "j2": ["東京"]}, "en": {"j1": ["1984"], "j2": ["Tokyo"]}}
    result = language_adherence({"j1": "１９８４年", "j2": "東京です"}, gold, "ja")
    assert (result.correct_in_input, result.correct_in_english) == (2, 1)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (pytest.approx(2 / 3), 3, 2)
    assert (result.ratio_general, result.ratio_general_n) == (1.0, 1)  # j1 both, j2 ja only
    assert result.cumulative_accuracy == 1.0


def test_finnish_question_matched_with_each_gold_languages_normalisation():
    gold = {
        "fi": {"f1": ["Ruotsi"], "f2": ["Rahapaja"], "f3": ["Helsinki"]},
        "en": {"f1": ["Sweden"], "f2": ["Mint"], "f3": ["Helsinki"]},
        "es": {"f1": ["Suecia"], "f2": ["Casa de la Moneda"], "f3": ["Helsinki"]},
    }
    predictions = {
        "f1": "Ruotsi.",         # fi only (punctuation removed)
        "f2": "Casa de Moneda",  # es only: Spanish normalisation drops the article "la"
        "f3": "Helsinki",        # everywhere, gold identical: drops out of both ratios
    }
    result = language_adherence(predictions, gold, "fi")
    assert (result.ratio_general, result.ratio_general_n) == (0.5, 2)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (1.0, 1, 2)
    assert (result.correct_in_input, result.correct_in_english) == (2, 1)
    assert result.cumulative_accuracy == pytest.approx(2 / 3)


# ---------------------------------------------------------------- missing gold

def test_question_missing_from_a_language_is_not_matchable_there():
    gold = {**GERMAN_GOLD, "en": without(GERMAN_GOLD["en"], "q2")}
    result = language_adherence(GERMAN_PREDICTIONS, gold, "de")
    # q2 ("Tokyo") is now correct nowhere: other only {q5}; and it has no en gold to differ from
    assert (result.ratio_general, result.ratio_general_n) == (pytest.approx(2 / 3), 3)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (1.0, 2, 4)
    assert result.correct_in_english == 1


def test_without_english_gold_cumulative_is_input_accuracy():
    result = language_adherence(GERMAN_PREDICTIONS, without(GERMAN_GOLD, "en"), "de")
    assert result.correct_in_english is None
    assert result.cumulative_accuracy == pytest.approx(3 / 7)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (None, 0, 0)
    # other = es only: {q3, q5}; de only {q1, q6}, es only {q5}
    assert result.other_languages == ("es",)
    assert (result.ratio_general, result.ratio_general_n) == (pytest.approx(2 / 3), 3)


def test_english_input_has_no_simplified_ratio():
    predictions = {"q1": "Munich", "q2": "Tokio", "q4": "lion"}  # en, de+es, en
    result = language_adherence(predictions, GERMAN_GOLD, "en")
    assert result.other_languages == ("de", "es")
    assert (result.correct_in_input, result.correct_in_english) == (2, 2)
    assert result.cumulative_accuracy == pytest.approx(2 / 3)
    assert (result.ratio_simplified, result.ratio_simplified_n, result.differing_gold) == (None, 0, 0)
    assert (result.ratio_general, result.ratio_general_n) == (pytest.approx(2 / 3), 3)


def test_predicted_question_without_input_gold_is_an_error():
    gold = {**GERMAN_GOLD, "de": without(GERMAN_GOLD["de"], "q4")}
    with pytest.raises(ValueError, match="'q4'"):
        language_adherence(GERMAN_PREDICTIONS, gold, "de")


def test_input_language_without_gold_is_an_error():
    with pytest.raises(ValueError, match="'fi'"):
        language_adherence({"q1": "Tukholma"}, GERMAN_GOLD, "fi")


# ---------------------------------------------------------------- predictions.jsonl rows

def rows_of(lang: str, predictions: dict[str, str]) -> list[dict]:
    return [{"id": qid, "lang": lang, "prediction": text, "references": GERMAN_GOLD[lang][qid]}
            for qid, text in predictions.items()]


def test_rows_supply_gold_of_languages_missing_from_references():
    english_predictions = {"q1": "Munich", "q2": "Tokio"}
    rows = rows_of("de", GERMAN_PREDICTIONS) + rows_of("en", english_predictions)
    results = adherence_from_predictions(rows, {"es": GERMAN_GOLD["es"]})
    assert list(results) == ["de", "en"]
    # de gold and en gold (only q1, q2) come from the rows
    german = results["de"]
    assert german.other_languages == ("es", "en")
    assert german.correct_in_english == 1  # q2; q3 has no en row
    # de only {q1, q6}; other {q2 (en), q3, q5 (es)}; both {q3}
    assert (german.ratio_general, german.ratio_general_n) == (0.5, 4)
    # differing: q1, q2 (the questions with en gold); correct in de {q1}, in en {q2}
    assert (german.ratio_simplified, german.ratio_simplified_n, german.differing_gold) == (0.5, 2, 2)
    english = results["en"]
    # en only {q1 "Munich"}, other only {q2 "Tokio": de, es}
    assert (english.n, english.correct_in_input, english.ratio_general, english.ratio_general_n) == (2, 1, 0.5, 2)


def test_references_take_precedence_over_rows():
    rows = [{"id": "q1", "lang": "de", "prediction": "München", "references": ["Falsch"]}]
    result = adherence_from_predictions(rows, GERMAN_GOLD)["de"]
    assert result.correct_in_input == 1


def test_question_twice_in_one_language_is_an_error():
    rows = rows_of("de", {"q1": "München"}) * 2
    with pytest.raises(ValueError, match="'q1'.*'de'"):
        adherence_from_predictions(rows, GERMAN_GOLD)


def test_to_dict_is_json_ready(german):
    as_dict = german.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["other_languages"] == ["en", "es"]
    assert as_dict["ratio_general"] == 0.5 and as_dict["ratio_general_n"] == 4
    undefined = language_adherence({}, GERMAN_GOLD, "de").to_dict()
    assert undefined["ratio_simplified"] is None and undefined["cumulative_accuracy"] is None
