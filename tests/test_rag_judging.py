"""Reading an LLM judge's translation scores: JSON repair, localized keys, failures as None,
and the expected score over the digits 0-5 (``logprob`` mode)."""
import pytest
import torch

from xlt_runner.rag.judging import CRITERIA, expected_digit_score, parse_judgement


def _scores(semantic, grammar, fluency):
    return dict(zip(CRITERIA, (semantic, grammar, fluency)))


@pytest.mark.parametrize("text, expected", [
    # clean JSON
    ('{"semantic_equivalence": 4, "grammatical_accuracy": 3.5, "naturalness_fluency": 5}',
     _scores(4.0, 3.5, 5.0)),
    # code fence
    ('```json\n{"semantic_equivalence": 4.0, "grammatical_accuracy": 3.5, "naturalness_fluency": 5}\n```',
     _scores(4.0, 3.5, 5.0)),
    # prose before, a trailing comma, text with braces after
    ('Here is my evaluation: {"semantic_equivalence": 4, "grammatical_accuracy": 3,\n'
     ' "naturalness_fluency": 4.5,}\nI hope this helps {more text}.',
     _scores(4.0, 3.0, 4.5)),
    # single quotes, scores as strings, "x/5"
    ("{'semantic_equivalence': '4.5/5', 'grammatical_accuracy': '4', 'naturalness_fluency': '3 / 5'}",
     _scores(4.5, 4.0, 3.0)),
    # full-width braces, quotes, colons, commas, digits and decimal point
    ('｛＂semantic_equivalence＂：４．５，＂grammatical_accuracy＂：４，＂naturalness_fluency＂：３｝',
     _scores(4.5, 4.0, 3.0)),
    # typographic quotes
    ('{“semantic_equivalence”: 2, “grammatical_accuracy”: 1, “naturalness_fluency”: 0}',
     _scores(2.0, 1.0, 0.0)),
    # Korean keys (and full-width colon)
    ('{"의미적 동등성"： 4, "문법적 정확성": 3.5, "자연스러움 및 유창성": 4}', _scores(4.0, 3.5, 4.0)),
    ('{"의미 일치": 5, "문법 정확성": 4, "유창성": 3}', _scores(5.0, 4.0, 3.0)),
    # Finnish keys, decimal comma in a string
    ('{"semanttinen vastaavuus": 4, "kieliopillinen tarkkuus": "4,5", "luontevuus ja sujuvuus": 3}',
     _scores(4.0, 4.5, 3.0)),
    # Chinese keys
    ('{"语义等价": 4, "语法准确性": 5, "自然流畅度": 4.5}', _scores(4.0, 5.0, 4.5)),
    ('{"语义一致性": 3, "语法正确性": 2, "流畅性": 1}', _scores(3.0, 2.0, 1.0)),
    # English spellings
    ('{"Semantic Equivalence": 4, "Grammar": 5, "Naturalness & Fluency": 4.5}', _scores(4.0, 5.0, 4.5)),
    ('{"semantic": 1, "grammatical accuracy": 2, "naturalness and fluency": 3}', _scores(1.0, 2.0, 3.0)),
    # a wrapper object, and an explanation next to each score
    ('{"scores": {"semantic_equivalence": 4, "grammatical_accuracy": 3, "naturalness_fluency": 2}}',
     _scores(4.0, 3.0, 2.0)),
    ('{"semantic_equivalence": {"score": 4, "reason": "ok"}, "grammatical_accuracy": {"score": 3},'
     ' "naturalness_fluency": {"score": 2}}', _scores(4.0, 3.0, 2.0)),
    # no JSON: "key: number" lines
    ("Semantic equivalence: 4\nGrammar: 3.5\nFluency: 5", _scores(4.0, 3.5, 5.0)),
    ("- **Semantic equivalence**: 4/5\n- **Grammatical accuracy**: **4.5**\n- **Naturalness & fluency**: 3",
     _scores(4.0, 4.5, 3.0)),
    # JSON cut off by the token limit: no balanced object, the pairs still read
    ('{"semantic_equivalence": 4, "grammatical_accuracy": 3.5, "naturalness_fluency": 5',
     _scores(4.0, 3.5, 5.0)),
])
def test_parse_judgement_repairs(text, expected):
    assert parse_judgement(text) == expected


@pytest.mark.parametrize("text", [
    # out of range: never clamped
    '{"semantic_equivalence": 6, "grammatical_accuracy": 3.5, "naturalness_fluency": 5}',
    '{"semantic_equivalence": -0.5, "grammatical_accuracy": 3.5, "naturalness_fluency": 5}',
    # a fraction of anything but 5: never rescaled
    '{"semantic_equivalence": "8/10", "grammatical_accuracy": 3.5, "naturalness_fluency": 5}',
    # a criterion missing, or without a number
    '{"semantic_equivalence": 4, "grammatical_accuracy": 3.5}',
    '{"semantic_equivalence": "good", "grammatical_accuracy": 3.5, "naturalness_fluency": 5}',
    # two different scores for one criterion
    '{"semantic_equivalence": 4, "semantic": 2, "grammatical_accuracy": 3.5, "naturalness_fluency": 5}',
    # garbage
    "I cannot evaluate this translation.",
    "",
    "{{{{",
])
def test_parse_judgement_failures_are_none(text):
    assert parse_judgement(text) is None


def test_expected_digit_score():
    one_hot = torch.full((6,), -1e4)
    one_hot[3] = 0.0
    assert expected_digit_score(one_hot).item() == pytest.approx(3.0)
    assert expected_digit_score(torch.zeros(6)).item() == pytest.approx(2.5)  # uniform: mean of 0..5
    batch = torch.zeros(2, 4, 6, dtype=torch.bfloat16)
    scores = expected_digit_score(batch)
    assert scores.shape == (2, 4) and scores.dtype == torch.float32
    with pytest.raises(ValueError, match="6 digits"):
        expected_digit_score(torch.zeros(5))
