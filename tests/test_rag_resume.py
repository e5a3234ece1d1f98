"""A rag run killed mid-stage resumes from the content cache: what finished batches stored is not
recomputed, and the relaunch ends with the same answers and passages as an undisturbed run."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, find_records

PASSAGES = [("en-1", "en", "Helsinki", "Helsinki is the capital of Finland. It lies on the Gulf of Finland."),
            ("en-2", "en", "Seoul", "Seoul is the capital of South Korea. About ten million people live there."),
            ("en-3", "en", "Photosynthesis", "Plants turn light into chemical energy by photosynthesis."),
            ("ko-1", "ko", "서울", "서울은 대한민국의 수도이다. 한강이 도시를 가로지른다."),
            ("zh-1", "zh", "北京", "北京是中华人民共和国的首都。"),
            ("fi-1", "fi", "Helsinki", "Helsinki on Suomen pääkaupunki ja suurin kaupunki."),
            ("en-4", "en", "Jazz", "Jazz is a music genre that originated in New Orleans in the late 19th century.")]
QUERIES = [("q1", "ko", "핀란드의 수도는 어디인가?", ["헬싱키"], "fi-1"), ("q2", "ko", "대한민국의 수도는?", ["서울"], "ko-1"),
           ("q3", "zh", "芬兰的首都是哪里？", ["赫尔辛基"], "en-1"), ("q4", "zh", "韩国的首都是哪里？", ["首尔"], "en-2")]

#: Runs the CLI after wrapping RagCache.put_many: SIGKILL right after the KILL_AT-th stored batch of
#: translated chunks (the batch is committed; the stage is not finished).
KILLING_LAUNCHER = """
import os, signal, sys
from xlt_runner.rag import cache
stored = []
original = cache.RagCache.put_many
def put_many(self, stage, items):
    original(self, stage, items)
    if stage == "translation_chunk":
        stored.append(len(items))
        if len(stored) == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
cache.RagCache.put_many = put_many
from xlt_runner.cli import run_main
sys.argv = ["xlt-run", *sys.argv[1:]]
run_main()
"""


def write_data(root):
    corpus, queries = root / "passages.jsonl", root / "queries.jsonl"
    corpus.write_text("".join(json.dumps({"pid": p, "lang": l, "title": t, "text": x}, ensure_ascii=False) + "\n"
                              for p, l, t, x in PASSAGES), encoding="utf-8")
    queries.write_text("".join(json.dumps({"qid": q, "lang": l, "question": t, "answers": a, "gold_pid": g},
                                          ensure_ascii=False) + "\n" for q, l, t, a, g in QUERIES), encoding="utf-8")
    return corpus, queries


def args_for(root, out, cache):
    corpus, queries = write_data(root)
    return ["method=qtt_rag", "benchmark=rag_local", "model=tiny_llama", "languages=rag_paper",
            "languages.targets=[ko,zh]", f"benchmark.queries_path={queries}", f"benchmark.corpus.path={corpus}",
            "model.max_length=1024", "benchmark.max_new_tokens=6", "model@method.retriever.model=tiny_xlmr",
            "model@method.translator.model=tiny_llama", "model@method.judge.model=tiny_llama",
            "method.translator.max_input_tokens=12", "method.translator.model.max_length=1024",
            "method.translator.batch_size=2", "method.translator.max_new_tokens_extra=4",
            "method.translator.max_new_tokens_ratio=0.5", "method.judge.model.max_length=1024",
            "method.judge.max_new_tokens=8", "method.reranker.top_n=3", "logger=none",
            "trainer.enable_progress_bar=false", f"paths.output_root={out}", f"paths.cache_dir={cache}"]


def launch(args, env_extra=None, code=None):
    import os
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env_extra or {})}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "xlt_runner", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def predictions(record_dir):
    rows = [json.loads(line) for line in (record_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["id"], r["prediction"], [(p["pid"], p["text"], p["tag"]) for p in r["passages"]]) for r in rows]


def test_a_run_killed_during_translation_resumes_from_its_stored_batches(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean_args = args_for(tmp_path / "a", tmp_path / "clean_out", tmp_path / "clean_cache")
    clean = launch(clean_args)
    assert clean.returncode == 0, clean.stderr[-3000:]
    [clean_record] = find_records(tmp_path / "clean_out")
    chunks = clean_record["rag"]["cache"]["translation_chunk"]["computed"]
    batches = -(-chunks // 2)
    assert batches >= 4, f"the test needs several translation batches, got {chunks} chunks"
    kill_at = batches // 2 + 1  # past half the stage's batches

    args = args_for(tmp_path / "b", tmp_path / "out", tmp_path / "cache")
    killed = launch(args, {"KILL_AT": str(kill_at)}, KILLING_LAUNCHER)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-3000:]
    [record] = find_records(tmp_path / "out")
    assert record["status"] == "running"  # the killed attempt never wrote an end

    resumed = launch(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [record] = find_records(tmp_path / "out")
    assert record["status"] == "complete" and record["attempt"] == 2
    counters = record["rag"]["cache"]["translation_chunk"]
    assert counters["cached"] == 2 * kill_at  # the stored batches were reused ...
    assert counters["computed"] == chunks - 2 * kill_at  # ... and only the rest translated
    assert record["rag"]["cache"]["retrieval"]["computed"] == 0  # stored before the kill
    out_dir = next((tmp_path / "out").rglob("results.json")).parent
    clean_dir = next((tmp_path / "clean_out").rglob("results.json")).parent
    assert predictions(out_dir) == predictions(clean_dir)
