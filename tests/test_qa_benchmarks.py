"""The closed-book QA readers (xlt_runner/data/qa.py): MKQA in its two local layouts and the
Hub schema, Mintaka v1.0/v1.1 and the Hub schema, splits by question id, errors, fingerprints,
language selection and the composed configs. Data are generated in tmp_path; the last tests
read the real copies under ../shared/data in place and are skipped without them."""
from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from xlt_runner.config import ConfigError, LanguagesConfig
from xlt_runner.data import BenchmarkDataError, GenerationExample
from xlt_runner.data.languages import LanguageTable
from xlt_runner.data.qa import (MKQA_ANSWER_TYPES, Mintaka, MintakaConfig, MkqaCbqa, MkqaConfig, mintaka_hub_example,
                                mkqa_record_examples, split_question_ids)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the read-only data beside the checkout
MIA_DIR = SHARED / "mkqa" / "mia2022_dev"
MKQA_FIXTURE = SHARED / "mkqa" / "apple_ml_mkqa_test_fixture" / "test_mkqa.jsonl.gz"
MINTAKA_DIR = SHARED / "mintaka"
LANGS = ("en", "fi", "ja", "zh_cn")
QIDS = [str(i * 7919 - 50_000) for i in range(30)]  # MKQA ids are signed integers
SIZES = {"test": 6, "dev": 4, "train": 20}


# ------------------------------------------------------------------------------ helpers
def write_mia(root: Path, langs=LANGS, qids=QIDS) -> Path:
    """MIA-2022 layout: mkqa-<lang>.jsonl, row i of every file is question qids[i]."""
    root.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        rows = [{"id": f"{qid}_{lang}", "lang": lang, "question": f" {lang} question {qid}? ",
                 "answers": [f"{lang} answer {qid}", f"{lang} other {qid}", f"{lang} answer {qid}"]} for qid in qids]
        write_lines(root / f"mkqa-{lang}.jsonl", rows)
    return root


def write_lines(path: Path, rows: list) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")


def mkqa(root: Path, **sizes) -> MkqaCbqa:
    sizes = {"test_size": SIZES["test"], "dev_size": SIZES["dev"], **sizes}
    return MkqaCbqa(MkqaConfig(name="mkqa_cbqa", hub_id="apple/mkqa", data_dir=str(root), **sizes), "unused")


def original_record(qid: int, langs=LANGS, kind="entity") -> dict:
    """A record of the original MKQA schema (as in apple/ml-mkqa's mkqa.jsonl.gz)."""
    return {"example_id": qid, "query": f"en q {qid}",
            "queries": {lang: f"{lang} q {qid}" for lang in langs},
            "answers": {lang: [{"type": kind, "entity": "Q1", "text": f"{lang} a {qid}",
                                "aliases": [f"{lang} alias {qid}", f"{lang} a {qid}"]}] for lang in langs}}


def hub_record(record: dict) -> dict:
    """The same record as the Hub dataset apple/mkqa gives it: string id, ClassLabel type
    indices, ``entity`` and ``aliases`` always present."""
    return {"example_id": str(record["example_id"]), "query": record["query"], "queries": record["queries"],
            "answers": {lang: [{"type": MKQA_ANSWER_TYPES.index(a["type"]), "entity": a.get("entity", ""),
                                "text": a.get("text"), "aliases": a.get("aliases", [])} for a in answers]
                        for lang, answers in record["answers"].items()}}


def mintaka_record(qid: str, answer: dict, complexity="generic",
                   langs=("ar", "de", "es", "fr", "hi", "it", "ja", "pt")) -> dict:
    return {"id": qid, "question": f"English question {qid}?",
            "translations": {lang: f"{lang} question {qid}?" for lang in langs},
            "questionEntity": [], "answer": answer, "category": "books", "complexityType": complexity}


def entity(label, name="Q1"):
    return {"name": name, "label": label}


