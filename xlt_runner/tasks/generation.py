"""Generation (closed-book QA: MKQA, Mintaka): a decoder answers; scored per language on its text.

Training data are prompt + answer pairs (loss on the answer only); the dev metric is the
teacher-forced loss on the source languages' dev split (the CoCo-CoLa protocol); the test
stage generates greedily for every target language in one length-sorted pass and writes
``predictions.jsonl`` (one row per question: id, lang, prompt, prediction, references, scores),
from which ``xlt-rescore`` recomputes every metric without a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xlt_runner.data import GenerationExample
from xlt_runner.metrics.generation import GENERATION_METRICS, PerLanguageGeneration, score_prediction
from xlt_runner.metrics.math_answers import MATH_METRICS, PerLanguageMath, score_math_answer
from xlt_runner.tasks import TASK_KINDS, TaskKind

PREDICTIONS_FILE = "predictions.jsonl"


@dataclass(frozen=True)
class AnswerScoring:
    """How a generation task kind scores answers. ``score(prediction, references, lang,
    identifier) -> dict``: one example's scores (written to ``predictions.jsonl``, recomputed by
    ``xlt-rescore``); ``metric(num_languages)``: a torchmetrics metric with
    ``update_from_scores(lang_index, scores)`` and ``per_language()``; ``results(values,
    languages)``: its values as the record's ``per_language``."""
    score: Callable[..., dict]
    metric: Callable[[int], Any]
    results: Callable[[dict, list[str]], dict[str, dict]]


@dataclass
class GenerationTask:
    """What a generation method is told: evaluation languages (the index space of a batch's
    ``lang``), the test examples (the index space of a batch's ``index``: the data module's
    ``eval_examples``, filled when it sets up for testing), and how to generate and score."""
    eval_languages: list[str]
    source_languages: list[str]
    datamodule: Any
    max_new_tokens: int
    stop_strings: list[str]
    stop_token_ids: tuple[int, ...]
    language_identifier: str
    scoring: AnswerScoring
    train_roles: tuple[str, ...] = ()  # train_data runs: the datasets a batch's ``dataset`` indexes (ROLES)

    @property
    def examples(self) -> list[GenerationExample]:
        return self.datamodule.eval_examples


@TASK_KINDS.register("generation")
class Generation(TaskKind):
    """Decoder + prompt format; best checkpoint by source-dev loss; answers scored as QA answers."""
    metrics = GENERATION_METRICS
    primary_metric = "accuracy"
    scoring: AnswerScoring  # QA_SCORING, set below
    monitors = {"val/loss": "min"}
    model_kinds = ("decoder",)

    @classmethod
    def check_config(cls, cfg) -> None:
        from xlt_runner.data.generation import check_prompt_config
        super().check_config(cfg)
        check_prompt_config(cfg.model, training=True)
        check_answer_settings(cfg.benchmark)

    def __init__(self, cfg, benchmark, backbone) -> None:
        from xlt_runner.data.generation import PromptFormat
        super().__init__(cfg, benchmark, backbone)
        self.prompt_format = PromptFormat(cfg.model, backbone.tokenizer, training=True)
        self._references: dict[tuple[str, ...], dict] = {}  # tested question ids -> parallel gold answers

    def datamodule(self, source: list[str], targets: list[str], max_steps: int):
        """:class:`~xlt_runner.data.generation.GenerationDataModule`; with ``train_data``, the
        :class:`~xlt_runner.data.sft_data.SftDataModule` that trains on its datasets."""
        from xlt_runner.data.generation import GenerationDataModule
        from xlt_runner.data.sft_data import SftDataModule
        cfg, b = self.cfg, self.cfg.benchmark
        kind, extra = GenerationDataModule, {}
        if cfg.get("train_data") is not None:
            kind, extra = SftDataModule, {"train_data": cfg.train_data, "accumulate": cfg.trainer.accumulate_grad_batches,
                                          "run_benchmark": b}
        return kind(
            self.benchmark, self.backbone.tokenizer, self.prompt_format, source_languages=source,
            target_languages=targets, batch_size=b.batch_size, eval_batch_size=b.eval_batch_size,
            num_training_batches=max_steps * cfg.trainer.accumulate_grad_batches, seed=cfg.seed,
            cache_dir=cfg.paths.cache_dir, max_length=cfg.model.max_length, max_new_tokens=b.max_new_tokens,
            train_split=b.train_split, dev_split=b.dev_split, test_split=b.test_split,
            max_train_examples_per_language=b.max_train_examples_per_language,
            max_eval_examples_per_language=b.max_eval_examples_per_language, num_workers=b.num_workers, **extra)

    def method_task(self, datamodule, source: list[str]) -> GenerationTask:
        b = self.cfg.benchmark
        return GenerationTask(eval_languages=datamodule.eval_languages, source_languages=source,
                              datamodule=datamodule, max_new_tokens=b.max_new_tokens,
                              stop_strings=list(b.stop_strings), stop_token_ids=self.prompt_format.stop_token_ids,
                              language_identifier=b.language_identifier, scoring=self.scoring,
                              train_roles=getattr(datamodule, "roles", ()))

    def subsample_rule(self) -> dict:
        from xlt_runner.data.generation import SUBSAMPLE_SEED
        return {"by": "question id", "seed": SUBSAMPLE_SEED}

    def _parallel_references(self, method) -> dict[str, dict[str, list[str]]] | None:
        """Every language's gold answers to the tested questions, when the benchmark has them."""
        if not hasattr(self.benchmark, "parallel_references"):
            return None
        ids = tuple(dict.fromkeys(row["id"] for row in method.test_predictions))
        if ids not in self._references:
            self._references[ids] = self.benchmark.parallel_references(list(ids))
        return self._references[ids]

    def test_results(self, method) -> dict[str, dict]:
        """The method's per-language results plus, on parallel QA, the language-adherence measures
        (:data:`ADHERENCE_METRICS`) from its predictions and every language's gold answers."""
        references = self._parallel_references(method)
        if references is None:
            return method.test_results
        return with_adherence(method.test_results, method.test_predictions, references)

    def write_test_outputs(self, method, run_dir: Path) -> dict[str, str]:
        from xlt_runner.fileio import write_json_atomic
        write_predictions(Path(run_dir) / PREDICTIONS_FILE, method.test_predictions)
        outputs = {"predictions": PREDICTIONS_FILE}
        references = self._parallel_references(method)
        if references is not None:
            write_json_atomic(Path(run_dir) / PARALLEL_REFERENCES_FILE, references)
            outputs["parallel_references"] = PARALLEL_REFERENCES_FILE
        return outputs


