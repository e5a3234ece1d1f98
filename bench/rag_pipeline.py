"""QTT-RAG's batched, cached pipeline against the same stages one passage at a time.

Three runs of ``xlt-run`` (each in its own process, same queries, same models, method
``qtt_rag`` by default), side by side:

- **one_at_a_time**: every stage at batch size 1 (query encoding, translation, judging,
  generation) and no cache shared between runs: the peer's way, translating and scoring each
  document on its own;
- **batched_cold**: the pipeline as it runs (length-sorted batches) into an empty cache file;
- **warm_other_generator**: the same cache file, another generator (``--warm-model``): retrieval,
  translations and judgements come from the cache; only the generator runs.

The corpus index (passage embeddings) is built once before the three, untimed, and shared: it
is the same work for every contender and is cached on disk in real use too. Timed: the test
stage of each run (``timings.test_s``: the pipeline, stage models' loading included), the
process's wall time and its CPU time (user + system: the figure to read when other jobs share
the machine). Printed: queries per second and two ratios, batched_cold over
one_at_a_time (goal >= 3x) and warm over cold (goal >= 5x), with the cache counters that show
what the warm run recomputed (nothing upstream of generation).

    .venv/bin/python bench/rag_pipeline.py [--queries 20] [--threads 2]

``--smoke`` runs tiny random models on generated data in seconds (``tests/test_bench_smoke.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CACHE_DIR, REPO_ROOT, environment  # noqa: E402

SHARED = (REPO_ROOT / ".." / "shared" / "data").resolve()
CONTENDERS = ("one_at_a_time", "batched_cold", "warm_other_generator")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries-path", default=str(SHARED / "wiki_passages" / "derived" / "queries.jsonl"))
    p.add_argument("--corpus-path", default=str(SHARED / "wiki_passages" / "derived" / "passages.jsonl"))
    p.add_argument("--language", default="zh")
    p.add_argument("--queries", type=int, default=20, help="questions of --language (XQuAD test split)")
    p.add_argument("--method", default="qtt_rag")
    p.add_argument("--model", default="smollm2_135m", help="the generator of the two cold runs")
    p.add_argument("--warm-model", default="gemma3_270m", help="the generator of the warm rerun")
    p.add_argument("--cache-dir", default=str(REPO_ROOT / DEFAULT_CACHE_DIR))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "rag_pipeline.json"))
    p.add_argument("--smoke", action="store_true", help="seconds-long check: tiny models, generated data")
    return p.parse_args(argv)


def base_overrides(args, work: Path) -> list[str]:
    """The run config every contender shares (experiment=qtt_cpu's models and sizes)."""
    common = [f"method={args.method}", f"benchmark.queries_path={args.queries_path}",
              f"benchmark.corpus.path={args.corpus_path}", f"languages.targets=[{args.language}]",
              f"benchmark.max_eval_examples_per_language={args.queries}", f"paths.cache_dir={args.cache_dir}",
              "trainer.enable_progress_bar=false"]
    if args.smoke:
        return ["benchmark=rag_local", "languages=rag_paper", "logger=none", "model.max_length=1024",
                "benchmark.max_new_tokens=4", "model@method.retriever.model=tiny_xlmr",
                "model@method.translator.model=tiny_llama", "model@method.judge.model=tiny_llama",
                "method.translator.max_input_tokens=32", "method.translator.model.max_length=1024",
                "method.judge.model.max_length=1024", "method.judge.max_new_tokens=8", "method.reranker.top_n=3",
                *common]
    return ["experiment=qtt_cpu", *common]


def contender_overrides(name: str, args, work: Path) -> list[str]:
    cache = f"method.cache.path={work / 'cache.sqlite'}"
    if name == "one_at_a_time":
        return ["method.cache.enabled=false", "method.retriever.batch_size=1", "method.translator.batch_size=1",
                "method.judge.batch_size=1", "benchmark.eval_batch_size=1", f"model={args.model}"]
    if name == "batched_cold":
        return [cache, f"model={args.model}"]
    return [cache, f"model={args.warm_model}", "model.max_length=2048"]


def run(overrides: list[str], threads: int) -> dict:
    """One ``xlt-run`` process; its record and wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "xlt_runner", *overrides], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=env)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"error: xlt-run {' '.join(overrides)} failed (exit {proc.returncode})")
    root = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.output_root=")))
    records = sorted(root.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return {"record": json.loads(records[-1].read_text()), "process_wall_s": wall, "process_cpu_s": cpu}


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rag_bench_") as tmp:
        work = Path(tmp)
        if args.smoke:
            args.queries_path, args.corpus_path, args.language = _smoke_data(work)
            args.model = args.warm_model = "tiny_llama"
        base = base_overrides(args, work)
        print("[bench] building the corpus index once (untimed, shared by every contender)")
        run([*base, "method=rag_base", "benchmark.max_eval_examples_per_language=1", "method.cache.enabled=false",
             f"model={args.model}", f"paths.output_root={work / 'index'}"], args.threads)
        runs = {}
        for name in CONTENDERS:
            out = run([*base, *contender_overrides(name, args, work), f"paths.output_root={work / name}"], args.threads)
            record = out["record"]
            n = sum(r["n"] for r in record["per_language"].values())
            runs[name] = {"queries": n, "test_s": record["timings"]["test_s"], "process_wall_s": out["process_wall_s"],
                          "process_cpu_s": out["process_cpu_s"], "queries_per_s": n / record["timings"]["test_s"],
                          "queries_per_cpu_s": n / out["process_cpu_s"], "cache": record["rag"]["cache"],
                          "models_loaded": record["rag"]["models_loaded"], "stage_s": record["rag"]["timings_s"],
                          "generator": record["model"]}
            print(f"[bench] {name}: {n} queries, test stage {record['timings']['test_s']:.1f} s "
                  f"({runs[name]['queries_per_s']:.3f} queries/s), process {out['process_wall_s']:.1f} s wall, "
                  f"{out['process_cpu_s']:.1f} CPU s; "
                  f"loaded {runs[name]['models_loaded']}")
    cold, one, warm = runs["batched_cold"], runs["one_at_a_time"], runs["warm_other_generator"]
    ratios = {"batched_cold_over_one_at_a_time": cold["queries_per_s"] / one["queries_per_s"],
              "warm_over_cold": warm["queries_per_s"] / cold["queries_per_s"],
              "batched_cold_over_one_at_a_time_cpu": cold["queries_per_cpu_s"] / one["queries_per_cpu_s"],
              "warm_over_cold_cpu": warm["queries_per_cpu_s"] / cold["queries_per_cpu_s"]}
    print(f"[bench] batched+cached cold vs one at a time: {ratios['batched_cold_over_one_at_a_time']:.2f}x queries/s "
          f"of the test stage, {ratios['batched_cold_over_one_at_a_time_cpu']:.2f}x per process CPU second (goal >= 3x)")
    print(f"[bench] warm rerun with {args.warm_model} vs cold: {ratios['warm_over_cold']:.2f}x queries/s, "
          f"{ratios['warm_over_cold_cpu']:.2f}x per CPU second (goal >= 5x); warm cache counters: {warm['cache']}")
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": vars(args), "environment": environment(), "runs": runs,
                                "ratios": ratios}, indent=2))
    print(f"[bench] wrote {path}")


def _smoke_data(work: Path) -> tuple[str, str, str]:
    """A 6-passage corpus and 3 English questions (tiny models, seconds)."""
    passages = [("en-1", "en", "Helsinki", "Helsinki is the capital of Finland."),
                ("ko-1", "ko", "서울", "서울은 대한민국의 수도이다."), ("fi-1", "fi", "Oulu", "Oulu on kaupunki Suomessa."),
                ("en-2", "en", "Jazz", "Jazz began in New Orleans."), ("zh-1", "zh", "北京", "北京是中国的首都。"),
                ("ko-2", "ko", "부산", "부산은 항구 도시이다.")]
    queries = [("q1", "What is the capital of Finland?", ["Helsinki"], "en-1"),
               ("q2", "Where did jazz begin?", ["New Orleans"], "en-2"), ("q3", "Which city is a port?", ["Busan"], "ko-2")]
    corpus, questions = work / "passages.jsonl", work / "queries.jsonl"
    corpus.write_text("".join(json.dumps({"pid": p, "lang": l, "title": t, "text": x}, ensure_ascii=False) + "\n"
                              for p, l, t, x in passages), encoding="utf-8")
    questions.write_text("".join(json.dumps({"qid": q, "lang": "en", "question": t, "answers": a, "gold_pid": g,
                                             "split": "test"}) + "\n" for q, t, a, g in queries), encoding="utf-8")
    return str(questions), str(corpus), "en"


if __name__ == "__main__":
    main()