def mintaka_v10_records(n=30) -> list[dict]:
    """v1.0 records: English answer labels; the first few cover every answer kind."""
    special = [
        mintaka_record("ent", {"answerType": "entity", "answer": [entity("Breaking Dawn")],
                               "mention": "Breaking Dawn!"}),
        mintaka_record("list", {"answerType": "entity", "answer": [entity("A"), entity("B")], "mention": "A and B"}),
        mintaka_record("unlinked", {"answerType": "entity", "answer": None, "mention": "Kevin Dwyer"}),
        mintaka_record("count", {"answerType": "entity", "answer": [entity("A"), entity("B")], "mention": "A, B",
                                 "answerNum": 2}, complexity="count"),
        mintaka_record("super", {"answerType": "entity", "answer": [entity("Will Smith")], "mention": "Will Smith",
                                 "answerNum": "$100 million"}, complexity="superlative"),
        mintaka_record("yes", {"answerType": "boolean", "answer": [True], "mention": "Yes"}, complexity="yesno"),
        mintaka_record("no", {"answerType": "boolean", "answer": [False], "mention": "No"}, complexity="yesno"),
        mintaka_record("date", {"answerType": "date", "answer": ["1956-10-20"], "mention": "20-Oct-56"}),
        mintaka_record("num", {"answerType": "numerical", "answer": [2.0], "mention": "two"}),
        mintaka_record("str", {"answerType": "string", "answer": ["CROSS STITCH"], "mention": "CROSS STITCH"}),
    ]
    rest = [mintaka_record(f"q{i:03d}", {"answerType": "entity", "answer": [entity(f"Label {i}")], "mention": f"M {i}"})
            for i in range(n - len(special))]
    return special + rest


def write_json(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def mintaka(root: Path, **sizes) -> Mintaka:
    sizes = {"test_size": SIZES["test"], "dev_size": SIZES["dev"], **sizes}
    return Mintaka(MintakaConfig(name="mintaka", hub_id="AmazonScience/mintaka", data_dir=str(root), **sizes), "unused")


class FakeDataset(list):
    """Rows of a Hub split, with the ``_fingerprint`` a ``datasets.Dataset`` has."""

    def __init__(self, rows, fingerprint: str):
        super().__init__(rows)
        self._fingerprint = fingerprint


class FakeHub:
    """Stands in for the ``datasets`` module: ``load_dataset(path, config, split=, revision=)``
    serves ``tables[(config, split)]`` and records each call; anything else is not found."""

    def __init__(self, tables: dict):
        self.tables, self.calls = tables, []

    def load_dataset(self, path, name=None, split=None, revision=None):
        self.calls.append((path, name, split, revision))
        if (name, split) not in self.tables:
            raise FileNotFoundError(f"Dataset {path!r} has no {name}/{split} here")
        rows = self.tables[(name, split)]
        return FakeDataset(rows, fingerprint=hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16])


@pytest.fixture
def fake_hub(monkeypatch):
    def install(tables: dict) -> FakeHub:
        hub = FakeHub(tables)
        monkeypatch.setitem(sys.modules, "datasets", hub)
        return hub
    return install


def split_ids(bench, lang: str) -> dict[str, list[str]]:
    return {split: [ex.id for ex in bench.load(lang, split)] for split in ("train", "dev", "test")}


# ------------------------------------------------------------------------------- splits
def test_split_rule_is_the_sha256_order_of_seed_and_id():
    order = sorted(QIDS, key=lambda qid: hashlib.sha256(f"7:{qid}".encode()).hexdigest())
    splits = split_question_ids(list(reversed(QIDS)), test_size=6, dev_size=4, seed=7)
    assert splits == {"test": order[:6], "dev": order[6:10], "train": order[10:]}
    shuffled = QIDS[:]
    random.Random(1).shuffle(shuffled)
    assert split_question_ids(shuffled, 6, 4, 7) == splits
    assert split_question_ids(QIDS, 6, 4, 8)["test"] != splits["test"]
    assert split_question_ids(QIDS, 20, 10, 7)["train"] == []


def test_split_sizes_beyond_the_questions_are_refused():
    with pytest.raises(BenchmarkDataError, match=r"test_size=25 \+ benchmark.dev_size=10 = 35 questions, "
                                                 r"but the data has only 30; lower them"):
        split_question_ids(QIDS, 25, 10, 0)


