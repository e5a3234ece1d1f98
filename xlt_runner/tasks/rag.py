"""Multilingual retrieval-augmented QA (``benchmark.task=rag``): MKQA, XOR-TyDi, local query files.

A decoder answers each test question from passages the method's pipeline retrieved from the
benchmark's corpus (:mod:`xlt_runner.rag.pipeline`); nothing trains. The test stage runs the
pipeline in Lightning's predict loop and writes ``predictions.jsonl``: per query the answer, its
scores, and every passage shown (rank, languages, translation, tag, judged scores, whether it was
filtered or cut). Per language: character 3-gram recall (the primary metric), the answer-language
rate, r_lang (share of shown passages not in the query language: what translating methods
translate), the hard filter's retained ratio, the judge's failure rate and, with gold passages
(``rag_local``), retrieval recall at top-n and top-k over the queries whose gold passage is in
the corpus (``retrieval_recall_n`` of them; None when there is none, e.g. a corpus filtered to
other languages).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlt_runner.config import ConfigError
from xlt_runner.data import GenerationExample
from xlt_runner.metrics.rag import RAG_METRICS
from xlt_runner.tasks import TASK_KINDS, TaskKind
from xlt_runner.tasks.generation import PREDICTIONS_FILE, write_predictions


@dataclass
class RagQueries:
    """The test questions of a rag run, every target language's in order (capped by
    ``benchmark.max_eval_examples_per_language``: the first ids in a seeded hash order)."""
    examples: list[GenerationExample]
    subsampled_ids: dict[str, list[str]]


@dataclass
class RagTask:
    """What the rag method is told: its queries, the corpus, where caches live, generation limits."""
    examples: list[GenerationExample]
    eval_languages: list[str]
    corpus: Any
    cache_dir: str
    generator_cfg: Any
    max_new_tokens: int
    stop_strings: list[str]
    batch_size: int  # the generator's: benchmark.eval_batch_size
    language_identifier: str  # benchmark.language_identifier: every shown passage's language and every answer's
    gold: dict[str, tuple[str, ...]] | None  # question id -> its gold passages in the corpus (rag_local)
    gold_missing: int = 0  # gold passages of the target languages' questions that the corpus lacks

    def results(self, rows: list[dict], method_cfg) -> dict[str, dict]:
        return per_language_results(rows, self.eval_languages, method_cfg, self.gold)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def per_language_results(rows: list[dict], languages: list[str], method_cfg, gold) -> dict[str, dict]:
    """The record's ``per_language`` from the prediction rows (see the module docstring); a rate
    whose denominator is 0 is None."""
    results = {}
    for lang in languages:
        mine = [r for r in rows if r["lang"] == lang]
        if not mine:
            continue
        answered = [r["scores"]["answer_in_query_language"] for r in mine
                    if r["scores"]["answer_in_query_language"] is not None]
        retrieved = sum(r["retrieved"] for r in mine)
        translated = sum(r["translated"] for r in mine)
        judged = sum(r["judged"] for r in mine)
        out = {"char3_recall": _mean([r["scores"]["char3_recall"] for r in mine]),
               "answer_language_rate": _mean([float(a) for a in answered]),
               "r_lang": sum(r["foreign"] for r in mine) / retrieved if retrieved else None,
               "retained_ratio": ((translated - sum(r["filtered"] for r in mine)) / translated
                                  if method_cfg.hard_filter is not None and translated else None),
               "judge_failure_rate": sum(r["judge_failures"] for r in mine) / judged if judged else None}
        if gold is not None:  # over the queries whose gold passage is in the corpus (None: no such query)
            scored = [r for r in mine if r["id"] in gold]
            shown = [any(p["pid"] in gold[r["id"]] for p in r["passages"]) for r in scored]
            top_k = [any(pid in gold[r["id"]] for pid in r["top_k"]) for r in scored]
            out.update(retrieval_recall=_mean([float(x) for x in shown]), retrieval_recall_at_k=_mean([float(x) for x in top_k]),
                       retrieval_recall_n=len(scored))
        out["n"] = len(mine)
        results[lang] = out
    return results


@TASK_KINDS.register("rag")
class Rag(TaskKind):
    """Retrieval-augmented generation; no training, no dev metric."""
    metrics = RAG_METRICS
    primary_metric = "char3_recall"
    monitors: dict[str, str] = {}
    model_kinds = ("decoder",)

    @classmethod
    def check_config(cls, cfg) -> None:
        from xlt_runner.tasks.generation import check_answer_settings
        if cfg.model.kind not in cls.model_kinds:
            raise ConfigError(f"benchmark={cfg.benchmark.name} is a rag benchmark: its generator (model=) must be a "
                              f"decoder; model={cfg.model.name} is {cfg.model.kind} (model.kind)")
        if cfg.trainer.monitor is not None:
            raise ConfigError(f"trainer.monitor={cfg.trainer.monitor!r}: rag runs do not train, so there is no dev "
                              f"metric; set trainer.monitor=null")
        if "fit" in cfg.regime.stages and list(cfg.regime.stages) != ["fit", "test"] or "test" not in cfg.regime.stages:
            raise ConfigError(f"regime={cfg.regime.name} runs stages {list(cfg.regime.stages)}; rag runs use "
                              f"regime=zero_shot (fit is skipped: nothing trains; test runs the pipeline)")
        check_answer_settings(cfg.benchmark)
        if cfg.model.max_length <= cfg.benchmark.max_new_tokens:
            raise ConfigError(f"model.max_length={cfg.model.max_length} leaves no room for the prompt after "
                              f"benchmark.max_new_tokens={cfg.benchmark.max_new_tokens}")

    def datamodule(self, source: list[str], targets: list[str], max_steps: int) -> RagQueries:
        from xlt_runner.data.generation import subsample_by_id
        limit = self.cfg.benchmark.max_eval_examples_per_language
        examples, subsampled = [], {}
        for lang in targets:
            every = self.benchmark.load(lang, "test")
            kept = subsample_by_id(every, limit)
            if len(kept) < len(every):
                subsampled[lang] = [e.id for e in kept]
            examples += kept
        return RagQueries(examples, subsampled)

    def method_task(self, datamodule: RagQueries, source: list[str]) -> RagTask:
        from xlt_runner.rag.corpus import load_corpus
        b = self.cfg.benchmark
        corpus = load_corpus(b.corpus)
        gold, gold_missing = None, []
        targets = list(dict.fromkeys(e.lang for e in datamodule.examples))
        if hasattr(self.benchmark, "gold_passages"):  # only gold passages the corpus holds can be retrieved
            pids = corpus.by_pid
            gold = {qid: kept for qid, passages in self.benchmark.gold_passages([e.id for e in datamodule.examples]).items()
                    if (kept := tuple(p for p in passages if p in pids))}
            gold_missing = self.benchmark.check_gold_in_corpus(corpus, targets)
            if gold_missing:
                print(f"[xlt-run] note: {len(gold_missing):,} gold passages of {', '.join(targets)} are not in the corpus "
                      f"({corpus.location}); retrieval recall counts only the {len(gold):,} tested queries whose "
                      f"gold passage is there")
        return RagTask(examples=datamodule.examples, eval_languages=targets, corpus=corpus,
                       cache_dir=self.cfg.paths.cache_dir, generator_cfg=self.cfg.model,
                       max_new_tokens=b.max_new_tokens, stop_strings=list(b.stop_strings),
                       batch_size=b.eval_batch_size, language_identifier=b.language_identifier, gold=gold,
                       gold_missing=len(gold_missing))

    def subsample_rule(self) -> dict:
        from xlt_runner.data.generation import SUBSAMPLE_SEED
        return {"by": "question id", "seed": SUBSAMPLE_SEED}

    def run_test(self, trainer, method, datamodule) -> None:
        method.run_pipeline(trainer)

    def test_summary(self, method) -> dict | None:
        corpus = method.task.corpus
        return {**method.summary, "corpus": {"location": corpus.location, "passages": len(corpus.passages),
                                             "languages": {str(k): v for k, v in corpus.language_counts.items()},
                                             "fingerprint": corpus.fingerprint},
                "gold_passages_missing": method.task.gold_missing if method.task.gold is not None else None}

    def write_test_outputs(self, method, run_dir: Path) -> dict[str, str]:
        write_predictions(Path(run_dir) / PREDICTIONS_FILE, method.test_predictions)
        return {"predictions": PREDICTIONS_FILE}
