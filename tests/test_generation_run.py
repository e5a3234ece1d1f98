"""Generation runs end to end: SFT and prompting of a tiny decoder on MKQA-layout data, the
record's metric specs, predictions.jsonl, ``method.init_from``, ``xlt-rescore``, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xlt_runner.composition import compose
from xlt_runner.config import ConfigError
from xlt_runner.validation import validate

from conftest import find_records, run_cli

QA_LANGUAGES = {"en": ("What is the capital of land {i}?", "City {i}"),
                "fi": ("Mikä on maan {i} pääkaupunki?", "Kaupunki {i}"),
                "ja": ("国 {i} の首都はどこですか", "都市 {i}")}
TEST_SIZE, DEV_SIZE, QUESTIONS = 6, 4, 24


def make_synthetic_qa(root: Path) -> Path:
    """MKQA files in the MIA-2022 layout (``mkqa-<lang>.jsonl``, parallel rows)."""
    root.mkdir(parents=True, exist_ok=True)
    for lang, (question, answer) in QA_LANGUAGES.items():
        rows = [{"id": f"{9000 + i}_{lang}", "lang": lang, "question": question.format(i=i),
                 "answers": [answer.format(i=i)]} for i in range(QUESTIONS)]
        (root / f"mkqa-{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
    return root


def run_rescore(*run_dirs: Path) -> subprocess.CompletedProcess:
    """``xlt-rescore RUN_DIR...`` as installed (the console script beside this interpreter)."""
    script = Path(sys.executable).parent / "xlt-rescore"
    return subprocess.run([str(script), *map(str, run_dirs)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory) -> Path:
    return make_synthetic_qa(tmp_path_factory.mktemp("qa") / "mkqa")


def qa_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["model=tiny_llama", "benchmark=mkqa_cbqa", f"benchmark.data_dir={data}", f"benchmark.test_size={TEST_SIZE}",
            f"benchmark.dev_size={DEV_SIZE}", "benchmark.max_new_tokens=6", "benchmark.batch_size=4",
            "benchmark.eval_batch_size=5", "languages=qa_english", "logger=none", "trainer.enable_progress_bar=false",
            f"paths.output_root={out}", f"paths.cache_dir={cache}", *extra]


@pytest.fixture(scope="module")
def sft_run(qa_data, tmp_path_factory, shared_cache) -> dict:
    out = tmp_path_factory.mktemp("sft")
    result = run_cli(qa_args(qa_data, out, shared_cache, "method=sft", "method.optim.lr=1e-3", "trainer.max_steps=6",
                             "trainer.val_check_interval=3"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    return {"record": record, "dir": Path(next(out.rglob("results.json")).parent), "stdout": result.stdout}


def test_a_complete_run_leaves_no_training_checkpoint(sft_run):
    """The tested weights stay (method_weights.safetensors); no full training state is left behind
    (Lightning's default ModelCheckpoint once wrote one per fit into the logger's directory)."""
    assert not list(sft_run["dir"].rglob("*.ckpt"))
    assert (sft_run["dir"] / "method_weights.safetensors").is_file()


def test_sft_run_records_generation_metrics_and_predictions(sft_run):
    record, run_dir = sft_run["record"], sft_run["dir"]
    assert record["status"] == "complete" and record["task"] == "generation" and record["method_family"] == "sft"
    assert record["primary_metric"] == "accuracy"
    specs = {m["name"]: m for m in record["metrics"]}
    assert set(specs) == {"accuracy", "exact_match", "output_language_rate", "empty_rate", "cococola_ratio",
                          "cococola_ratio_simplified", "cumulative_accuracy"}
    assert specs["empty_rate"]["higher_is_better"] is False
    assert record["best"]["monitor"] == "val/loss" and record["best"]["mode"] == "min"
    assert record["training"]["trained_steps"] == 6
    assert sorted(record["per_language"]) == ["en", "fi", "ja"]
    for scores in record["per_language"].values():
        assert scores["n"] == TEST_SIZE and 0.0 <= scores["accuracy"] <= 1.0
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 * TEST_SIZE and record["outputs"]["predictions"] == "predictions.jsonl"
    assert {row["lang"] for row in rows} == {"en", "fi", "ja"}
    test_ids = {row["id"] for row in rows if row["lang"] == "en"}
    assert test_ids == {row["id"] for row in rows if row["lang"] == "ja"}  # the same questions in every language
    assert all(set(row["scores"]) == {"exact_match", "accuracy", "empty", "output_language", "language_match"}
               for row in rows)
    assert all(row["new_tokens"] <= 6 for row in rows)
    header = (run_dir / "per_language.csv").read_text().splitlines()[0]
    assert header.startswith("language,accuracy,exact_match,output_language_rate,empty_rate,cococola_ratio,"
                             "cococola_ratio_simplified,cumulative_accuracy,n")


def test_prompting_from_the_sft_weights_reproduces_its_predictions(sft_run, qa_data, tmp_path, shared_cache):
    """``method.init_from`` loads a decoder run's weights into another decoder method: prompting
    the SFT run's saved (best) weights gives the SFT run's test predictions. Given as a glob
    pattern (a run directory's name ends in a config hash), the one match is loaded and the record
    keeps its path and sha256."""
    import hashlib
    weights = sft_run["dir"] / "method_weights.safetensors"
    pattern = sft_run["dir"].parent / "sft-*" / "method_weights.safetensors"
    result = run_cli(qa_args(qa_data, tmp_path, shared_cache, "method=prompting", f"method.init_from={pattern}"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    assert record["training"] is None and record["best"] is None and record["params"]["trainable"] == 0
    assert record["init_from"] == {"path": str(weights.resolve()),
                                   "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    ours = (next(tmp_path.rglob("predictions.jsonl"))).read_text(encoding="utf-8")
    assert ours == (sft_run["dir"] / "predictions.jsonl").read_text(encoding="utf-8")
    untrained = run_cli(qa_args(qa_data, tmp_path / "plain", shared_cache, "method=prompting"))
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    assert next((tmp_path / "plain").rglob("predictions.jsonl")).read_text(encoding="utf-8") != ours


def test_rescore_recomputes_metrics_from_predictions(sft_run, tmp_path):
    """``xlt-rescore`` needs no model: an unchanged run rescored is unchanged; a prediction edited
    to the reference (as a metric fix would change a score) moves its language's accuracy."""
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(sft_run["dir"], run_dir, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    before = json.loads((run_dir / "results.json").read_text())
    result = run_rescore(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 per-example scores changed" in result.stdout
    after = json.loads((run_dir / "results.json").read_text())
    assert after["per_language"] == before["per_language"] and after["groups"] == before["groups"]

    path = run_dir / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    fixed = [i for i, row in enumerate(rows) if row["lang"] == "fi"][:2]
    for i in fixed:
        rows[i]["prediction"] = rows[i]["references"][0]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = run_rescore(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    rescored = json.loads((run_dir / "results.json").read_text())
    correct_before = sum(rows[i]["scores"]["accuracy"] for i in fixed)
    expected = before["per_language"]["fi"]["accuracy"] + (len(fixed) - correct_before) / TEST_SIZE
    assert rescored["per_language"]["fi"]["accuracy"] == pytest.approx(expected)
    assert rescored["per_language"]["ja"] == before["per_language"]["ja"]
    assert rescored["rescored_changes"] >= 1


def test_language_adherence_comes_from_every_languages_gold_and_is_rescored(sft_run, tmp_path):
    """On parallel QA the run saves every language's gold answers to its test questions and
    reports CoCo-CoLa's ratios per language; answering the Japanese questions with the English
    gold makes Japanese adherence 0 and its cumulative accuracy 1, and the Finnish gold for the
    Finnish questions makes Finnish adherence 1 (rescored from the saved files alone)."""
    import shutil
    record, run_dir = sft_run["record"], tmp_path / "run"
    assert record["outputs"]["parallel_references"] == "parallel_references.json"
    assert {"cococola_ratio", "cococola_ratio_simplified", "cumulative_accuracy"} <= {m["name"] for m in record["metrics"]}
    assert all("cococola_ratio" in scores for scores in record["per_language"].values())
    assert record["per_language"]["en"]["cococola_ratio_simplified"] is None  # undefined for English itself
    shutil.copytree(sft_run["dir"], run_dir, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    gold = json.loads((run_dir / "parallel_references.json").read_text(encoding="utf-8"))
    path = run_dir / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        if row["lang"] == "ja":
            row["prediction"] = gold["en"][row["id"]][0]
        elif row["lang"] == "fi":
            row["prediction"] = gold["fi"][row["id"]][0]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert run_rescore(run_dir).returncode == 0
    rescored = json.loads((run_dir / "results.json").read_text())["per_language"]
    assert rescored["ja"]["cococola_ratio"] == 0.0 and rescored["ja"]["cumulative_accuracy"] == 1.0
    assert rescored["ja"]["cococola_ratio_simplified"] == 0.0 and rescored["ja"]["accuracy"] == 0.0
    assert rescored["fi"]["cococola_ratio"] == 1.0 and rescored["fi"]["cococola_ratio_n"] == TEST_SIZE


def test_rescore_refuses_what_it_cannot_rescore(tmp_path):
    result = run_rescore(tmp_path)
    assert result.returncode == 2 and "holds no generation run record" in result.stderr


@pytest.mark.parametrize("overrides,expected", [
    (["model.template='Answer: {a}'"], "model.template"),  # no {q}
    (["model.template='Q: {q} A:'"], "{a}"),  # training needs the answer slot
    (["model=tiny_xlmr"], "runs on decoder models"),  # a generation benchmark on an encoder
    (["method=head_only"], "method=head_only runs classification benchmarks"),
    (["model.format=markdown"], "model.format"),
    (["benchmark.max_new_tokens=0"], "benchmark.max_new_tokens"),
    (["benchmark.language_identifier=cld3"], "py3langid"),
    (["languages.targets=[xx]"], "xx"),
])
def test_bad_generation_configs_fail_before_any_model_loads(overrides, expected):
    cfg = compose(["model=tiny_llama", "method=sft", "benchmark=mkqa_cbqa", "languages=qa_english", *overrides])
    with pytest.raises(ConfigError, match=None) as err:
        validate(cfg)
    assert expected in str(err.value), str(err.value)


def test_classification_methods_and_generation_methods_refuse_each_others_benchmarks():
    with pytest.raises(ConfigError, match="method=sft runs generation benchmarks"):
        validate(compose(["method=sft"]))
    validate(compose(["model=tiny_llama", "method=lora", "benchmark=mkqa_cbqa", "languages=qa_english"]))


def test_a_target_language_absent_from_the_data_is_refused_before_the_model_loads(qa_data, tmp_path, shared_cache):
    result = run_cli(qa_args(qa_data, tmp_path, shared_cache, "method=prompting", "languages.targets=[en,ko]"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'ko' is not in the benchmark's data" in result.stderr
    assert not list(tmp_path.rglob("results.json"))


def test_init_from_must_name_exactly_one_file_before_any_job_starts(qa_data, tmp_path, shared_cache):
    """A sweep whose starting weights are missing or ambiguous stops in the preflight (exit 2,
    nothing run), naming what it found; a directory is refused with what to give instead."""
    for name in ("a", "b"):
        (tmp_path / "runs" / f"sft-{name}").mkdir(parents=True)
        (tmp_path / "runs" / f"sft-{name}" / "method_weights.safetensors").write_bytes(b"x")
    cases = [(tmp_path / "runs" / "none-*" / "method_weights.safetensors", "matches 0 files"),
             (tmp_path / "runs" / "sft-*" / "method_weights.safetensors", "matches 2 files"),
             (tmp_path / "runs" / "sft-a", "is a directory"),
             (tmp_path / "missing.safetensors", "no such file")]
    for spec, expected in cases:
        out = tmp_path / "out"
        result = run_cli(["-m", *qa_args(qa_data, out, shared_cache, "method=prompting,sft", f"method.init_from={spec}")])
        assert result.returncode == 2 and expected in result.stderr, (spec, result.stderr[-2000:])
        assert not list(out.rglob("results.json"))


def test_a_layer_set_the_model_lacks_is_named_with_the_models_that_have_it(qa_data, tmp_path, shared_cache):
    result = run_cli(qa_args(qa_data, tmp_path, shared_cache, "method=coco_last"))
    assert result.returncode == 2
    assert "model=tiny_llama has no layer set 'coco_last'" in result.stderr
    assert "llama32_1b" in result.stderr and "method.trainable.layers=[A,B]" in result.stderr