# -------------------------------------------------------------------------- MKQA (MIA)
def test_mia_layout_gives_parallel_questions_split_by_id(tmp_path):
    bench = mkqa(write_mia(tmp_path / "mia"))
    assert (bench.name, bench.task) == ("mkqa_cbqa", "generation")
    assert bench.location == f"data directory {str(tmp_path / 'mia')!r}"
    assert bench.languages() == sorted(LANGS)
    expected = split_question_ids(QIDS, SIZES["test"], SIZES["dev"], 0)
    for lang in LANGS:
        assert split_ids(bench, lang) == expected
    assert {split: len(ids) for split, ids in expected.items()} == SIZES
    first = bench.load("ja", "test")[0]
    qid = expected["test"][0]
    assert first == GenerationExample(id=qid, lang="ja", prompt=f"ja question {qid}?",
                                      references=(f"ja answer {qid}", f"ja other {qid}"), completion=f"ja answer {qid}")
    assert bench.load("en", "validation") == bench.load("en", "dev")
    with pytest.raises(BenchmarkDataError, match="train, dev, test"):
        bench.load("en", "eval")


def test_mia_splits_do_not_depend_on_row_order(tmp_path):
    shuffled = QIDS[:]
    random.Random(3).shuffle(shuffled)
    a, b = mkqa(write_mia(tmp_path / "a")), mkqa(write_mia(tmp_path / "b", qids=shuffled))
    for lang in LANGS:
        for split in ("train", "dev", "test"):
            assert a.load(lang, split) == b.load(lang, split)


