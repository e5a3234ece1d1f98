"""Multilingual RAG methods (``benchmark.task=rag``): QTT-RAG and its four baselines, one family.

Supports: a decoder generator (``model=``) on the ``rag`` benchmarks (``mkqa``, ``xor_tydi``,
``rag_local``); nothing trains (``regime=zero_shot``'s fit stage is skipped). The test stage runs
:class:`~xlt_runner.rag.pipeline.RagPipeline` in Lightning's predict loop. The presets differ in
four switches:

=============  =========  ====  ===========  =======
method         translate  tags  hard_filter  rewrite
=============  =========  ====  ===========  =======
rag_base       no         no    no           no
crossrag       yes        no    no           no
qtt_rag        yes        yes   no           no
hard_filter    yes        no    3.5, all     no
dkm_rag        yes        no    no           yes
=============  =========  ====  ===========  =======

Each stage has its own model section (``method.retriever.model``, ``method.reranker.model``,
``method.translator.model``, ``method.judge.model``, ``method.rewriter.model``), so a translator,
a judge and a generator can differ; a stage whose model equals the generator shares its weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from xlt_runner.config import ConfigError, MethodConfig, ModelConfig
from xlt_runner.methods import METHODS
from xlt_runner.methods.base import MethodBase
from xlt_runner.rag.retrieval import RerankerConfig, RetrieverConfig
from xlt_runner.rag.translation import TranslatorConfig


def _smollm2() -> ModelConfig:
    return ModelConfig(name="smollm2_135m", kind="decoder", packaged="smollm2_135m", max_length=2048, format="chat")


@dataclass
class JudgeConfig:
    """The translation judge: an LLM scoring each translation 0.0-5.0 on the three criteria
    (:data:`xlt_runner.rag.judging.CRITERIA`). ``mode``: ``generate`` (greedy JSON answer, parsed
    with repair; an answer without scores is a counted failure) or ``logprob`` (per criterion, the
    expectation of the next-token distribution over the digits 0-5: never fails). Source and
    translation are each cut to ``max_text_tokens`` judge tokens in its prompt. ``batch_size``:
    translations per batch (in ``logprob`` mode, three prompts each). Verdicts are stored in the
    cache batch by batch in both modes. ``prompts``: ``conf/rag_prompts/judge.yaml``."""
    model: ModelConfig = field(default_factory=_smollm2)
    mode: str = "generate"
    batch_size: int = 8
    max_new_tokens: int = 64
    max_text_tokens: int = 384
    prompts: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewriterConfig:
    """DKM-RAG's rewriter: an LLM rewriting each translated passage for the question
    (``conf/rag_prompts/rewriter.yaml``); at most ``max_new_tokens`` per passage."""
    model: ModelConfig = field(default_factory=_smollm2)
    batch_size: int = 8
    max_new_tokens: int = 256
    prompts: dict[str, Any] = field(default_factory=dict)


@dataclass
class HardFilterConfig:
    """Drop a translation whose judged scores are below ``threshold``: on every criterion
    (``rule: all_below``, the paper's baseline) or on any (``any_below``). A translation the judge
    gave no score is kept (``keep_unscored``) or dropped."""
    threshold: float = 3.5
    rule: str = "all_below"
    keep_unscored: bool = True


@dataclass
class RagCacheConfig:
    """The content cache shared by a sweep's jobs (SQLite). ``path`` null:
    ``<paths.cache_dir>/rag/cache.sqlite``. ``enabled: false`` keeps it in memory (nothing reused).
    ``journal_mode``: ``wal`` when every job of the sweep runs on one host; ``delete`` (rollback
    journal under file locks) when jobs on several nodes share the file on a file system whose
    locks work across nodes (SQLite's WAL needs shared memory, so it cannot span hosts)."""
    path: Optional[str] = None
    enabled: bool = True
    journal_mode: str = "wal"


@dataclass
class RagConfig(MethodConfig):
    """A multilingual RAG method; see the module docstring for the presets."""
    name: str = "qtt_rag"
    family: str = "rag"
    translate: bool = True
    tags: bool = True
    hard_filter: Optional[HardFilterConfig] = None
    rewrite: bool = False
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    translator: TranslatorConfig = field(default_factory=TranslatorConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rewriter: RewriterConfig = field(default_factory=RewriterConfig)
    prompts: dict[str, Any] = field(default_factory=dict)  # the generator's: conf/rag_prompts/generator.yaml
    cache: RagCacheConfig = field(default_factory=RagCacheConfig)


JUDGE_MODES = ("generate", "logprob")
FILTER_RULES = ("all_below", "any_below")
GENERATOR_PROMPTS = ("system", "tag_note", "tag", "document", "question")


@METHODS.register("rag", RagConfig)
class RetrievalAugmentedGeneration(MethodBase):
    """The generator (the run's decoder) answering from retrieved, translated, judged passages."""

    supported_tasks: ClassVar[tuple[str, ...]] = ("rag",)
    supported_model_kinds: ClassVar[tuple[str, ...]] = ("decoder",)
    trains = False

    def __init__(self, cfg: RagConfig, backbone, task, total_steps: int) -> None:
        super().__init__()
        self.check_method_config(cfg)
        self.cfg, self.task, self.total_steps = cfg, task, total_steps
        self.backbone_name = backbone.name
        self.backbone = backbone.model
        self.generator = backbone
        self.configure_trainable()
        self.test_results: dict[str, dict] = {}
        self.test_predictions: list[dict] = []
        self.summary: dict[str, Any] = {}

    @classmethod
    def check_method_config(cls, cfg: RagConfig) -> None:
        if cfg.judge.mode not in JUDGE_MODES:
            raise ConfigError(f"method.judge.mode={cfg.judge.mode!r} is not valid; choose one of: {', '.join(JUDGE_MODES)}")
        if cfg.hard_filter is not None:
            if cfg.hard_filter.rule not in FILTER_RULES:
                raise ConfigError(f"method.hard_filter.rule={cfg.hard_filter.rule!r} is not valid; choose one of: "
                                  f"{', '.join(FILTER_RULES)}")
            if not 0.0 <= cfg.hard_filter.threshold <= 5.0:
                raise ConfigError(f"method.hard_filter.threshold={cfg.hard_filter.threshold} must lie in [0, 5]")
        if not cfg.translate and (cfg.tags or cfg.hard_filter is not None or cfg.rewrite):
            raise ConfigError("method.tags, method.hard_filter and method.rewrite act on translations; with "
                              "method.translate=false set them to false/null")
        missing = [k for k in GENERATOR_PROMPTS if k not in (cfg.prompts or {})]
        if missing:
            raise ConfigError(f"method.prompts lacks {missing}: compose conf/rag_prompts/generator.yaml "
                              f"(the rag method presets do: defaults '/rag_prompts@prompts: generator')")
        for key, section in (("method.judge.prompts", cfg.judge.prompts), ("method.rewriter.prompts", cfg.rewriter.prompts)):
            if not section:
                raise ConfigError(f"{key} is empty: compose conf/rag_prompts/ (see conf/method/qtt_rag.yaml)")
        r = cfg.retriever
        if r.top_k < 1 or cfg.reranker.top_n < 1:
            raise ConfigError(f"method.retriever.top_k={r.top_k} and method.reranker.top_n={cfg.reranker.top_n} "
                              f"must be at least 1")
        if cfg.reranker.top_n > r.top_k:
            raise ConfigError(f"method.reranker.top_n={cfg.reranker.top_n} exceeds method.retriever.top_k={r.top_k}: "
                              f"the reranker picks from the top-k")
        t = cfg.translator
        if cfg.translate and t.max_input_tokens >= t.model.max_length:
            raise ConfigError(f"method.translator.max_input_tokens={t.max_input_tokens} must be below the translator's "
                              f"method.translator.model.max_length={t.model.max_length}")

    def configure_trainable(self) -> None:
        self.backbone.requires_grad_(False)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def reset_metrics(self) -> None:
        pass

    def run_pipeline(self, trainer) -> None:
        """Answer every test query (the task's ``examples``) through the pipeline; fills
        ``test_predictions`` (one row per query, in the task's order), ``test_results`` and ``summary``."""
        from pathlib import Path

        from xlt_runner.metrics.language_id import build_identifier
        from xlt_runner.rag.cache import RagCache
        from xlt_runner.rag.pipeline import RagPipeline
        c = self.cfg.cache
        path = None if not c.enabled else (c.path or str(Path(self.task.cache_dir) / "rag" / "cache.sqlite"))
        cache = RagCache(path, journal_mode=c.journal_mode)
        try:
            pipeline = RagPipeline(self.cfg, self.generator, self.task.generator_cfg, corpus=self.task.corpus,
                                   cache=cache, cache_dir=self.task.cache_dir, max_new_tokens=self.task.max_new_tokens,
                                   stop_strings=self.task.stop_strings,
                                   identifier=build_identifier(self.task.language_identifier),
                                   batch_size=self.task.batch_size)
            self.test_predictions = pipeline.run(trainer, self.task.examples)
        finally:
            cache.close()
        self.summary = {**pipeline.summary, "cache_path": path}
        self.test_results = self.task.results(self.test_predictions, self.cfg)
