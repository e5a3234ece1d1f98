"""Answer metrics of the generation task: normalisation, matching, output language, per-language sums.

Every expected value is worked out by hand from the rules in ``normalize_answer``'s docstring.
"""
import math

import pytest
import torch

from xlt_runner.metrics.generation import (
    GENERATION_METRICS,
    PerLanguageGeneration,
    PerLanguageMean,
    answer_accuracy,
    exact_match,
    language_matches,
    normalize_answer,
    output_language,
    score_prediction,
)
from xlt_runner.metrics.language_id import Py3LangidIdentifier, build_identifier, iso639_1


@pytest.fixture(scope="module")
def identifier():
    return build_identifier("py3langid")


# ---------------------------------------------------------------- normalize_answer

@pytest.mark.parametrize("text, lang, expected", [
    # English: articles, case, punctuation
    ("The Beatles", "en", "beatles"),
    ("  The   Beatles!  ", "eng_Latn", "beatles"),
    ("Ｔｏｋｙｏ", "en", "tokyo"),  # full-width Latin
    ("Straße", "de", "strasse"),  # casefold, not lower
    # English articles go in every language (English titles inside other languages' answers)
    ("The Office", "ja", "office"),
    # ... but a text that is only articles keeps them
    ("The The", "en", "the the"),
    ("A", "en", "a"),
    # question-language articles, only for that language
    ("Die Hard", "de", "hard"),
    ("Die Hard", "en", "die hard"),
    ("l'Union européenne", "fr", "union européenne"),
    ("A Bola", "pt", "bola"),
    ("Se on Helsinki", "fi", "se on helsinki"),  # Finnish has no articles
    # Finnish punctuation
    ("Helsinki.", "fi", "helsinki"),
    ("Helsinki, Suomi", "fi", "helsinki suomi"),
    # Chinese: CJK punctuation, spaces between Han characters
    ("答案是东京。", "zh_cn", "答案是东京"),
    ("东 京", "zh_cn", "东京"),
    ("「東京」", "zh_tw", "東京"),
    # Japanese: full-width digits, Han + Katakana, spaces kept next to Latin/digits
    ("１９８４年", "ja", "1984年"),
    ("東京 タワー", "ja", "東京タワー"),
    ("東京 2020", "ja", "東京 2020"),
    # Korean keeps its word spaces
    ("서울 특별시", "ko", "서울 특별시"),
    ("서울특별시.", "ko", "서울특별시"),
    # Arabic: Arabic-Indic digits, guillemets and Arabic comma, decimal separator
    ("١٩٨٤", "ar", "1984"),
    ("«القاهرة»، مصر", "ar", "القاهرة مصر"),
    ("٣٫١٤", "ar", "3.14"),
    ("١٬٠٠٠", "arb_Arab", "1000"),
    # other scripts' digits
    ("১৯৮৪", "bn", "1984"),
    ("๑๙๘๔", "th", "1984"),
    ("१९८४", "hi", "1984"),
    # Thai is written without spaces
    ("กรุง เทพ", "th", "กรุงเทพ"),
    # numbers: punctuation between digits kept; thousands groupings dropped; decimal comma -> point
    ("1.5", "en", "1.5"),
    ("15", "en", "15"),
    ("1,000", "en", "1000"),
    ("1.000", "de", "1000"),
    ("1 000 000", "fr", "1000000"),
    ("1,000.5", "en", "1000.5"),
    ("1,5", "de", "1.5"),
    ("0.123", "en", "0.123"),
    ("1.2345", "en", "1.2345"),
    ("12:30", "en", "12:30"),
    ("1984.", "en", "1984"),
    ("-5", "en", "-5"),  # a minus sign stays (lm-eval: "5")
    ("\u22125 °C", "fi", "-5 °c"),  # U+2212 minus is written "-"
    ("It was -5", "en", "it was -5"),
    ("COVID-19", "en", "covid 19"),  # a hyphen after a letter is punctuation
    ("1984-1990", "en", "1984-1990"),
    # format characters (soft hyphen, zero-width space) are deleted
    ("Hel\u00adsin\u200bki", "fi", "helsinki"),
    # nothing left
    ("", "en", ""),
    ("?!…", "en", ""),
    ("。", "zh_cn", ""),
])
def test_normalize_answer(text, lang, expected):
    assert normalize_answer(text, lang) == expected


