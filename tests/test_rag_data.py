"""The rag task's data: the passage corpus (xlt_runner/rag/corpus.py) and the rag benchmarks
(xlt_runner/data/rag_benchmarks.py: mkqa through the MKQA reader, xor_tydi, rag_local), their
errors, fingerprints and composed configs. Data are written in tmp_path; the last tests read the
real copies under ../shared/data in place and are skipped without them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf

from xlt_runner.config import ConfigError
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, GenerationExample
from xlt_runner.data.qa import MkqaCbqa, MkqaConfig
from xlt_runner.data.rag_benchmarks import (MkqaRagConfig, RagBenchmarkConfig, RagLocal, RagLocalConfig, XorTydi,
                                            XorTydiConfig)
from xlt_runner.rag import Passage
from xlt_runner.rag.corpus import CorpusConfig, load_corpus

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the read-only data beside the checkout
PASSAGES = SHARED / "wiki_passages" / "derived" / "passages.jsonl"
QUERIES = SHARED / "wiki_passages" / "derived" / "queries.jsonl"
XOR_DIR = SHARED / "xor_tydi_qa"
MIA_DIR = SHARED / "mkqa" / "mia2022_dev"

CORPUS_ROWS = [
    {"pid": "en-1", "lang": "en", "title": "Seoul", "text": "Seoul is the capital of South Korea."},
    {"pid": "ko-1", "lang": "ko", "title": "서울", "text": "서울은 대한민국의 수도이다."},
    {"pid": "en-2", "lang": "en", "text": "Helsinki is the capital of Finland."},
    {"pid": "x-1", "title": "Untagged", "text": "A passage without a declared language."},
    {"pid": "fi-1", "lang": "fi", "title": "Helsinki", "text": "Helsinki on Suomen pääkaupunki."},
]


def write_lines(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def corpus_file(tmp_path: Path, rows=CORPUS_ROWS, name="passages.jsonl") -> Path:
    return write_lines(tmp_path / name, rows)


# ------------------------------------------------------------------------------ corpus
def test_corpus_reads_passages_in_file_order(tmp_path):
    corpus = load_corpus(CorpusConfig(path=str(corpus_file(tmp_path))))
    assert [p.pid for p in corpus.passages] == ["en-1", "ko-1", "en-2", "x-1", "fi-1"]
    assert corpus.passages[2] == Passage(pid="en-2", title="", text="Helsinki is the capital of Finland.", lang="en")
    assert corpus.passages[3].lang is None
    assert corpus.by_pid["ko-1"].title == "서울"
    assert corpus.language_counts == {"en": 2, "ko": 1, None: 1, "fi": 1}
    assert str(tmp_path / "passages.jsonl") in corpus.location


def test_corpus_language_filter_and_cap(tmp_path):
    path = str(corpus_file(tmp_path))
    assert [p.pid for p in load_corpus(CorpusConfig(path=path, languages=["en", "fi"])).passages] == [
        "en-1", "en-2", "fi-1"]
    assert [p.pid for p in load_corpus(CorpusConfig(path=path, languages=["en", "fi"], max_passages=2)).passages] == [
        "en-1", "en-2"]
    assert [p.pid for p in load_corpus(CorpusConfig(path=path, max_passages=3)).passages] == ["en-1", "ko-1", "en-2"]
    node = OmegaConf.structured(CorpusConfig(path=path, languages=["ko", "fi"]))  # as a composed run config gives it
    assert [p.pid for p in load_corpus(node).passages] == ["ko-1", "fi-1"]


def test_corpus_fingerprint_is_content(tmp_path):
    full = load_corpus(CorpusConfig(path=str(corpus_file(tmp_path / "a")))).fingerprint
    # the same passages elsewhere, keys reordered and spaced differently: the same content
    reordered = [json.dumps(dict(reversed(list(r.items()))), ensure_ascii=False, indent=None, separators=(", ", ":"))
                 for r in CORPUS_ROWS]
    assert load_corpus(CorpusConfig(path=str(corpus_file(tmp_path / "b", reordered)))).fingerprint == full
    changed = [dict(r) for r in CORPUS_ROWS]
    changed[4]["text"] += "!"
    assert load_corpus(CorpusConfig(path=str(corpus_file(tmp_path / "c", changed)))).fingerprint != full
    retitled = [dict(r) for r in CORPUS_ROWS]
    retitled[0]["title"] = "Soul"
    assert load_corpus(CorpusConfig(path=str(corpus_file(tmp_path / "d", retitled)))).fingerprint != full
    path = str(tmp_path / "a" / "passages.jsonl")
    filtered = load_corpus(CorpusConfig(path=path, languages=["en", "ko", "fi"])).fingerprint
    capped = load_corpus(CorpusConfig(path=path, max_passages=4)).fingerprint
    assert len({full, filtered, capped}) == 3


def test_corpus_from_the_hub_matches_the_file(tmp_path, monkeypatch):
    calls = []

    def load_dataset(hub_id, config, split, revision):
        calls.append((hub_id, config, split, revision))
        return [{"id": r["pid"], **{k: v for k, v in r.items() if k != "pid"}} for r in CORPUS_ROWS]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = load_corpus(CorpusConfig(hub_id="me/passages", hub_config="wiki", hub_revision="v1"))
    assert calls == [("me/passages", "wiki", "train", "v1")]
    assert hub.fingerprint == load_corpus(CorpusConfig(path=str(corpus_file(tmp_path)))).fingerprint
    assert "Hub dataset 'me/passages' config 'wiki' split 'train'" == hub.location


def test_corpus_hub_offline_names_the_local_way(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'me/passages' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkDataError, match=r"benchmark.corpus: could not load the Hub dataset 'me/passages' .*"
                                                 r"ConnectionError.*Use a local jsonl copy instead \(benchmark.corpus"
                                                 r".path=<file of"):
        load_corpus(CorpusConfig(hub_id="me/passages"))


def test_corpus_without_source_or_with_empty_filters():
    with pytest.raises(ConfigError, match=r"benchmark.corpus has no source: set benchmark.corpus.path .* or "
                                          r"benchmark.corpus.hub_id"):
        load_corpus(CorpusConfig())
    with pytest.raises(ConfigError, match=r"^method.corpus has no source: set method.corpus.path"):
        load_corpus(CorpusConfig(), key="method.corpus")
    with pytest.raises(ConfigError, match=r"benchmark.corpus.max_passages=0 must be at least 1"):
        load_corpus(CorpusConfig(path="x.jsonl", max_passages=0))
    with pytest.raises(ConfigError, match=r"benchmark.corpus.languages is empty"):
        load_corpus(CorpusConfig(path="x.jsonl", languages=[]))


@pytest.mark.parametrize("rows, message", [
    (CORPUS_ROWS[:2] + ['{"pid": "bad", "text": '], r"passages.jsonl' line 3 is not valid JSON"),
    (CORPUS_ROWS[:1] + [{"pid": "t", "title": "no text"}], r"passages.jsonl' line 2: passage 't' has no text"),
    (CORPUS_ROWS[:1] + [{"pid": "t", "text": "  "}], r"line 2: passage 't' has no text"),
    ([{"title": "no pid", "text": "x"}], r"passages.jsonl' line 1: no pid \(got None\)"),
    ([["a", "list"]], r"line 1: expected a JSON object"),
    ([{"pid": "t", "text": "x", "lang": 3}], r"line 1: passage 't' has lang 3"),
    (CORPUS_ROWS + [{"pid": "ko-1", "lang": "ko", "text": "again"}],
     r"passages.jsonl' line 6 repeats pid 'ko-1' \(first at benchmark.corpus: .*passages.jsonl' line 2\)"),
    ([], r"benchmark.corpus: corpus file .*passages.jsonl' holds no passages"),
])
def test_corpus_bad_records(tmp_path, rows, message):
    with pytest.raises(BenchmarkDataError, match=message):
        load_corpus(CorpusConfig(path=str(corpus_file(tmp_path, rows))))


def test_corpus_missing_file_and_empty_filter(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"benchmark.corpus.path='.*nowhere.jsonl': no such file; point it "
                                                 r"at a jsonl file"):
        load_corpus(CorpusConfig(path=str(tmp_path / "nowhere.jsonl")))
    with pytest.raises(BenchmarkDataError, match=r"benchmark.corpus.languages=\['zh'\] keeps none of the 5 passages "
                                                 r"of corpus file .*, whose declared languages are: en \(2\), ko \(1\), "
                                                 r"undeclared \(1\), fi \(1\)"):
        load_corpus(CorpusConfig(path=str(corpus_file(tmp_path)), languages=["zh"]))


# --------------------------------------------------------------------------- mkqa (rag)
def write_mia(root: Path, langs=("en", "ko", "fi"), n=12) -> Path:
    for lang in langs:
        write_lines(root / f"mkqa-{lang}.jsonl", [{"id": f"{i}_{lang}", "lang": lang, "question": f"{lang} q{i}?",
                                                   "answers": [f"{lang} a{i}"]} for i in range(n)])
    return root


def test_mkqa_is_the_mkqa_cbqa_reader_with_a_rag_schema(tmp_path):
    assert BENCHMARKS.get("mkqa") is BENCHMARKS.get("mkqa_cbqa") is MkqaCbqa
    assert BENCHMARKS.schema("mkqa") is MkqaRagConfig and BENCHMARKS.schema("mkqa_cbqa") is MkqaConfig
    assert issubclass(MkqaRagConfig, RagBenchmarkConfig) and issubclass(MkqaRagConfig, MkqaConfig)
    node = OmegaConf.structured(MkqaRagConfig(name="mkqa", data_dir=str(write_mia(tmp_path)), test_size=5))
    assert (node.task, node.dev_size, node.hub_revision, node.corpus.path) == ("rag", 0, None, None)
    rag = BENCHMARKS.get("mkqa")(node, "unused")
    cbqa = MkqaCbqa(MkqaConfig(name="mkqa_cbqa", data_dir=str(tmp_path), test_size=5, dev_size=0), "unused")
    assert (rag.name, rag.task) == ("mkqa", "rag")
    assert rag.load("ko", "test") == cbqa.load("ko", "test") and len(rag.load("ko", "test")) == 5
    with pytest.raises(BenchmarkDataError, match=r"^mkqa: no language 'zh' in data directory"):
        rag.load("zh", "test")


# ------------------------------------------------------------------------------ xor_tydi
XOR_ROWS = [
    {"id": "1", "question": "누가?", "answers": ["세종", " 세종 ", "세종대왕"], "lang": "ko", "split": "dev"},
    {"id": "2", "question": "Kuka?", "answers": ["Sibelius"], "lang": "fi", "split": "dev"},
    {"id": "3", "question": "언제?", "answers": ["", "  "], "lang": "ko", "split": "dev"},
    {"id": "4", "question": "어디?", "answers": ["서울"], "lang": "ko", "split": "dev"},
    {"id": "5", "question": "Missä?", "answers": [], "lang": "fi", "split": "dev"},
]


def xor(root: Path, **fields) -> XorTydi:
    return XorTydi(XorTydiConfig(name="xor_tydi", data_dir=str(root), **fields), "unused")


def test_xor_tydi_per_language_questions(tmp_path):
    write_lines(tmp_path / "xor_dev_full_v1_1.jsonl", XOR_ROWS)
    bench = xor(tmp_path)
    assert (bench.task, bench.languages()) == ("rag", ["fi", "ko"])
    assert bench.load("ko", "test") == [
        GenerationExample(id="1", lang="ko", prompt="누가?", references=("세종", "세종대왕"), completion="세종"),
        GenerationExample(id="4", lang="ko", prompt="어디?", references=("서울",), completion="서울")]
    assert [e.id for e in bench.load("fi", "test")] == ["2"]
    assert bench.dropped_questions == 2
    assert bench.language_note == "2 questions without a non-empty answer left out (fi 1, ko 1)"
    assert XorTydi.language_table().codes == ["ar", "bn", "fi", "ja", "ko", "ru", "te"]


def test_xor_tydi_is_evaluation_only(tmp_path):
    write_lines(tmp_path / "xor_dev_full_v1_1.jsonl", XOR_ROWS)
    bench = xor(tmp_path)
    for split in ("train", "dev", "validation"):
        with pytest.raises(BenchmarkDataError, match=r"rag benchmarks are evaluation-only: .* no '(train|dev)' split"):
            bench.load("ko", split)
    with pytest.raises(BenchmarkDataError, match=r"no language 'ja' in file .* \(it has fi, ko"):
        bench.load("ja", "test")


def test_xor_tydi_file_choice_and_fingerprint(tmp_path):
    write_lines(tmp_path / "a" / "xor_dev_full_v1_1.jsonl", XOR_ROWS)
    write_lines(tmp_path / "a" / "mia_2022_dev_xorqa.jsonl", XOR_ROWS[:2])
    assert [e.id for e in xor(tmp_path / "a", file="mia_2022_dev_xorqa.jsonl").load("ko", "test")] == ["1"]
    fingerprint = xor(tmp_path / "a").fingerprint()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert xor(tmp_path / "b").fingerprint() == fingerprint
    assert xor(tmp_path / "a", file="mia_2022_dev_xorqa.jsonl").fingerprint() != fingerprint
    write_lines(tmp_path / "b" / "xor_dev_full_v1_1.jsonl", XOR_ROWS[:4])
    assert xor(tmp_path / "b").fingerprint() != fingerprint


def test_xor_tydi_from_the_hub(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config, split, revision: XOR_ROWS)
    bench = XorTydi(XorTydiConfig(name="xor_tydi", hub_id="me/xor"), "unused")
    assert bench.location == "Hub dataset 'me/xor' split 'validation'"
    assert [e.id for e in bench.load("ko", "test")] == ["1", "4"]


@pytest.mark.parametrize("rows, message", [
    (XOR_ROWS[:1] + ["{not json"], r"xor_dev_full_v1_1.jsonl' line 2 is not valid JSON"),
    (XOR_ROWS[:2] + [dict(XOR_ROWS[3], id="1")], r"line 3 repeats question id '1' \(first at .* line 1\)"),
    ([dict(XOR_ROWS[0], lang=None)], r"line 1: no \"lang\""),
    ([dict(XOR_ROWS[0], question=" ")], r"line 1: question '1' has no question text"),
    ([dict(XOR_ROWS[0], answers="세종")], r"line 1: answers of '1' must be a list of strings"),
    ([XOR_ROWS[2]], r"holds no question with an answer \(1 questions without a non-empty answer left out \(ko 1\)"),
])
def test_xor_tydi_bad_rows(tmp_path, rows, message):
    write_lines(tmp_path / "xor_dev_full_v1_1.jsonl", rows)
    with pytest.raises(BenchmarkDataError, match=message):
        xor(tmp_path).load("ko", "test")


def test_xor_tydi_missing_data(tmp_path):
    write_lines(tmp_path / "other.jsonl", XOR_ROWS)
    with pytest.raises(BenchmarkDataError, match=r"no xor_dev_full_v1_1.jsonl in data directory .* \(it has "
                                                 r"\['other.jsonl'\]\); set benchmark.file"):
        xor(tmp_path)
    with pytest.raises(BenchmarkDataError, match=r"data directory .*nowhere' does not exist"):
        xor(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"xor_tydi needs benchmark.data_dir .* or benchmark.hub_id"):
        XorTydi(XorTydiConfig(name="xor_tydi"), "unused")


# ----------------------------------------------------------------------------- rag_local
QUERY_ROWS = [
    {"qid": "q1", "lang": "ko", "question": "한국의 수도는?", "answers": ["서울"], "gold_pid": "ko-1", "split": "test"},
    {"qid": "q2", "lang": "en", "question": "Capital of Finland?", "answers": ["Helsinki"],
     "gold_pids": ["en-2", "fi-1", "en-2"], "split": "test"},
    {"qid": "q3", "lang": "ko", "question": "핀란드의 수도는?", "answers": ["헬싱키"], "gold_pid": "ko-404",
     "split": "train"},
    {"qid": "q4", "lang": "zh", "question": "韩国的首都?", "answers": [" "], "gold_pid": "en-1"},
]


def rag_local(path: Path, **fields) -> RagLocal:
    return RagLocal(RagLocalConfig(name="rag_local", queries_path=str(path), **fields), "unused")


def test_rag_local_queries_and_gold(tmp_path):
    bench = rag_local(write_lines(tmp_path / "queries.jsonl", QUERY_ROWS))
    assert bench.languages() == ["en", "ko"]
    assert bench.load("ko", "test") == [
        GenerationExample(id="q1", lang="ko", prompt="한국의 수도는?", references=("서울",), completion="서울"),
        GenerationExample(id="q3", lang="ko", prompt="핀란드의 수도는?", references=("헬싱키",), completion="헬싱키")]
    assert bench.gold_passages(["q2", "q1"]) == {"q2": ("en-2", "fi-1"), "q1": ("ko-1",)}
    assert bench.dropped_questions == 1 and "zh 1" in bench.language_note
    with pytest.raises(BenchmarkDataError, match=r"1 question ids are not in query file .*, e.g. \['q4'\]"):
        bench.gold_passages(["q1", "q4"])
    with pytest.raises(BenchmarkDataError, match=r"rag benchmarks are evaluation-only"):
        bench.load("ko", "train")
    corpus = load_corpus(CorpusConfig(path=str(corpus_file(tmp_path))))
    assert bench.check_gold_in_corpus(corpus) == ["ko-404"]
    assert bench.check_gold_in_corpus(corpus, languages=["en"]) == []
    assert bench.language_table().codes == ["en", "ko"]


def test_rag_local_query_split(tmp_path):
    path = write_lines(tmp_path / "queries.jsonl", QUERY_ROWS)
    bench = rag_local(path, query_split="test")
    assert [e.id for e in bench.load("ko", "test")] == ["q1"]
    assert "(rows of split 'test')" in bench.location
    assert bench.fingerprint() != rag_local(path).fingerprint() != rag_local(path, query_split="train").fingerprint()
    with pytest.raises(BenchmarkDataError, match=r"benchmark.query_split='dev' keeps no row of .*, whose splits are "
                                                 r"\{'test': 2, 'train': 1, None: 1\}"):
        rag_local(path, query_split="dev").languages()


@pytest.mark.parametrize("row, message", [
    ({"qid": "q9", "lang": "en", "question": "?", "answers": ["a"]}, r"line 5: query 'q9' has gold pids None"),
    ({"qid": "q9", "lang": "en", "question": "?", "answers": ["a"], "gold_pids": []}, r"query 'q9' has gold pids \[\]"),
    ({"qid": "q9", "lang": "en", "question": "?", "answers": ["a"], "gold_pid": 7}, r"query 'q9' has gold pids 7"),
    (dict(QUERY_ROWS[0], lang="en"), r"line 5 repeats question id 'q1' \(first at .* line 1\)"),
    ({"lang": "en", "question": "?", "answers": ["a"], "gold_pid": "p"}, r"line 5: no question id 'qid'"),
])
def test_rag_local_bad_rows(tmp_path, row, message):
    with pytest.raises(BenchmarkDataError, match=message):
        rag_local(write_lines(tmp_path / "queries.jsonl", QUERY_ROWS + [row])).languages()


def test_rag_local_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"rag_local needs benchmark.queries_path: .* \(e.g. benchmark.queries_path="
                                          r"../shared/data/wiki_passages/derived/queries.jsonl\)"):
        RagLocal(RagLocalConfig(name="rag_local"), "unused")
    with pytest.raises(ConfigError, match=r"rag_local reads benchmark.queries_path, not benchmark.data_dir"):
        RagLocal(RagLocalConfig(name="rag_local", data_dir=str(tmp_path)), "unused")
    with pytest.raises(BenchmarkDataError, match=r"benchmark.queries_path='.*nowhere.jsonl': no such file"):
        rag_local(tmp_path / "nowhere.jsonl")


# ------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name, schema, extra", [
    ("mkqa", MkqaRagConfig, {"test_size": 500, "dev_size": 0, "hub_id": "apple/mkqa"}),
    ("xor_tydi", XorTydiConfig, {"file": "xor_dev_full_v1_1.jsonl", "hub_id": None}),
    ("rag_local", RagLocalConfig, {"queries_path": None, "query_split": None}),
])
def test_composed_config_is_typed(name, schema, extra):
    from xlt_runner.composition import compose

    b = compose([f"benchmark={name}"]).benchmark
    assert OmegaConf.get_type(b) is schema
    assert (b.name, b.task, b.data_dir, b.max_new_tokens, list(b.stop_strings), b.eval_batch_size) == (
        name, "rag", None, 32, ["\n"], 8)
    assert OmegaConf.to_container(b.corpus) == OmegaConf.to_container(OmegaConf.structured(CorpusConfig))
    assert {key: b[key] for key in extra} == extra
    corpus = compose([f"benchmark={name}", "benchmark.corpus.languages=[en,ko]"]).benchmark.corpus
    assert list(corpus.languages) == ["en", "ko"]


# --------------------------------------------------------------------------- real data
@pytest.mark.skipif(not PASSAGES.exists(), reason="needs the shared wiki_passages data (not in CI)")
def test_real_passages():
    corpus = load_corpus(CorpusConfig(path=str(PASSAGES)))
    assert len(corpus.passages) == 6460
    assert corpus.language_counts == {"en": 4098, "ko": 1488, "fi": 634, "zh": 240}
    assert len(load_corpus(CorpusConfig(path=str(PASSAGES), languages=["zh"])).passages) == 240


@pytest.mark.skipif(not QUERIES.exists(), reason="needs the shared wiki_passages data (not in CI)")
def test_real_rag_local_zh_gold_in_corpus():
    bench = rag_local(QUERIES, query_split="test")
    assert {lang: len(bench.load(lang, "test")) for lang in bench.languages()} == {"en": 1190, "zh": 1190}
    corpus = load_corpus(CorpusConfig(path=str(PASSAGES)))
    assert bench.check_gold_in_corpus(corpus, languages=["zh"]) == []
    assert all(corpus.by_pid[pid].lang == "zh" for pids in bench.gold_passages(
        [e.id for e in bench.load("zh", "test")]).values() for pid in pids)


@pytest.mark.skipif(not XOR_DIR.exists(), reason="needs the shared XOR-TyDi data (not in CI)")
def test_real_xor_tydi():
    full = xor(XOR_DIR)
    assert full.languages() == ["ar", "bn", "fi", "ja", "ko", "ru", "te"]
    assert (len(full.load("ko", "test")), len(full.load("fi", "test")), full.dropped_questions) == (371, 615, 0)
    mia = xor(XOR_DIR, file="mia_2022_dev_xorqa.jsonl")
    assert (len(mia.load("ko", "test")), len(mia.load("fi", "test"))) == (473, 974)


@pytest.mark.skipif(not MIA_DIR.exists(), reason="needs the shared MKQA data (not in CI)")
def test_real_mkqa_rag():
    bench = BENCHMARKS.get("mkqa")(MkqaRagConfig(name="mkqa", data_dir=str(MIA_DIR), test_size=500), "unused")
    assert {lang: len(bench.load(lang, "test")) for lang in ("ko", "fi", "zh_cn")} == {"ko": 500, "fi": 500,
                                                                                        "zh_cn": 500}
