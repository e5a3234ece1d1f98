from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from xlt_runner.data import BenchmarkDataError, build_benchmark
from xlt_runner.data.cldr_demo import LABELS, CldrDemo, CldrDemoConfig, _locale_code, generate

SPLITS = ("train", "dev", "test")


def read_split(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["index_id", "category", "text"]
    return [tuple(row) for row in rows[1:]]


def locale_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir())


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("cldr") / "data"
    return out_dir, generate(out_dir, min_locales=100, terms_per_class=30, seed=0)


def test_locale_codes_follow_sib200_conventions():
    assert _locale_code("en") == "eng_Latn"
    assert _locale_code("ar") == "arb_Arab"
    assert _locale_code("zh") == "zho_Hans"
    assert _locale_code("zh_Hant") == "zho_Hant"
    assert _locale_code("fa") == "pes_Arab"
    assert _locale_code("ko") == "kor_Hang"
    assert _locale_code("de_AT") is None  # regional variants are not separate languages


def test_enough_locales_with_seven_labels(generated):
    root, stats = generated
    codes = [d.name for d in locale_dirs(root)]
    assert len(codes) == stats["n_locales"] >= 100
    assert {"eng_Latn", "arb_Arab", "zho_Hans"} <= set(codes)
    for lang_dir in locale_dirs(root):
        assert (lang_dir / "labels.txt").read_text(encoding="utf-8").split("\n")[:-1] == LABELS
    assert stats["seconds"] < 10


def test_parallel_balanced_and_disjoint_by_key(generated):
    root, stats = generated
    reference = {split: [(i, c) for i, c, _ in read_split(root / "eng_Latn" / f"{split}.tsv")]
                 for split in SPLITS}
    for lang_dir in locale_dirs(root):
        for split in SPLITS:
            rows = read_split(lang_dir / f"{split}.tsv")
            assert [(i, c) for i, c, _ in rows] == reference[split], (lang_dir.name, split)
            assert all(text.strip() for _, _, text in rows)
    ids = {split: {i for i, _ in reference[split]} for split in SPLITS}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    keys_per_label = defaultdict(int)
    for split in SPLITS:
        for _, label in reference[split]:
            keys_per_label[label] += 1
    assert set(keys_per_label) == set(LABELS)
    assert keys_per_label["month"] == 12 and keys_per_label["weekday"] == 7
    assert all(keys_per_label[label] == 30 for label in LABELS if label not in ("month", "weekday"))
    assert stats["examples_per_locale"] == {split: len(reference[split]) for split in SPLITS}


def test_no_text_has_two_labels_within_a_locale(generated):
    root, _ = generated
    for lang_dir in locale_dirs(root):
        labels_of_text = defaultdict(set)
        for split in SPLITS:
            for _, label, text in read_split(lang_dir / f"{split}.tsv"):
                labels_of_text[text.casefold()].add(label)
        assert all(len(labels) == 1 for labels in labels_of_text.values()), lang_dir.name


def test_generation_is_deterministic_and_seeded(generated, tmp_path):
    root, _ = generated
    generate(tmp_path / "again", min_locales=100, terms_per_class=30, seed=0)
    for lang_dir in locale_dirs(root):
        for split in SPLITS:
            assert read_split(lang_dir / f"{split}.tsv") == read_split(tmp_path / "again" / lang_dir.name / f"{split}.tsv")
    other = generate(tmp_path / "seed1", min_locales=100, terms_per_class=30, seed=1)
    assert other["n_locales"] >= 100
    assert read_split(tmp_path / "seed1" / "eng_Latn" / "test.tsv") != read_split(root / "eng_Latn" / "test.tsv")


def test_too_many_locales_requested_is_a_clear_error(tmp_path):
    with pytest.raises(BenchmarkDataError, match="min_locales"):
        generate(tmp_path / "data", min_locales=1000)


def test_benchmark_generates_once_into_cache_and_reads_examples(tmp_path):
    cfg = CldrDemoConfig(name="cldr_demo", min_locales=100, terms_per_class=10)
    bench = build_benchmark(cfg, str(tmp_path))
    assert isinstance(bench, CldrDemo)
    assert bench.root.parent == tmp_path / "cldr_demo"
    assert bench.labels == LABELS and len(bench.languages()) >= 100
    test_examples = bench.load("zho_Hans", "test")
    assert {ex.label for ex in test_examples} == set(range(len(LABELS)))
    assert all(ex.lang == "zho_Hans" and ex.text for ex in test_examples)
    train_ids = {ex.id for ex in bench.load("arb_Arab", "train")}
    assert train_ids.isdisjoint(ex.id for ex in test_examples)
    mtime = (bench.root / "eng_Latn" / "train.tsv").stat().st_mtime_ns
    again = CldrDemo(cfg, str(tmp_path))
    assert again.root == bench.root and again.fingerprint() == bench.fingerprint()
    assert (again.root / "eng_Latn" / "train.tsv").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "cldr_demo").iterdir()] == [bench.root.name]  # no temp dirs left
    table = bench.language_table()
    assert all(code in table for code in bench.languages())
    assert table["eng_Latn"].joshi_class == 5
