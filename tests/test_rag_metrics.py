"""Character 3-gram recall (BERGEN's ``Recall_char3gram``, the QTT-RAG paper's metric).

Every expected value is worked out by hand in the comment beside it: normalise (lowercase, delete
ASCII punctuation, drop the whole words a/an/the), then per word its character 3-grams, or the
word itself when shorter than 3 characters; recall = multiset overlap / reference token count.
"""
import pytest

from xlt_runner.metrics.rag import RAG_METRICS, char3_grams, char3_recall


def test_char3_grams_tokens():
    assert char3_grams("Helsinki") == ["hel", "els", "lsi", "sin", "ink", "nki"]
    assert char3_grams("Li Na") == ["li", "na"]  # words under 3 characters stay whole
    assert char3_grams("banana") == ["ban", "ana", "nan", "ana"]  # repeats kept
    assert char3_grams("The Beatles") == ["bea", "eat", "atl", "tle", "les"]  # article dropped
    assert char3_grams("") == []


@pytest.mark.parametrize("prediction, references, expected", [
    # ---- English
    # "The Beatles" -> "beatles": bea eat atl tle les (5); the prediction has all 5 -> 5/5.
    ("Beatles", ["The Beatles"], 1.0),
    ("The Beatles", ["Beatles"], 1.0),
    # "the" inside "theatre" is no whole word: the hea eat atr tre (5); "atre" has atr tre -> 2/5.
    ("atre", ["Theatre"], 2 / 5),
    # Short words kept whole: "li", "na" (2); "Na Li won" -> na li won -> 2/2.
    ("Na Li won", ["Li Na"], 1.0),
    ("Li", ["Li Na"], 1 / 2),
    # "Lina" -> lin ina: neither is the whole word "li" or "na" -> 0.
    ("Lina", ["Li Na"], 0.0),
    # Multiset: "banana" -> ban ana nan ana (4, "ana" twice); "anana" -> ana nan ana: overlap
    # ana×2 + nan = 3 -> 3/4 (a set overlap would give 2/3).
    ("anana", ["banana"], 3 / 4),
    # "ana" once in the prediction matches one of the two -> 1/4.
    ("ana", ["banana"], 1 / 4),
    # Punctuation deleted, not replaced by a space: "guns n' roses" -> "guns n roses":
    # gun uns | n | ros ose ses (6); the prediction normalises the same -> 6/6.
    ("Guns N Roses!", ["Guns N' Roses"], 1.0),
    # "rock-and-roll" -> "rockandroll": roc ock cka kan and ndr dro rol oll (9);
    # "rock and roll" -> roc ock | and | rol oll: 5 shared -> 5/9.
    ("rock and roll", ["Rock-and-roll"], 5 / 9),
    # ---- Finnish
    # "Helsinki": hel els lsi sin ink nki (6); "Helsingissä" shares hel els lsi sin -> 4/6.
    ("Helsingissä", ["Helsinki"], 4 / 6),
    # "jyväskylä": jyv yvä väs äsk sky kyl ylä (7); "Jyväskylässä" adds läs äss ssä -> 7/7.
    ("Jyväskylässä", ["Jyväskylä"], 1.0),
    ("JYVÄSKYLÄ", ["Jyväskylä"], 1.0),  # lowercasing covers Ä
    # ---- Chinese: no spaces, so each run is one word and yields its 3-grams
    # "北京市" is one 3-gram; "答案是北京市。" -> 答案是 案是北 是北京 北京市 京市。 (。 is not
    # ASCII punctuation, it stays) -> contains 北京市 -> 1/1.
    ("答案是北京市。", ["北京市"], 1.0),
    # "中华人民共和国": 中华人 华人民 人民共 民共和 共和国 (5); "人民共和国" shares the last 3 -> 3/5.
    ("人民共和国", ["中华人民共和国"], 3 / 5),
    # A 2-character answer is one whole token: "在北京" has the 3-gram 在北京 only -> 0.
    ("北京", ["北京"], 1.0),
    ("在北京", ["北京"], 0.0),
    # Full-width "，" stays part of the word (ASCII-only punctuation, as in BERGEN):
    # "上海，中国" -> 上海， 海，中 ，中国 (3); "上海,中国" loses the ASCII comma -> 上海中 海中国 -> 0.
    ("上海，中国", ["上海，中国"], 1.0),
    ("上海,中国", ["上海，中国"], 0.0),
    # ---- Korean
    # Known property: the 2-character answer "서울" is one whole token, and "서울입니다" (particle
    # attached) yields 서울입 울입니 입니다 only, so it scores 0 although it contains the answer.
    ("서울입니다", ["서울"], 0.0),
    ("서울 입니다", ["서울"], 1.0),
    # "대한민국": 대한민 한민국 (2); "대한민국의" -> 대한민 한민국 민국의 -> 2/2.
    ("대한민국의 수도", ["대한민국"], 1.0),
    # "세종대왕": 세종대 종대왕 (2); "세종대" -> 1/2; "세종" is a whole 2-char token -> 0.
    ("세종대", ["세종대왕"], 1 / 2),
    ("세종", ["세종대왕"], 0.0),
    # ---- empty prediction
    ("", ["Helsinki"], 0.0),
    ("The", ["Helsinki"], 0.0),  # normalises to nothing
])
def test_char3_recall_hand_computed(prediction, references, expected):
    assert char3_recall(prediction, references) == pytest.approx(expected)


def test_char3_recall_is_the_maximum_over_references():
    # "Helsingissä" -> hel els lsi sin ing ngi gis iss ssä. "Oulu" (oul ulu): 0;
    # "Helsinki" (6): hel els lsi sin -> 4/6; "Helsingfors" (hel els lsi sin ing ngf gfo for ors,
    # 9): hel els lsi sin ing -> 5/9. The maximum is the middle reference's 2/3.
    assert char3_recall("Helsingissä", ["Oulu", "Helsinki", "Helsingfors"]) == pytest.approx(2 / 3)
    assert char3_recall("Helsingissä", ["Helsingfors"]) == pytest.approx(5 / 9)


def test_blank_references_are_skipped():
    assert char3_recall("Helsinki", ["", "  ", "Helsinki"]) == 1.0
    # A non-blank reference that normalises to nothing scores 0, as in BERGEN.
    assert char3_recall("the", ["The"]) == 0.0


@pytest.mark.parametrize("references", [[], [""], ["  ", "\t"]])
def test_no_usable_reference_raises(references):
    with pytest.raises(ValueError, match="non-blank reference"):
        char3_recall("Helsinki", references)


def test_rag_metric_specs():
    specs = {spec.name: spec for spec in RAG_METRICS}
    assert [spec.name for spec in RAG_METRICS] == [
        "char3_recall", "answer_language_rate", "r_lang", "retained_ratio", "judge_failure_rate",
        "retrieval_recall", "retrieval_recall_at_k"]
    assert all(spec.percent and spec.description for spec in RAG_METRICS)
    assert not specs["judge_failure_rate"].higher_is_better
    assert specs["char3_recall"].higher_is_better