def _swap_rows(path: Path, i: int, j: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[i], lines[j] = lines[j], lines[i]
    path.write_text("".join(lines), encoding="utf-8")


def _edit_row(path: Path, index: int, **changes) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows[index].update(changes)
    write_lines(path, rows)


@pytest.mark.parametrize("damage, message", [
    (lambda root: _swap_rows(root / "mkqa-ja.jsonl", 3, 4),
     rf"mkqa-ja.jsonl line 4 has question '{QIDS[4]}' where mkqa-en.jsonl line 4 has '{QIDS[3]}'.*aligned row by row"),
    (lambda root: write_lines(root / "mkqa-fi.jsonl", [json.loads(line) for line in
                                                        (root / "mkqa-fi.jsonl").read_text().splitlines()[:-1]]),
     r"mkqa-fi.jsonl has 29 rows, mkqa-en.jsonl 30"),
    (lambda root: _edit_row(root / "mkqa-zh_cn.jsonl", 5, answers=[]),
     r"mkqa-zh_cn.jsonl' line 6: answers \[\] of '.*_zh_cn' must be a non-empty list"),
    (lambda root: _edit_row(root / "mkqa-en.jsonl", 2, answers=["ok", "  "]),
     r"mkqa-en.jsonl' line 3: answers \['ok', '  '\].*non-empty strings"),
    (lambda root: _edit_row(root / "mkqa-ja.jsonl", 0, id=f"{QIDS[0]}_en"),
     r"mkqa-ja.jsonl' line 1: id '.*_en' \(lang 'ja'\) is not of language 'ja'"),
    (lambda root: _edit_row(root / "mkqa-ja.jsonl", 1, question=""), r"line 2: '.*_ja' has no question text"),
    (lambda root: _edit_row(root / "mkqa-ja.jsonl", 2, id=f"{QIDS[1]}_ja"), r"line 3 repeats question id"),
    (lambda root: (root / "mkqa-fi.jsonl").write_text('{"id": "1_fi",\n', encoding="utf-8"),
     r"mkqa-fi.jsonl' line 1 is not valid JSON"),
])
def test_mia_damaged_files_are_refused_with_file_and_line(tmp_path, damage, message):
    root = write_mia(tmp_path / "mia")
    damage(root)
    with pytest.raises(BenchmarkDataError, match=message):
        mkqa(root).load("en", "test")


def test_missing_or_unrecognised_data_dir(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"'.*nowhere' does not exist.*benchmark.data_dir=../shared/data/mkqa"):
        mkqa(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match=r"holds no MKQA data; expected the original MKQA file "
                                                 r"mkqa.jsonl.gz or mkqa.jsonl .* or the MIA-2022 files"):
        mkqa(tmp_path / "empty")
    root = write_mia(tmp_path / "both")
    write_lines(root / "mkqa.jsonl", [original_record(1)])
    with pytest.raises(BenchmarkDataError, match="more than one MKQA copy"):
        mkqa(root)
    with pytest.raises(ConfigError, match="benchmark.data_dir .* or benchmark.hub_id"):
        MkqaCbqa(MkqaConfig(name="mkqa_cbqa"), "unused")


def test_sizes_too_big_empty_split_and_negative(tmp_path):
    root = write_mia(tmp_path / "mia")
    with pytest.raises(BenchmarkDataError, match=r"test_size=25 \+ benchmark.dev_size=10 = 35 questions, but "
                                                 r"mkqa_cbqa \(data directory .*\) has only 30"):
        mkqa(root, test_size=25, dev_size=10).load("en", "test")
    bench = mkqa(root, test_size=20, dev_size=10)
    assert len(bench.load("en", "test")) == 20
    with pytest.raises(BenchmarkDataError, match=r"split en/train is empty: benchmark.test_size=20 and "
                                                 r"benchmark.dev_size=10 leave no question"):
        bench.load("en", "train")
    with pytest.raises(ConfigError, match="benchmark.dev_size=-1 must be at least 0"):
        mkqa(root, dev_size=-1)


def test_fingerprint_follows_content_and_split_parameters(tmp_path):
    root = write_mia(tmp_path / "a")
    before = mkqa(root).fingerprint()
    assert len(before) == 64 and int(before, 16) >= 0
    assert mkqa(shutil.copytree(root, tmp_path / "copy")).fingerprint() == before
    assert mkqa(root, split_seed=1).fingerprint() != before
    assert mkqa(root, test_size=5).fingerprint() != before
    path = root / "mkqa-ja.jsonl"
    path.write_bytes(path.read_bytes().replace(b"ja other 1", b"ja other 2", 1))
    assert mkqa(root).fingerprint() != before


def test_language_table_resolves_mkqa_codes_and_sets(tmp_path):
    bench = mkqa(write_mia(tmp_path / "mia"))
    table = LanguageTable.for_benchmark(bench)
    assert len(table) == 26 and table["zh_cn"].script == "Hans" and table["ja"].joshi_class == 5
    chosen = LanguagesConfig(name="qa_english", source=["en"], targets=["all"],
                             groups=["all-en", "joshi5-en", "all-joshi5"])
    source, targets, members = table.select_run_languages(chosen, bench.languages(), bench.location)
    assert source == ["en"] and targets == sorted(LANGS)
    assert members == {"all-en": ["fi", "ja", "zh_cn"], "joshi5-en": ["ja", "zh_cn"], "all-joshi5": ["fi"]}
    for code, message in (("de", r"language 'de' is not in the benchmark's data \(data directory '.*mia', "
                                  r"4 languages"),  # an MKQA code these data lack
                          ("xx", r"unknown language or set 'xx'")):  # not an MKQA code
        with pytest.raises(ConfigError, match=rf"languages.targets: {message}"):
            table.select_run_languages(LanguagesConfig(name="x", source=["en"], targets=[code]),
                                       bench.languages(), bench.location)
    with pytest.raises(BenchmarkDataError, match=r"no language 'jp' in data directory .*closest: \['ja'\]"):
        bench.load("jp", "test")


# ---------------------------------------------------------------- MKQA (original, Hub)
def _original_records() -> list[dict]:
    kept = [original_record(100 + i) for i in range(12)]
    unanswerable = original_record(1, kind="unanswerable")
    long_answer = original_record(2, kind="long_answer")
    no_text_in_ja = original_record(3)
    no_text_in_ja["answers"]["ja"] = [{"type": "entity", "text": None}]
    blank_query = original_record(4)
    blank_query["queries"]["fi"] = " "
    mixed = original_record(5)  # a long answer first, then a short one: kept, with the short one
    for lang in LANGS:
        mixed["answers"][lang].insert(0, {"type": "long_answer", "text": "a long passage"})
    return kept[:6] + [unanswerable, long_answer, no_text_in_ja, blank_query, mixed] + kept[6:]


@pytest.mark.parametrize("file_name", ["mkqa.jsonl.gz", "mkqa.jsonl"])
def test_original_schema_keeps_questions_with_a_short_answer_everywhere(tmp_path, file_name):
    root = tmp_path / "mkqa"
    root.mkdir()
    write_lines(root / file_name, _original_records())
    bench = mkqa(root, test_size=3, dev_size=2)
    assert bench.languages() == sorted(LANGS)
    kept = [str(100 + i) for i in range(12)] + ["5"]
    assert bench.dropped_questions == 4
    expected = split_question_ids(kept, 3, 2, 0)
    for lang in LANGS:
        assert split_ids(bench, lang) == expected
    by_id = {ex.id: ex for split in ("train", "dev", "test") for ex in bench.load("ja", split)}
    assert by_id["5"].references == ("ja a 5", "ja alias 5")
    assert by_id["100"] == GenerationExample(id="100", lang="ja", prompt="ja q 100",
                                             references=("ja a 100", "ja alias 100"), completion="ja a 100")


def test_original_schema_errors(tmp_path):
    root = tmp_path / "mkqa"
    root.mkdir()
    lacking = original_record(2)
    del lacking["queries"]["fi"], lacking["answers"]["fi"]
    write_lines(root / "mkqa.jsonl", [original_record(1), lacking])
    with pytest.raises(BenchmarkDataError, match=r"mkqa.jsonl' line 2: question 2 has the languages \['en', 'ja', "
                                                 r"'zh_cn'\], the records before it \['en', 'fi', 'ja', 'zh_cn'\]"):
        mkqa(root).languages()
    write_lines(root / "mkqa.jsonl", [original_record(1), original_record(1)])
    with pytest.raises(BenchmarkDataError, match="line 2 repeats example_id 1"):
        mkqa(root).languages()
    (root / "mkqa.jsonl").unlink()
    (root / "mkqa.jsonl.gz").write_text(json.dumps(original_record(1)), encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="mkqa.jsonl.gz' is not a valid, complete gzip file"):
        mkqa(root).languages()


def test_hub_schema_records_convert_like_the_original_file():
    for record in _original_records():
        assert mkqa_record_examples(hub_record(record), "hub") == mkqa_record_examples(record, "file")
    qid, examples = mkqa_record_examples(hub_record(original_record(-7)), "hub")
    assert qid == "-7" and examples["zh_cn"].references == ("zh_cn a -7", "zh_cn alias -7")
    bad = original_record(9)
    bad["answers"]["en"][0]["type"] = "opinion"
    with pytest.raises(BenchmarkDataError, match=r"row 3 \(en\): answer type 'opinion' is not one of MKQA's"):
        mkqa_record_examples(bad, "row 3")


def test_mkqa_hub_reads_the_original_schema(fake_hub):
    records = [hub_record(r) for r in _original_records()]
    hub = fake_hub({(None, "train"): records})
    cfg = MkqaConfig(name="mkqa_cbqa", hub_id="apple/mkqa", hub_revision="refs/convert/parquet",
                     test_size=3, dev_size=2)
    bench = MkqaCbqa(cfg, "unused")
    assert bench.location == "Hub dataset 'apple/mkqa'" and bench.languages() == sorted(LANGS)
    kept = [str(100 + i) for i in range(12)] + ["5"]
    assert split_ids(bench, "fi") == split_ids(bench, "en") == split_question_ids(kept, 3, 2, 0)
    assert hub.calls[0] == ("apple/mkqa", None, "train", "refs/convert/parquet")
    before = bench.fingerprint()
    assert MkqaCbqa(cfg, "unused").fingerprint() == before
    records[0]["answers"]["en"][0]["text"] = "changed"
    assert MkqaCbqa(cfg, "unused").fingerprint() != before


def test_hub_failure_says_how_to_go_local(fake_hub):
    fake_hub({})
    with pytest.raises(BenchmarkDataError) as info:
        MkqaCbqa(MkqaConfig(name="mkqa_cbqa", hub_id="apple/mkqa"), "unused").load("en", "test")
    message = str(info.value)
    for part in ("could not load the Hub dataset 'apple/mkqa' split 'train' (FileNotFoundError",
                 "benchmark.data_dir=../shared/data/mkqa/mia2022_dev", "HF_HUB_OFFLINE=1",
                 "benchmark.hub_revision=refs/convert/parquet"):
        assert part in message


@pytest.mark.skipif(not MKQA_FIXTURE.exists(), reason="needs the shared MKQA data (not in CI)")
def test_apple_mkqa_fixture_in_the_original_schema(tmp_path):
    (tmp_path / "mkqa").mkdir()
    (tmp_path / "mkqa" / "mkqa.jsonl.gz").symlink_to(MKQA_FIXTURE)  # read in place, not copied
    bench = mkqa(tmp_path / "mkqa", test_size=1, dev_size=1)
    assert len(bench.languages()) == 26 and bench.dropped_questions == 3  # unanswerable x2, long_answer
    examples = {ex.id: ex for split in ("train", "dev", "test") for ex in bench.load("en", split)}
    assert sorted(examples) == ["-7449157003522518870", "36228854473990432", "7631360939705650347"]
    assert examples["36228854473990432"].references[:3] == ("2017", "2017-05-18", "18/05/2017")
    assert examples["7631360939705650347"].references == ("Ridley Scott", "Sir Ridley Scott")
    zh = {ex.id: ex for split in ("train", "dev", "test") for ex in bench.load("zh_cn", split)}
    assert zh["-7449157003522518870"].references == ("大力士魔山",)


# ------------------------------------------------------------------------------ Mintaka
def test_mintaka_v10_offers_english_only_with_a_note(tmp_path):
    root = tmp_path / "mintaka"
    write_json(root / "mintaka_dev_v1.0.json", mintaka_v10_records())
    bench = mintaka(root)
    assert bench.languages() == ["en"]
    assert {split: len(ids) for split, ids in split_ids(bench, "en").items()} == SIZES
    note = bench.language_note
    assert "English answers only" in note and "mintaka_dev_v1.0.json" in note and "v1.1" in note
    with pytest.raises(BenchmarkDataError) as info:
        bench.load("ja", "test")
    assert str(info.value) == f"mintaka: no answers in language 'ja': {note}"
    assert "benchmark.hub_id=AmazonScience/mintaka" in str(info.value)
    table = LanguageTable.for_benchmark(bench)
    assert sorted(table.codes) == ["ar", "de", "en", "es", "fr", "hi", "it", "ja", "pt"]
    with pytest.raises(ConfigError, match=r"languages.targets: language 'ja' is not in the benchmark's data"):
        table.select_run_languages(LanguagesConfig(name="x", source=["en"], targets=["ja"]),
                                   bench.languages(), bench.location)


def test_mintaka_references_by_answer_kind(tmp_path):
    root = tmp_path / "mintaka"
    write_json(root / "mintaka_dev_v1.0.json", mintaka_v10_records())
    bench = mintaka(root)
    refs = {ex.id: ex.references for split in ("train", "dev", "test") for ex in bench.load("en", split)}
    assert refs["ent"] == ("Breaking Dawn", "Breaking Dawn!")
    assert refs["list"] == ("A, B", "A and B")
    assert refs["unlinked"] == ("Kevin Dwyer",)
    assert refs["count"] == ("2",)  # the number, not the listed entities
    assert refs["super"] == ("Will Smith",)  # a superlative's answerNum is support, not the answer
    assert (refs["yes"], refs["no"]) == (("Yes",), ("No",))
    assert refs["date"] == ("1956-10-20", "20-Oct-56")
    assert refs["num"] == ("2", "two")
    assert refs["str"] == ("CROSS STITCH",)
    example = next(ex for ex in bench.load("en", "train") + bench.load("en", "test") + bench.load("en", "dev")
                   if ex.id == "ent")
    assert example.prompt == "English question ent?" and example.completion == "Breaking Dawn"


def test_mintaka_v11_offers_every_question_language(tmp_path):
    records = mintaka_v10_records()
    for record in records:
        for e in record["answer"]["answer"] or [] if record["answer"]["answerType"] == "entity" else []:
            e["label"] = {"en": e["label"], "ja": f"{e['label']} (ja)", "de": ""}
    root = write_json(tmp_path / "v11" / "mintaka_test.json", records).parent
    bench = mintaka(root)
    assert bench.languages() == ["ar", "de", "en", "es", "fr", "hi", "it", "ja", "pt"] and bench.language_note is None
    assert split_ids(bench, "ja") == split_ids(bench, "en") == split_ids(bench, "hi")
    ja = {ex.id: ex for split in ("train", "dev", "test") for ex in bench.load("ja", split)}
    de = {ex.id: ex for split in ("train", "dev", "test") for ex in bench.load("de", split)}
    assert ja["ent"].prompt == "ja question ent?" and ja["ent"].references == ("Breaking Dawn (ja)",)
    assert de["ent"].references == ("Breaking Dawn",)  # empty German label: the English one
    assert ja["unlinked"].references == ("Kevin Dwyer",) and ja["date"].references == ("1956-10-20",)
    del records[3]["translations"]["pt"]
    write_json(root / "mintaka_test.json", records)
    with pytest.raises(BenchmarkDataError, match=r"record 3: question 'count' has no 'pt' text"):
        mintaka(root).load("pt", "test")


def test_mintaka_files_are_pooled_and_checked(tmp_path):
    records = mintaka_v10_records()
    root = tmp_path / "mintaka"
    write_json(root / "mintaka_train.json", records[:20])
    write_json(root / "mintaka_dev.json", records[20:])
    pooled = mintaka(root)
    single = mintaka(write_json(tmp_path / "one" / "mintaka_dev.json", records).parent)
    assert split_ids(pooled, "en") == split_ids(single, "en")
    write_json(root / "mintaka_test.json", records[5:6])
    with pytest.raises(BenchmarkDataError, match=r"mintaka_train.json' record 5 repeats question id 'yes'"):
        mintaka(root).languages()
    v11 = [dict(r, answer=dict(r["answer"], answer=[entity({"en": "X"})])) for r in mintaka_v10_records(2)]
    write_json(root / "mintaka_test.json", [dict(r, id=f"v11-{r['id']}") for r in v11])
    with pytest.raises(BenchmarkDataError, match=r"mixes Mintaka v1.0 \(mintaka_dev.json.*\) and v1.1 "
                                                 r"\(mintaka_test.json"):
        mintaka(root).languages()
    write_json(root / "mintaka_test.json", [mintaka_record("empty", {"answerType": "entity", "answer": None,
                                                                     "mention": " "})])
    with pytest.raises(BenchmarkDataError, match=r"question 'empty' has no answer text in 'en'"):
        mintaka(root).languages()
    with pytest.raises(BenchmarkDataError, match=r"holds no mintaka_\*.json.*data_dir=../shared/data/mintaka"):
        mintaka(tmp_path)


def test_mintaka_hub_rows():
    row = {"id": "a9011ddf", "lang": "ja", "question": "北アメリカで七番目に高い山は何ですか？",
           "answerText": "Mount Lucania", "category": "geography", "complexityType": "ordinal",
           "questionEntity": [], "answerEntity": [{"name": "Q1153188", "label": "ルカニア山"}]}
    assert mintaka_hub_example(row, "ja", "row 0") == GenerationExample(
        id="a9011ddf", lang="ja", prompt=row["question"], references=("ルカニア山", "Mount Lucania"),
        completion="ルカニア山")
    boolean = dict(row, answerText="Yes", answerEntity=[])
    assert mintaka_hub_example(boolean, "ja", "row 1").references == ("Yes",)
    with pytest.raises(BenchmarkDataError, match="row 2: question 'a9011ddf' lacks a question or an answer text"):
        mintaka_hub_example(dict(row, answerText="", answerEntity=[]), "ja", "row 2")


def _mintaka_hub_tables(langs=("en", "ja")) -> dict:
    """Rows of the Hub's per-language configs: 10 questions in train, 5 in validation, 5 in test."""
    ids = {"train": range(10), "validation": range(10, 15), "test": range(15, 20)}
    return {(lang, split): [{"id": f"h{i:02d}", "lang": lang, "question": f"{lang} q{i}", "answerText": f"A{i}",
                             "category": "music", "complexityType": "generic", "questionEntity": [],
                             "answerEntity": [{"name": f"Q{i}", "label": f"{lang} L{i}"}]} for i in numbers]
            for lang in langs for split, numbers in ids.items()}


def test_mintaka_hub_pools_its_splits_per_language(fake_hub):
    tables = _mintaka_hub_tables()
    fake_hub(tables)
    cfg = MintakaConfig(name="mintaka", hub_id="AmazonScience/mintaka", test_size=4, dev_size=3)
    bench = Mintaka(cfg, "unused")
    assert bench.languages() == ["ar", "de", "en", "es", "fr", "hi", "it", "ja", "pt"] and bench.language_note is None
    expected = split_question_ids([f"h{i:02d}" for i in range(20)], 4, 3, 0)
    assert split_ids(bench, "ja") == split_ids(bench, "en") == expected
    assert bench.load("ja", "test")[0].references == (f"ja L{int(expected['test'][0][1:])}",
                                                      f"A{int(expected['test'][0][1:])}")
    before = bench.fingerprint()
    tables[("en", "validation")][0]["answerText"] = "changed"
    assert Mintaka(cfg, "unused").fingerprint() != before
    del tables[("ja", "test")][2]
    with pytest.raises(BenchmarkDataError, match=r"the questions of 'ja' in Hub dataset 'AmazonScience/mintaka' are "
                                                 r"not those of 'en' \(1 missing, e.g. \['h17'\]; 0 extra"):
        Mintaka(cfg, "unused").load("ja", "test")
    tables[("ja", "test")].append(tables[("ja", "train")][0])
    with pytest.raises(BenchmarkDataError, match=r"ja/test row 4 repeats id 'h00'; ids must be unique across splits"):
        Mintaka(cfg, "unused").load("ja", "test")


# ------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name, schema, max_new_tokens", [("mkqa_cbqa", MkqaConfig, 32),
                                                          ("mintaka", MintakaConfig, 64)])