def check_answer_settings(benchmark) -> None:
    """``benchmark.language_identifier`` is known and ``benchmark.max_new_tokens`` at least 1
    (the benchmarks judged by generated answers)."""
    from xlt_runner.config import ConfigError
    from xlt_runner.metrics.language_id import IDENTIFIERS
    if benchmark.language_identifier not in IDENTIFIERS:
        raise ConfigError(f"benchmark.language_identifier={benchmark.language_identifier!r} is not known; "
                          f"choose one of: {', '.join(IDENTIFIERS)}")
    if benchmark.max_new_tokens < 1:
        raise ConfigError(f"benchmark.max_new_tokens={benchmark.max_new_tokens} must be at least 1")


#: Every language's gold answers to a run's test questions (language -> id -> answers), so that
#: ``xlt-rescore`` recomputes the language-adherence measures without the benchmark.
PARALLEL_REFERENCES_FILE = "parallel_references.json"
#: Per-language language-adherence values (parallel QA only): record name -> LanguageAdherence field.
ADHERENCE_METRICS = {"cococola_ratio": "ratio_general", "cococola_ratio_simplified": "ratio_simplified",
                     "cumulative_accuracy": "cumulative_accuracy"}


def with_adherence(results: dict[str, dict], rows: list[dict], references: dict) -> dict[str, dict]:
    """``results`` with each language's :data:`ADHERENCE_METRICS` (None where undefined) and the
    questions behind the two ratios (``cococola_ratio_n``, ``cococola_ratio_simplified_n``)."""
    from xlt_runner.metrics.language_adherence import adherence_from_predictions
    adherence = adherence_from_predictions(rows, references)
    merged = {}
    for lang, scores in results.items():
        merged[lang] = dict(scores)
        if lang in adherence:
            a = adherence[lang]
            merged[lang].update({name: getattr(a, field) for name, field in ADHERENCE_METRICS.items()},
                                cococola_ratio_n=a.ratio_general_n, cococola_ratio_simplified_n=a.ratio_simplified_n)
    return merged