def test_nfc_and_nfd_normalise_equal():
    nfc, nfd = "Beyonc\u00e9", "Beyonce\u0301"
    assert nfc != nfd
    assert normalize_answer(nfd, "fr") == normalize_answer(nfc, "fr") == "beyonc\u00e9"


def test_normalize_answer_rejects_unknown_language():
    with pytest.raises(ValueError, match="xyz"):
        normalize_answer("Helsinki", "xyz_Latn")


# ---------------------------------------------------------------- exact_match

@pytest.mark.parametrize("prediction, references, lang, expected", [
    ("beatles", ["The Beatles"], "en", True),
    ("The Beatles.", ["the beatles", "Beatles"], "en", True),
    ("The Rolling Stones", ["The Beatles"], "en", False),
    ("東京", ["东京", "東京"], "zh_tw", True),
    ("答案是东京。", ["东京"], "zh_cn", False),  # exact, not substring
    ("１９８４", ["1984"], "ja", True),
    ("서울", ["서울특별시"], "ko", False),
    ("١٩٨٤", ["1984"], "ar", True),
    ("القاهرة.", ["«القاهرة»"], "ar", True),
    ("Helsinki.", ["helsinki"], "fi", True),
    ("Beyonce\u0301", ["Beyonc\u00e9"], "en", True),
    ("1.5", ["15"], "en", False),  # MKQA's eval says True
    ("1,000", ["1000"], "en", True),
    ("1,5", ["1.5"], "de", True),
    # empty prediction / punctuation only / empty reference never match
    ("", [""], "en", False),
    ("...", ["!?"], "en", False),
    ("", ["Helsinki"], "fi", False),
    ("Helsinki", ["!!!", "Helsinki"], "fi", True),  # an empty reference is skipped, others still count
])
def test_exact_match(prediction, references, lang, expected):
    assert exact_match(prediction, references, lang) is expected


@pytest.mark.parametrize("score", [exact_match, answer_accuracy])
def test_empty_references_raise(score):
    with pytest.raises(ValueError, match="reference"):
        score("Helsinki", [], "fi")


def test_score_prediction_empty_references_raise(identifier):
    with pytest.raises(ValueError, match="reference"):
        score_prediction("Helsinki", (), "fi", identifier)


# ---------------------------------------------------------------- answer_accuracy

@pytest.mark.parametrize("prediction, references, lang, expected", [
    ("The Beatles were the band.", ["Beatles"], "en", True),  # reference in prediction
    ("Beatles", ["The Beatles and Wings"], "en", True),  # prediction in reference
    ("The Rolling Stones", ["The Beatles"], "en", False),
    ("答案是东京。", ["东京"], "zh_cn", True),
    ("他说英语。", ["英语"], "zh_cn", True),  # a 2-character answer inside a sentence (BERGEN: 0)
    ("他说法语。", ["英语"], "zh_cn", False),
    ("１９８４年", ["1984"], "ja", True),  # a number next to Han counts
    ("東京 タワー です", ["東京タワー"], "ja", True),
    ("서울특별시", ["서울"], "ko", True),
    ("서울", ["서울특별시"], "ko", True),
    ("부산", ["서울특별시"], "ko", False),
    ("ولد عام ١٩٨٤", ["1984"], "ar", True),
    ("القاهرة، مصر", ["القاهرة"], "ar", True),
    ("Helsinki.", ["helsinki"], "fi", True),
    ("Se on Helsinki.", ["Helsingfors", "Helsinki"], "fi", True),
    # numbers are never cut, in either direction
    ("19845", ["1984"], "en", False),
    ("In 1984.", ["1984"], "en", True),
    ("1.5", ["1"], "en", False),
    ("1", ["1.5"], "en", False),
    ("21.5", ["1.5"], "en", False),
    ("15", ["1.5"], "en", False),
    ("-5", ["5"], "en", False),
    ("5", ["-5"], "en", False),
    ("−5 °C", ["-5"], "fi", True),
    ("Tokyo 2020", ["Tokyo 2"], "en", False),
    # letters are raw substrings, as in CoCo-CoLa
    ("comparison", ["Paris"], "fr", True),
    # empty prediction, punctuation-only prediction, empty reference (CoCo-CoLa: True for the first)
    ("", ["Helsinki"], "fi", False),
    ("...", ["Helsinki"], "fi", False),
    ("Helsinki", ["!!!"], "fi", False),
])
def test_answer_accuracy(prediction, references, lang, expected):
    assert answer_accuracy(prediction, references, lang) is expected


# ---------------------------------------------------------------- language codes and identification