def test_composed_config_is_typed(name, schema, max_new_tokens):
    from xlt_runner.composition import compose

    cfg = compose([f"benchmark={name}", "languages=qa_english"])
    assert OmegaConf.get_type(cfg.benchmark) is schema
    b = cfg.benchmark
    assert (b.name, b.task, b.data_dir, b.test_size, b.dev_size, b.split_seed, b.max_new_tokens) == (
        name, "generation", None, 500, 200, 0, max_new_tokens)
    assert list(cfg.languages.source) == ["en"] and list(cfg.languages.groups) == ["all-en", "joshi5-en", "all-joshi5"]
    with pytest.raises(ConfigCompositionException):
        compose([f"benchmark={name}", "benchmark.test_size=many"])


# --------------------------------------------------------------------------- real data
@pytest.mark.skipif(not MIA_DIR.exists(), reason="needs the shared MKQA data (not in CI)")
def test_real_mia2022_dev():
    bench = mkqa(MIA_DIR, test_size=500, dev_size=200)
    assert len(bench.languages()) == 12
    splits = {lang: split_ids(bench, lang) for lang in ("en", "ja", "zh_cn")}
    assert {split: len(ids) for split, ids in splits["en"].items()} == {"train": 1058, "dev": 200, "test": 500}
    assert len({qid for ids in splits["en"].values() for qid in ids}) == 1758
    assert splits["en"]["test"] == splits["ja"]["test"] == splits["zh_cn"]["test"]


@pytest.mark.skipif(not MINTAKA_DIR.exists(), reason="needs the shared Mintaka data (not in CI)")
def test_real_mintaka_v10_dev():
    bench = mintaka(MINTAKA_DIR, test_size=500, dev_size=200)
    assert bench.languages() == ["en"]
    sizes = {split: len(ids) for split, ids in split_ids(bench, "en").items()}
    assert sizes == {"train": 1300, "dev": 200, "test": 500}
