"""MGSM as a ``math`` benchmark (issue 12, item 6): few-shot prompts from the per-language
exemplars, the test-only split, bad data and settings refused with their reasons, and a run end to
end (tiny Llama, prompting) whose record, predictions and rescoring use the math metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import find_records, run_cli
from test_generation_run import run_rescore
from xlt_runner.config import ConfigError
from xlt_runner.data import BenchmarkDataError
from xlt_runner.data.mgsm import Mgsm, MgsmConfig

SHARED_MGSM = Path(__file__).resolve().parents[2] / "shared" / "data" / "mgsm"
WORDING = {"en": ("Question: ", "Step-by-Step Answer: ", "The answer is"),
           "zh": ("问题：", "逐步解答：", "答案是")}


def make_mgsm(root: Path, languages=("en", "zh"), problems: int = 250) -> Path:
    """MGSM-layout files: problem i asks for i + 1 (gold "1,001" for i = 1000 style separators
    appear at i = 7); 8 exemplars per language whose answers end in the language's answer phrase."""
    root.mkdir(parents=True, exist_ok=True)
    exemplars = []
    for lang in languages:
        q, a, phrase = WORDING[lang]
        rows = [f"What is {i} plus one?\t{'1,008' if i == 7 else i + 1}" for i in range(problems)]
        (root / f"mgsm_{lang}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        exemplars += [{"lang": lang, "exemplar_id": k, "q": f"{q}ex {k}?", "a": f"{a}{k} + 1. {phrase} {k + 1}.",
                       "number_answer": k + 1} for k in range(8, 0, -1)]  # out of order: sorted by id on reading
    (root / "mgsm_exemplars.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in exemplars),
                                               encoding="utf-8")
    return root


def bench(root: Path, **settings) -> Mgsm:
    return Mgsm(MgsmConfig(name="mgsm", data_dir=str(root), **settings), "/tmp")


def test_prompts_are_the_exemplars_then_the_problem_in_its_language(tmp_path):
    root = make_mgsm(tmp_path / "mgsm")
    two = bench(root).load("zh", "test")
    assert len(two) == 250 and two[7].references == ("1,008",) and two[0].id == "0"
    assert two[3].prompt == ("问题：ex 1?\n逐步解答：1 + 1. 答案是 2.\n\n问题：ex 2?\n逐步解答：2 + 1. 答案是 3.\n\n"
                             "问题：What is 3 plus one?\n逐步解答：")
    direct = bench(root, shots=1, chain_of_thought=False).load("en", "test")
    assert direct[3].prompt == ("Question: ex 1?\nStep-by-Step Answer: The answer is 2.\n\n"
                                "Question: What is 3 plus one?\nStep-by-Step Answer:")
    assert bench(root, shots=0).load("en", "test")[3].prompt == "Question: What is 3 plus one?\nStep-by-Step Answer:"


def test_bad_settings_and_data_are_refused_with_the_reason(tmp_path):
    root = make_mgsm(tmp_path / "mgsm")
    with pytest.raises(BenchmarkDataError, match="only a test split"):
        bench(root).load("en", "train")
    with pytest.raises(ConfigError, match="8 exemplars per language"):
        bench(root, shots=9)
    with pytest.raises(BenchmarkDataError, match="no language 'fr'"):
        bench(root).load("fr", "test")
    lines = (root / "mgsm_exemplars.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "mgsm_exemplars.jsonl").write_text("\n".join(l for l in lines if '"zh"' not in l) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="0 exemplars for 'zh'"):
        bench(root).load("zh", "test")
    short = make_mgsm(tmp_path / "short", problems=249)
    with pytest.raises(BenchmarkDataError, match="249 problems for 'en'"):
        bench(short).load("en", "test")
    (short / "mgsm_en.tsv").write_text("What?\tmany\n" * 250, encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"row\(s\) \[1, 2"):
        bench(short).load("en", "test")


def test_a_prompting_run_is_scored_as_math_and_rescored(tmp_path, shared_cache):
    root = make_mgsm(tmp_path / "mgsm")
    out = tmp_path / "out"
    result = run_cli(["model=tiny_llama", "method=prompting", "benchmark=mgsm", f"benchmark.data_dir={root}",
                      "languages=mgsm", "languages.targets=[en,zh]", "languages.groups=[all-en]",
                      "benchmark.max_eval_examples_per_language=6", "benchmark.max_new_tokens=8",
                      "model.template='{q} {a}'", "logger=none", "trainer.enable_progress_bar=false",
                      f"paths.output_root={out}", f"paths.cache_dir={shared_cache}"])
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    assert record["task"] == "math" and record["primary_metric"] == "exact_match"
    assert [m["name"] for m in record["metrics"]] == ["exact_match", "unparsable_rate"]
    assert sorted(record["per_language"]) == ["en", "zh"] and record["per_language"]["en"]["n"] == 6
    assert set(record["groups"]["all-en"]) >= {"exact_match", "unparsable_rate"}
    run_dir = next(out.rglob("results.json")).parent
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12 and all(set(r["scores"]) == {"exact_match", "unparsable"} for r in rows)
    assert rows[0]["prompt"].endswith("Step-by-Step Answer:")
    # a prediction edited to the right answer moves its language's exact match, and only that
    first = next(i for i, r in enumerate(rows) if r["lang"] == "zh")
    rows[first]["prediction"] = f"答案是 {rows[first]['references'][0]}。"
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    rescored = run_rescore(run_dir)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    after = json.loads((run_dir / "results.json").read_text())
    assert after["per_language"]["zh"]["exact_match"] == pytest.approx(
        record["per_language"]["zh"]["exact_match"] + (0 if rows[first]["scores"]["exact_match"] else 1 / 6))
    assert after["per_language"]["en"] == record["per_language"]["en"]


@pytest.mark.skipif(not SHARED_MGSM.is_dir(), reason="needs ../shared/data/mgsm")
def test_the_real_files_give_250_parallel_problems_in_11_languages():
    real = bench(SHARED_MGSM)
    assert real.languages() == ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]
    for lang in real.languages():
        problems = real.load(lang, "test")
        assert len(problems) == 250 and problems[0].prompt.count("\n\n") == 2
    assert [p.references for p in real.load("en", "test")] == [p.references for p in real.load("te", "test")]


@pytest.mark.parametrize("overrides,expected", [
    (["method=sft"], "MGSM has only a test split"),
    (["benchmark.shots=9"], "MGSM has 8 exemplars per language (0-8)"),
    (["languages.targets=[xx]"], "xx"),
])
def test_bad_mgsm_configs_fail_before_any_model_loads(overrides, expected):
    from xlt_runner.composition import compose
    from xlt_runner.validation import validate
    with pytest.raises(ConfigError) as err:
        validate(compose(["experiment=mgsm_cpu", *overrides]))
    assert expected in str(err.value)
    validate(compose(["experiment=mgsm_cpu"]))