@pytest.mark.parametrize("code, expected", [
    ("en", "en"), ("ja", "ja"), ("zh_cn", "zh"), ("zh_tw", "zh"), ("zh_hk", "zh"), ("pt-BR", "pt"),
    ("eng_Latn", "en"), ("zho_Hans", "zh"), ("zho_Hant", "zh"), ("yue_Hant", "zh"), ("arb_Arab", "ar"),
    ("fin_Latn", "fi"), ("jpn_Jpan", "ja"), ("kor_Hang", "ko"), ("ben_Beng", "bn"), ("swh_Latn", "sw"),
    ("swa", "sw"), ("tel_Telu", "te"), ("tha_Thai", "th"), ("zsm_Latn", "ms"), ("msa", "ms"),
    ("khm_Khmr", "km"), ("heb_Hebr", "he"), ("nob_Latn", "no"), ("nb", "no"), ("nn", "no"),
    ("vie_Latn", "vi"), ("hin_Deva", "hi"), ("spa_Latn", "es"), ("deu_Latn", "de"),
])
def test_iso639_1(code, expected):
    assert iso639_1(code) == expected


@pytest.mark.parametrize("code", ["xyz_Latn", "qqq", "", "english"])
def test_iso639_1_unmapped_code(code):
    with pytest.raises(ValueError, match="ISO 639-1"):
        iso639_1(code)


def test_build_identifier_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="py3langid"):
        build_identifier("fasttext-lid")


@pytest.mark.parametrize("prediction, lang, expected", [
    ("The capital of Japan is Tokyo.", "ja", False),  # English answer to a Japanese question
    ("东京是中国的首都吗", "zh_cn", True),
    ("東京です", "jpn_Jpan", True),
    ("Helsinki on Suomen pääkaupunki.", "fi", True),
    ("1984", "ja", None),  # py3langid alone says "af"
    ("١٩٨٤", "ar", None),
    ("", "en", None),
    ("?!", "en", None),
])
def test_language_matches(identifier, prediction, lang, expected):
    assert language_matches(prediction, lang, identifier) is expected


def test_output_language(identifier):
    assert output_language("The capital of Japan is Tokyo.", identifier) == "en"
    assert output_language("  1984  ", identifier) is None


class _FixedModel:
    """Stands in for py3langid's model, answering one label."""

    def __init__(self, label):
        self.label = label

    def classify(self, text):
        return self.label, 0.0


@pytest.mark.parametrize("label, expected", [
    ("yue", "zh"), ("nn", "no"), ("ary", "ar"), ("en", "en"), ("ace", "ace"), ("zxx", None), ("und", None),
])
def test_py3langid_labels_fold_like_benchmark_codes(label, expected):
    identifier = Py3LangidIdentifier()
    identifier._model = _FixedModel(label)
    assert identifier.identify("text") == expected


def test_restrict_to_limits_the_answers():
    restricted = build_identifier("py3langid", restrict_to=["eng_Latn", "ja", "zh_cn"])
    assert restricted.identify("Tokio") == "en"  # unrestricted: "lt"
    assert restricted.identify("서울특별시") == "zh"  # the trade-off: Korean is forced onto a listed language


def test_restrict_to_a_language_py3langid_lacks():
    with pytest.raises(ValueError, match="'su'"):  # Sundanese: an ISO 639-1 code, no py3langid model
        Py3LangidIdentifier(restrict_to=["en", "sun_Latn"]).identify("text")


# ---------------------------------------------------------------- score_prediction

def test_score_prediction(identifier):
    assert score_prediction("答案是东京。", ["东京"], "zh_cn", identifier) == {
        "exact_match": False, "accuracy": True, "empty": False, "output_language": "zh", "language_match": True}
    assert score_prediction("１９８４", ["1984"], "ja", identifier) == {
        "exact_match": True, "accuracy": True, "empty": False, "output_language": None, "language_match": None}
    assert score_prediction(" ... ", ["1984"], "ja", identifier) == {
        "exact_match": False, "accuracy": False, "empty": True, "output_language": None, "language_match": None}
    assert score_prediction("The capital of Japan is Tokyo.", ["東京"], "ja", identifier) == {
        "exact_match": False, "accuracy": False, "empty": False, "output_language": "en", "language_match": False}


# ---------------------------------------------------------------- PerLanguageGeneration

