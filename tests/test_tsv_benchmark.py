from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xlt_runner.data as data_module
from xlt_runner.config import BenchmarkConfig, ConfigError
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, Example, build_benchmark
from xlt_runner.data.tsv_benchmark import SIB200_LABELS, Sib200, TsvClassificationBenchmark

LANGS = ("eng_Latn", "fra_Latn", "zho_Hans")
TEXTS = {"eng_Latn": "sentence", "fra_Latn": "phrase", "zho_Hans": "句子"}
SPLIT_SIZES = {"train": 14, "dev": 7, "test": 7}


def write_split(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index_id", "category", "text"])
        writer.writerows(rows)


def make_layout(root: Path, langs=LANGS, labels=SIB200_LABELS) -> Path:
    """Parallel data: row i of every language has index_id 100+i and label i % 7."""
    for lang in langs:
        lang_dir = root / lang
        lang_dir.mkdir(parents=True)
        (lang_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        for split, size in SPLIT_SIZES.items():
            rows = [(str(100 + i), labels[i % len(labels)], f'{TEXTS[lang]} {split} {i} "q"\tx')
                    for i in range(size)]
            write_split(lang_dir / f"{split}.tsv", rows)
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return make_layout(tmp_path / "annotated")


def sib200(data_dir) -> Sib200:
    return Sib200(BenchmarkConfig(name="sib200", hub_id="Davlan/sib200", data_dir=str(data_dir)), cache_dir="unused")


def test_reads_layout_with_quoting(root):
    bench = sib200(root)
    assert bench.name == "sib200" and bench.labels == SIB200_LABELS
    assert bench.languages() == sorted(LANGS)
    train = bench.load("zho_Hans", "train")
    assert len(train) == SPLIT_SIZES["train"]
    assert train[0] == Example(text='句子 train 0 "q"\tx', label=0, lang="zho_Hans", id="100")
    assert [ex.label for ex in train[:8]] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert [ex.id for ex in bench.load("eng_Latn", "test")] == [ex.id for ex in bench.load("fra_Latn", "test")]
    assert bench.load("eng_Latn", "validation") == bench.load("eng_Latn", "dev")


def test_parsed_files_are_cached_per_instance(root):
    bench = TsvClassificationBenchmark("t", root, SIB200_LABELS)
    first = bench.load("eng_Latn", "train")
    (root / "eng_Latn" / "train.tsv").unlink()
    assert bench.load("eng_Latn", "train") == first
    first.clear()  # callers get a copy
    assert len(bench.load("eng_Latn", "train")) == SPLIT_SIZES["train"]


def test_fingerprint_changes_with_data(root):
    before = TsvClassificationBenchmark("t", root, SIB200_LABELS).fingerprint()
    assert TsvClassificationBenchmark("t", root, SIB200_LABELS).fingerprint() == before
    write_split(root / "fra_Latn" / "dev.tsv", [("1", "travel", "changed")])
    assert TsvClassificationBenchmark("t", root, SIB200_LABELS).fingerprint() != before


def test_build_benchmark_registry(root):
    assert BENCHMARKS.names() == ["cldr_demo", "mgsm", "mintaka", "mkqa", "mkqa_cbqa", "rag_local", "sib200", "xor_tydi"]
    bench = build_benchmark(BenchmarkConfig(name="sib200", data_dir=str(root)), cache_dir="unused")
    assert isinstance(bench, Sib200)
    with pytest.raises(ConfigError, match="cldr_demo, mgsm, mintaka, mkqa, mkqa_cbqa, rag_local, sib200, xor_tydi \\(did you mean sib200"):
        build_benchmark(BenchmarkConfig(name="sib201"), cache_dir="unused")


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(BenchmarkDataError) as info:
        sib200(missing)
    message = str(info.value)
    assert str(missing) in message and "train,dev,test" in message and "benchmark.data_dir=" in message


def test_unknown_language_and_split(root):
    bench = sib200(root)
    with pytest.raises(BenchmarkDataError, match="eng_Latn"):
        bench.load("eng_Latm", "train")
    with pytest.raises(BenchmarkDataError, match="train, dev, test"):
        bench.load("eng_Latn", "training")


def test_missing_split_file(root):
    (root / "fra_Latn" / "test.tsv").unlink()
    with pytest.raises(BenchmarkDataError, match=r"missing file .*fra_Latn/test\.tsv"):
        sib200(root).load("fra_Latn", "test")


def test_labels_file_differs(root):
    (root / "fra_Latn" / "labels.txt").write_text("travel\nscience/technology\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError) as info:
        sib200(root).load("fra_Latn", "train")
    message = str(info.value)
    assert "'fra_Latn'" in message and "['travel', 'science/technology']" in message and "geography" in message


def test_unknown_category_names_file_and_row(root):
    path = root / "eng_Latn" / "dev.tsv"
    write_split(path, [("1", "travel", "ok"), ("2", "cooking", "bad")])
    with pytest.raises(BenchmarkDataError, match=r"dev\.tsv' line 3 has category 'cooking'"):
        sib200(root).load("eng_Latn", "dev")


def test_empty_split(root):
    write_split(root / "zho_Hans" / "dev.tsv", [])
    with pytest.raises(BenchmarkDataError, match=r"zho_Hans/dev is empty.*dev\.tsv"):
        sib200(root).load("zho_Hans", "dev")


def test_bad_header_and_row_width(root):
    (root / "eng_Latn" / "test.tsv").write_text("id\tlabel\ttext\n1\ttravel\tx\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="expected \\['index_id', 'category', 'text'\\]"):
        sib200(root).load("eng_Latn", "test")
    (root / "fra_Latn" / "test.tsv").write_text("index_id\tcategory\ttext\n1\ttravel\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="line 2 has 2 fields"):
        sib200(root).load("fra_Latn", "test")


def test_hub_without_source_is_a_config_error():
    with pytest.raises(ConfigError, match="benchmark.data_dir"):
        Sib200(BenchmarkConfig(name="sib200", hub_id=None), cache_dir="unused")


def test_hub_languages_are_the_table_codes():
    bench = Sib200(BenchmarkConfig(name="sib200", hub_id="Davlan/sib200"), cache_dir="unused")
    assert len(bench.languages()) == 205 and "nqo_Nkoo" in bench.languages()
    with pytest.raises(BenchmarkDataError, match="eng_Latn"):
        bench.load("eng_Latm", "train")


def test_hub_unreachable_message(monkeypatch):
    import datasets

    calls = []

    def unreachable(path, name, split):
        calls.append((path, name, split))
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    bench = Sib200(BenchmarkConfig(name="sib200", hub_id="Davlan/sib200"), cache_dir="unused")
    with pytest.raises(BenchmarkDataError) as info:
        bench.load("eng_Latn", "dev")
    assert calls == [("Davlan/sib200", "eng_Latn", "validation")]
    message = str(info.value)
    assert "unreachable" in message and "benchmark.data_dir=/path/to/sib-200/data/annotated" in message


def test_hub_offline_real_datasets(tmp_path):
    """The real `datasets` call fails fast with HF_HUB_OFFLINE=1 and an empty cache."""
    code = ("from xlt_runner.config import BenchmarkConfig\n"
            "from xlt_runner.data import BenchmarkDataError, build_benchmark\n"
            "bench = build_benchmark(BenchmarkConfig(name='sib200', hub_id='Davlan/sib200'), 'unused')\n"
            "try:\n    bench.load('eng_Latn', 'test')\n"
            "except BenchmarkDataError as err:\n    print(err)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            cwd=Path(data_module.__file__).resolve().parents[2])
    assert "benchmark.data_dir=/path/to/sib-200/data/annotated" in result.stdout, result.stderr