def write_predictions(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSON lines (UTF-8, not ASCII-escaped), atomically."""
    import json

    from xlt_runner.fileio import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


#: Per-language values of a generation run, besides ``n`` and ``identified``.
RESULT_METRICS = ("accuracy", "exact_match", "output_language_rate", "empty_rate")


def per_language_results(values: dict, languages: list[str]) -> dict[str, dict]:
    """``PerLanguageGeneration.per_language()`` as the record's ``per_language``: languages with
    examples only; a rate whose denominator is 0 (no answer with letters) is null, not NaN."""
    results = {}
    for i, lang in enumerate(languages):
        n = int(values["n"][i])
        if n:
            rates = {name: float(values[name][i]) for name in RESULT_METRICS}
            results[lang] = {name: (v if v == v else None) for name, v in rates.items()}
            results[lang].update(n=n, identified=int(values["identified"][i]))
    return results


def math_results(values: dict, languages: list[str]) -> dict[str, dict]:
    """``PerLanguageMath.per_language()`` as the record's ``per_language`` (languages with examples)."""
    return {lang: {"exact_match": float(values["exact_match"][i]),
                   "unparsable_rate": float(values["unparsable_rate"][i]), "n": int(values["n"][i])}
            for i, lang in enumerate(languages) if int(values["n"][i])}


QA_SCORING = AnswerScoring(score=score_prediction, metric=PerLanguageGeneration, results=per_language_results)
MATH_SCORING = AnswerScoring(score=lambda prediction, references, lang, identifier:
                             score_math_answer(prediction, references[0], lang),
                             metric=PerLanguageMath, results=math_results)
Generation.scoring = QA_SCORING


@TASK_KINDS.register("math")
class MathGeneration(Generation):
    """Math word problems (MGSM): a decoder writes its reasoning; the number it answers
    (:func:`~xlt_runner.metrics.math_answers.extract_answer`) is compared with the gold number.
    Runs the generation methods (``prompting``, ``sft``, ...) with their data and generation loop."""
    metrics = MATH_METRICS
    primary_metric = "exact_match"
    methods_of = "generation"
    scoring = MATH_SCORING


def rescore(run_dir: Path) -> dict:
    """Recompute every metric of a complete generation run from its ``predictions.jsonl`` with
    the metric code installed now (no model): per-example scores, per-language results and
    group means; rewrites ``predictions.jsonl`` and ``results.json`` atomically and returns the
    record (``rescored_at`` and ``rescored_changes``: how many per-example scores changed)."""
    import json
    from datetime import datetime, timezone

    from xlt_runner.data.languages import withhold_groups_with_source_languages
    from xlt_runner.fileio import write_json_atomic
    from xlt_runner.metrics.language_id import build_identifier
    from xlt_runner.results.record import RESULTS_FILE, read_record, write_per_language_csv
    from xlt_runner.stages import group_means

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    task = str(record.get("task")) if record else None
    scoring = getattr(TASK_KINDS.get(task), "scoring", None) if task in TASK_KINDS.names() else None
    if scoring is None:
        raise ValueError(f"{run_dir} holds no generation run record ({RESULTS_FILE} with task=generation or math)")
    if record.get("status") != "complete":
        raise ValueError(f"{run_dir / RESULTS_FILE} has status {record.get('status')!r}: only a complete run "
                         "is rescored (its predictions cover every target language)")
    path = run_dir / record.get("outputs", {}).get("predictions", PREDICTIONS_FILE)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    identifier = build_identifier(record["config"]["benchmark"]["language_identifier"])
    languages = list(record["target_languages"])
    metric = scoring.metric(len(languages))
    changed = 0
    for row in rows:
        score = scoring.score(row["prediction"], row["references"], row["lang"], identifier)
        changed += score != row["scores"]
        row["scores"] = score
    metric.update_from_scores([languages.index(row["lang"]) for row in rows], [row["scores"] for row in rows])
    per_language = scoring.results(metric.per_language(), languages)
    missing = [lang for lang in languages if lang not in per_language]
    if missing:
        raise ValueError(f"{path} has no predictions for target languages {missing[:5]}")
    references_file = run_dir / record.get("outputs", {}).get("parallel_references", PARALLEL_REFERENCES_FILE)
    if references_file.is_file():
        per_language = with_adherence(per_language, rows, json.loads(references_file.read_text(encoding="utf-8")))
    members = record["group_members"]
    groups = group_means(per_language, members, tuple(spec["name"] for spec in record["metrics"]))
    groups, not_reported = withhold_groups_with_source_languages(groups, members, record["source_languages"])
    write_predictions(path, rows)
    record.update(per_language=per_language, groups=groups, groups_not_reported=not_reported,
                  rescored_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), rescored_changes=changed)
    write_per_language_csv(run_dir, record)
    write_json_atomic(run_dir / RESULTS_FILE, record)
    return record