# (lang, exact_match, accuracy, empty, language_match) per example; languages 0, 1, 2 (2 has none)
_BATCH = [
    (0, 1, 1, 0, 1),
    (0, 0, 1, 0, 0),
    (0, 0, 0, 1, -1),
    (0, 0, 0, 0, 1),
    (1, 1, 1, 0, -1),
    (1, 0, 0, 0, -1),
]


def _update(metric, rows):
    lang, em, acc, empty, lm = zip(*rows)
    metric.update(torch.tensor(lang), torch.tensor(em, dtype=torch.bool), torch.tensor(acc, dtype=torch.bool),
                  torch.tensor(empty, dtype=torch.bool), torch.tensor(lm, dtype=torch.int8))


def _assert_hand_computed(values):
    nan = math.nan
    # language 0: n 4, em 1/4, acc 2/4, empty 1/4, identified 3, in language 2/3
    # language 1: n 2, em 1/2, acc 1/2, empty 0, identified 0 -> NaN
    # language 2: nothing -> NaN rates, zero counts
    expected = {"exact_match": [0.25, 0.5, nan], "accuracy": [0.5, 0.5, nan], "empty_rate": [0.25, 0.0, nan],
                "output_language_rate": [2 / 3, nan, nan]}
    for name, rates in expected.items():
        torch.testing.assert_close(values[name], torch.tensor(rates, dtype=torch.float64), equal_nan=True)
    assert values["n"].tolist() == [4, 2, 0]
    assert values["identified"].tolist() == [3, 0, 0]


def test_per_language_generation_hand_computed():
    metric = PerLanguageGeneration(3)
    _update(metric, _BATCH[:3])
    _update(metric, _BATCH[3:])
    _assert_hand_computed(metric.compute())


def test_per_language_generation_from_scores():
    metric = PerLanguageGeneration(3)
    scores = [{"exact_match": bool(em), "accuracy": bool(acc), "empty": bool(empty), "output_language": None,
               "language_match": None if lm == -1 else bool(lm)} for _, em, acc, empty, lm in _BATCH]
    metric.update_from_scores([row[0] for row in _BATCH], scores)
    _assert_hand_computed(metric.compute())


def test_per_language_generation_halves_merge_like_one_process():
    """DDP sums every state; two processes with half the data each must give the one-process numbers."""
    first, second = PerLanguageGeneration(3), PerLanguageGeneration(3)
    _update(first, _BATCH[0::2])
    _update(second, _BATCH[1::2])
    first.merge_state(second)
    _assert_hand_computed(first.compute())


def test_per_language_generation_one_language_keeps_shape():
    metric = PerLanguageGeneration(1)
    _update(metric, [(0, 1, 1, 0, 1)])
    values = metric.per_language()
    assert all(v.shape == (1,) for v in values.values())
    assert values["exact_match"].item() == 1.0


# ---------------------------------------------------------------- PerLanguageMean

def test_per_language_mean():
    metric = PerLanguageMean(3)
    metric.update(torch.tensor([0, 0, 2]), torch.tensor([1.0, 2.0, 0.5]))
    metric.update(torch.tensor([0]), torch.tensor([6.0]))
    expected = torch.tensor([3.0, math.nan, 0.5], dtype=torch.float64)
    torch.testing.assert_close(metric.compute(), expected, equal_nan=True)


def test_per_language_mean_halves_merge_like_one_process():
    lang, value = torch.tensor([0, 1, 0, 1, 1]), torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0])
    first, second = PerLanguageMean(2), PerLanguageMean(2)
    first.update(lang[:2], value[:2])
    second.update(lang[2:], value[2:])
    first.merge_state(second)
    torch.testing.assert_close(first.compute(), torch.tensor([2.0, 5.0], dtype=torch.float64))


def test_per_language_mean_one_language_keeps_shape():
    metric = PerLanguageMean(1)
    metric.update(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    assert metric.per_language().tolist() == [1.5]


# ---------------------------------------------------------------- specs

def test_generation_metric_specs():
    names = [spec.name for spec in GENERATION_METRICS]
    assert names == ["accuracy", "exact_match", "output_language_rate", "empty_rate", "cococola_ratio",
                     "cococola_ratio_simplified", "cumulative_accuracy"]
    directions = {spec.name: spec.higher_is_better for spec in GENERATION_METRICS}
    assert directions == {"accuracy": True, "exact_match": True, "output_language_rate": True, "empty_rate": False,
                          "cococola_ratio": True, "cococola_ratio_simplified": True, "cumulative_accuracy": True}
    assert all(spec.percent for spec in GENERATION_METRICS)
