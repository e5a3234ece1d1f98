"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every config group under ``conf/`` starts its defaults list with the schema of its
group (``model_schema``, ``head_only_schema``, ...), so a misspelt key or a value of
the wrong type fails while Hydra composes the config, before anything is loaded.
Semantic checks that need data tables (language codes, set names) live in
:func:`validate`, which the CLI runs on every composed config before a job starts.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration mistake; the message says which key and what is valid."""


# --------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """Where a backbone comes from and how it is placed.

    Exactly one source is used, in this order: ``tiny`` (random test model built
    offline), ``packaged`` (a real model shipped in a PyPI package, converted once
    into ``paths.cache_dir``), ``gguf_file`` (with ``pretrained`` as the directory or
    hub repo holding it), ``pretrained`` (hub id or local directory).
    """
    name: str = MISSING
    kind: str = "encoder"  # encoder | decoder | seq2seq
    pretrained: Optional[str] = None
    gguf_file: Optional[str] = None
    packaged: Optional[str] = None  # me5_small | smollm2_135m | gemma3_270m
    tiny: Optional[str] = None  # xlmr | bert | llama | m2m100
    revision: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16 (weights as loaded)
    device: str = "auto"  # auto | cpu | cuda | cuda:N, for work outside Lightning's loops (the probe);
    # training and evaluation are placed by trainer.accelerator / trainer.devices
    trust_remote_code: bool = False
    text_prefix: str = ""  # prepended to every input text ("query: " for e5)
    pooling: str = "cls"  # how a sentence vector is read from the last hidden states: cls (first
    # position, <s>/[CLS], as XLM-R's classification head) | mean (over attention-masked real tokens, as e5)
    max_length: int = 128  # tokens, including special tokens
    # decoders: how a question becomes a prompt. chat: the tokenizer's chat template (the
    # question as the user turn, the answer as the assistant turn); plain: ``template``
    format: str = "plain"  # plain | chat
    template: str = "### Question: {q}\n ### Answer: {a}"  # {q}: the question, {a}: the answer (training)
    system_prompt: Optional[str] = None  # chat format only: a system turn before the question
    hidden_size: Optional[int] = None  # documentation only; filled from the loaded config
    # decoders: named layer ranges of this model (0-based, inclusive), for method presets that
    # differ per model, e.g. CoCo-CoLa's: trainable.layers: ${model.layer_sets.coco_last}
    layer_sets: dict[str, list[int]] = field(default_factory=dict)


# -------------------------------------------------------------------------- method
@dataclass
class OptimConfig:
    """Optimiser and schedule. Learning rates are per step. Warmup is ``warmup_steps`` optimiser
    steps, or ``warmup_ratio`` of the phase's step budget when set (then ``warmup_steps`` must be 0)."""
    name: str = "adamw"  # adamw | adafactor
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: Optional[float] = None  # fraction of the step budget, e.g. 0.1 (XPE paper, source training)
    schedule: str = "constant"  # constant | linear | cosine | cosine_restarts
    num_cycles: int = 1  # for cosine_restarts
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class MethodConfig:
    """Fields every method has. Each method adds its own in a subclass, beside its class
    (``xlt_runner/methods/``)."""
    name: str = MISSING  # the label in records and reports (a preset may rename: dual_xpe30)
    family: str = MISSING  # the registered method that builds it (each schema sets its own)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init_from: Optional[str] = None  # path of saved method weights to start from


@dataclass
class ClassificationMethodConfig(MethodConfig):
    """Fields of every classification method. ``pool`` says which representation the head reads:
    ``model`` (the backbone's ``model.pooling``), ``cls`` (first position) or ``mean`` (masked
    mean over real tokens); soft-prompt methods also accept ``first_virtual``."""
    pool: str = "model"
    classifier_dropout: float = 0.1


# ----------------------------------------------------------------------- benchmark
@dataclass
class BenchmarkConfig:
    """A benchmark: which reader, where its files are, and how batches are formed."""
    name: str = MISSING
    task: str = "classification"  # classification | generation | retrieval_generation
    hub_id: Optional[str] = None  # used when data_dir is unset
    data_dir: Optional[str] = None  # local copy in the upstream layout
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    max_train_examples_per_language: Optional[int] = None  # for quick runs
    max_eval_examples_per_language: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0


@dataclass
class GenerationBenchmarkConfig(BenchmarkConfig):
    """A benchmark judged by generated text: how much may be generated and where it stops.

    Generation stops at EOS, at ``max_new_tokens``, or at the first of ``stop_strings`` that
    follows non-blank text (a model that opens with a newline is not cut to an empty answer).
    Splits are made by question id, identical in every language: ``dev_size`` and ``test_size``
    questions, the rest train."""
    task: str = "generation"
    max_new_tokens: int = 32
    stop_strings: list[str] = field(default_factory=lambda: ["\n"])
    dev_size: int = 200
    test_size: int = 500
    split_seed: int = 0  # which questions go to which split (a hash of seed and question id)
    language_identifier: str = "py3langid"  # identifies each answer's language (output_language_rate)


# ---------------------------------------------------------------------- train data
@dataclass
class SftSourceConfig:
    """One supervised fine-tuning dataset of ``train_data`` (the ``task`` or the ``language`` data).

    The source: ``path`` (a local jsonl file; it wins over ``hub_id``), else ``hub_id`` (a Hub
    dataset: ``hub_config``, ``hub_split``, ``hub_revision``), or ``benchmark`` (the train split of a generation benchmark of
    this project, read by its own reader: ``mkqa_cbqa`` or ``mintaka`` with ``data_dir``, questions
    of ``benchmark_language``, default ``language``). Records (``format``, ``auto`` by the first
    record's keys): ``{"prompt", "completion"}``, ``{"messages": [user, assistant]}``, ``{"text"}``
    (loss on every token), ``{"question", "answer"}`` (GSM8K: the answer's reasoning without its
    ``<<...>>`` calculator notes, ending "The answer is N."; the question in MGSM's English
    wording). ``dev_size`` examples (the first by a hash of their id) are held out for validation."""
    name: str = MISSING  # a label for records and logs: gsm8k, mkqa_ja
    language: str = MISSING  # the language of its text, as the evaluated benchmark codes it (en, ja)
    path: Optional[str] = None
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    hub_revision: Optional[str] = None
    benchmark: Optional[str] = None
    data_dir: Optional[str] = None  # the benchmark's data directory (null: its Hub dataset)
    benchmark_language: Optional[str] = None  # the benchmark's code for ``language`` (null: the same)
    format: str = "auto"  # auto | prompt_completion | messages | text | gsm8k
    max_examples: Optional[int] = None  # training examples kept (the first by a hash of their id)
    dev_size: int = 100


@dataclass
class TrainDataConfig:
    """Training data from SFT datasets instead of the benchmark's train split (decoders).

    ``mode``: ``task`` or ``language`` (that dataset only), ``mix`` (both, shuffled together: the
    data-mixing baseline) or ``alternate`` (each optimiser step takes its batches from one dataset;
    after ``steps_per_switch`` steps the other: ``method=partition_sft``). Batch ``k`` is a pure
    function of (seed, k) in every mode. Validation: the held-out part of each dataset used, equal
    sizes (``dev_size``), loss logged per dataset. ``languages.source`` must list the languages of
    the datasets used (task first)."""
    name: str = MISSING
    mode: str = "task"  # task | language | mix | alternate
    steps_per_switch: int = 1
    task: Optional[SftSourceConfig] = None
    language: Optional[SftSourceConfig] = None


# ----------------------------------------------------------------------- languages
@dataclass
class LanguagesConfig:
    """Source languages (train), targets (test) and the groups reported.

    Each entry is a language code (``eng_Latn``) or a named set (``enarzho``,
    ``joshi5``, ``seen``, ``unseen``, ``lowperf``, ``all``); a report group may be a
    difference ``seen-joshi5``. Named sets are intersected with the languages the
    benchmark has; a code named explicitly in ``source`` or ``targets`` must be in its data.
    A group that contains source languages gets no zero-shot mean (``groups_not_reported``).
    """
    name: str = MISSING
    source: list[str] = MISSING
    targets: list[str] = field(default_factory=lambda: ["all"])
    groups: list[str] = field(default_factory=lambda: ["lowperf", "unseen", "seen-joshi5", "all-joshi5"])


# -------------------------------------------------------------------------- regime
@dataclass
class RegimeConfig:
    """What a run does with the trained method.

    ``zero_shot``: train on the source languages, test on every target language.
    ``sequential``: as zero-shot, then for each target language start again from the
    source-trained weights, tune on that language's train split (``target_*`` limits,
    the method's target phase, e.g. XPE dropout 0), keep the best on its dev split and
    test on its test split; per-language results are these supervised scores.
    ``langid_probe``: as zero-shot, then train a linear language-ID classifier on the
    pooled representations of the frozen backbone + frozen trained method for
    ``probe_languages`` (SIB-200 with languages as labels; ``probe_seeds`` probes, averaged)
    and report, as metric ``langid_recall``, its test accuracy as group ``langid`` and, per
    report group, the mean per-language recall as ``langid:<group>``: lower means more
    language-agnostic representations.
    """
    name: str = "zero_shot"  # zero_shot | sequential | langid_probe (a label; what runs is ``stages``)
    stages: list[str] = field(default_factory=lambda: ["fit", "test"])  # run in order; see xlt_runner/stages.py:
    # fit | test | target_fit (sequential) | langid_probe
    target_max_steps: int = 6000
    target_val_check_interval: int = 100
    target_early_stopping_patience: Optional[int] = 30  # evaluations without improvement
    target_early_stopping_patience_epochs: Optional[float] = None  # or: epochs of the target train split
    target_warmup_ratio: Optional[float] = None  # warmup of each target phase; null: as method.optim
    probe_languages: list[str] = field(default_factory=lambda: ["all"])
    probe_train_per_language: int = 200  # examples of each language's train split
    probe_test_per_language: int = 100  # examples of each language's test split
    probe_epochs: int = 200  # full-batch passes of the linear probe
    probe_lr: float = 1e-2
    probe_seeds: int = 5  # linear probes per trained method (initialisation seeds 0..n-1; the same
    # features and examples), averaged: 5 per trained prompt in the XPE paper


# ------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    """Lightning Trainer settings. Training is counted in optimiser steps."""
    max_steps: int = 1000
    val_check_interval: int = 100  # steps between source-dev evaluations
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    monitor: Optional[str] = None  # the dev metric (source languages' dev split) that picks the best
    # checkpoint and drives early stopping; null: the task kind's default (classification: val/accuracy,
    # max; also val/loss, min. generation: val/loss, min)
    early_stopping_patience: Optional[int] = None  # evaluations without improvement
    early_stopping_patience_epochs: Optional[float] = None  # or: epochs of the source training set
    # without improvement (the XPE paper's unit), turned into evaluations for this run's data and batch
    early_stopping_after_first_cycle: bool = False  # for cosine_restarts: no stop before cycle 2
    resume_checkpoint_every_validation: bool = True  # checkpoints/resume.ckpt after each validation, so a
    # run killed without warning (SIGKILL, OOM, node failure) resumes from its last validation
    enable_progress_bar: bool = True
    deterministic: bool = False
    log_every_n_steps: int = 10


# -------------------------------------------------------------------------- logger
@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "offline"  # offline | online | disabled
    project: str = "xlt_runner"
    entity: Optional[str] = None
    group: Optional[str] = None  # defaults to the sweep name
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    name: str = "default"
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = True


# ---------------------------------------------------------------------------- root
@dataclass
class PathsConfig:
    output_root: str = "outputs"
    cache_dir: str = ".cache/xlt_runner"  # tokenised datasets, converted models


@dataclass
class RunConfig:
    """The root of a composed run config."""
    model: ModelConfig = MISSING
    method: Any = MISSING  # a MethodConfig subclass chosen by the method group
    benchmark: BenchmarkConfig = MISSING
    languages: LanguagesConfig = MISSING
    trainer: TrainerConfig = MISSING
    regime: RegimeConfig = MISSING
    logger: LoggerConfig = MISSING
    train_data: Optional[TrainDataConfig] = None  # SFT datasets to train on (null: the benchmark's train split)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    overwrite: bool = False  # rerun even if results.json is complete
    sweep_name: str = "default"  # groups runs on dashboards and in output paths
    experiment_name: Optional[str] = None


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="benchmark", name="benchmark_schema", node=BenchmarkConfig)
    cs.store(group="languages", name="languages_schema", node=LanguagesConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="regime", name="regime_schema", node=RegimeConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="train_data", name="train_data_schema", node=TrainDataConfig)


register_schemas()


# ---------------------------------------------------------------------- validation
MODEL_KINDS = ("encoder", "decoder", "seq2seq")
DTYPES = ("float32", "bfloat16", "float16")
PACKAGED_MODELS = ("me5_small", "smollm2_135m", "gemma3_270m")
TINY_MODELS = ("xlmr", "bert", "llama", "m2m100")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
OPTIMIZERS = ("adamw", "adafactor")
MODEL_POOLINGS = ("cls", "mean")  # model.pooling; method.pool also takes "model"
PROMPT_FORMATS = ("plain", "chat")  # model.format
SCHEDULES = ("constant", "linear", "cosine", "cosine_restarts")
WANDB_MODES = ("offline", "online", "disabled")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def unknown_key_message(full_key: str, valid_keys: list[str]) -> str:
    """``unknown key 'a.b'. Valid keys of a: ... Did you mean a.c?`` for a key no schema declares."""
    parent, _, key = full_key.rpartition(".")
    if not valid_keys:
        return f"unknown key {full_key!r}"
    hint = difflib.get_close_matches(key, valid_keys, n=1)
    return (f"unknown key {full_key!r}. Valid keys of {parent or 'the root config'}: {', '.join(valid_keys)}"
            + (f". Did you mean {parent + '.' if parent else ''}{hint[0]}?" if hint else ""))


def check_schema_keys(cfg: DictConfig) -> None:
    """Every key of a typed section (a node whose type is a schema dataclass, the root included)
    is a field of that schema. Hydra checks this while composing, except for keys added with
    ``+key=``/``++key=``, which bypass its struct mode; those are refused here."""
    def walk(node: DictConfig, schema: type, prefix: str) -> None:
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                raise ConfigError(unknown_key_message(f"{prefix}{key}", fields)
                                  + f" ('+' cannot add keys to {prefix[:-1] or 'the root config'}: "
                                    f"its schema is fixed)")
            child = node._get_node(key)
            child_schema = OmegaConf.get_type(child) if isinstance(child, DictConfig) else None
            if child_schema is not None and dataclasses.is_dataclass(child_schema):
                walk(child, child_schema, f"{prefix}{key}.")

    walk(cfg, RunConfig, "")


def _learning_rates(node: DictConfig, prefix: str) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every ``lr`` / ``*_lr`` field under ``node``."""
    found = []
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found += _learning_rates(child, f"{prefix}{key}.")
        elif key == "lr" or str(key).endswith("_lr"):
            found.append((f"{prefix}{key}", node[key]))
    return found


def check_values(cfg: Any) -> None:
    """Checks of the core sections that need more than types: choices, ranges, exclusive keys.
    What a component (task kind, benchmark, method, stage) accepts is checked by the component
    itself, in :func:`xlt_runner.validation.validate`, which calls this first."""
    check_schema_keys(cfg)
    m = cfg.model
    _choice("model.kind", m.kind, MODEL_KINDS)
    _choice("model.dtype", m.dtype, DTYPES)
    if m.tiny is not None:
        _choice("model.tiny", m.tiny, TINY_MODELS)
    if m.packaged is not None:
        _choice("model.packaged", m.packaged, PACKAGED_MODELS)
    if m.gguf_file is not None and m.pretrained is None:
        raise ConfigError("model.gguf_file needs model.pretrained: the directory or hub repo that holds the file")
    if not any([m.tiny, m.packaged, m.pretrained]):
        raise ConfigError(f"model {m.name!r} has no source: set model.pretrained (hub id or local directory), "
                          f"model.packaged ({', '.join(PACKAGED_MODELS)}) or model.tiny ({', '.join(TINY_MODELS)})")
    _choice("model.pooling", m.pooling, MODEL_POOLINGS)
    if m.max_length < 8:
        raise ConfigError(f"model.max_length={m.max_length} is too small (>= 8 tokens)")

    _choice("model.format", m.format, PROMPT_FORMATS)
    _choice("method.optim.name", cfg.method.optim.name, OPTIMIZERS)
    _choice("method.optim.schedule", cfg.method.optim.schedule, SCHEDULES)
    for key, lr in _learning_rates(cfg.method, "method.") + _learning_rates(cfg.regime, "regime."):
        of_method = key.startswith("method.")
        if lr is None or lr > 0 or (lr == 0 and of_method and cfg.method.init_from):
            continue  # 0 with method.init_from: evaluate saved weights unchanged
        raise ConfigError(f"{key}={lr} is not a learning rate: it must be greater than 0 (e.g. {key}=1e-3)"
                          + ("; 0 is accepted only with method.init_from, to evaluate saved weights unchanged"
                             if of_method else ""))

    for key, ratio in (("method.optim.warmup_ratio", cfg.method.optim.warmup_ratio),
                       ("regime.target_warmup_ratio", cfg.regime.target_warmup_ratio)):
        if ratio is not None and not 0.0 <= ratio < 1.0:
            raise ConfigError(f"{key}={ratio} must be a fraction of the step budget in [0, 1)")
    ratio = cfg.method.optim.warmup_ratio
    if ratio is not None and cfg.method.optim.warmup_steps:
        raise ConfigError(f"method.optim.warmup_ratio={ratio} and method.optim.warmup_steps="
                          f"{cfg.method.optim.warmup_steps} both set the warmup; set warmup_steps=0 or warmup_ratio=null")

    t = cfg.trainer
    _choice("trainer.precision", str(t.precision), PRECISIONS)
    for prefix, section, key in (("trainer", t, "early_stopping_patience"),
                                 ("regime", cfg.regime, "target_early_stopping_patience")):
        evaluations, epochs = section[key], section[f"{key}_epochs"]
        if evaluations is not None and epochs is not None:
            raise ConfigError(f"{prefix}.{key}={evaluations} (evaluations) and {prefix}.{key}_epochs={epochs} "
                              f"both set the patience; set one of them to null")
        if evaluations is not None and evaluations < 1 or epochs is not None and epochs <= 0:
            raise ConfigError(f"{prefix}.{key}{'' if evaluations is not None else '_epochs'}="
                              f"{evaluations if evaluations is not None else epochs} must be positive "
                              f"(null: no early stopping)")
    if cfg.regime.probe_seeds < 1:
        raise ConfigError(f"regime.probe_seeds={cfg.regime.probe_seeds} must be at least 1")
    for key in ("max_steps", "val_check_interval", "accumulate_grad_batches"):
        if t[key] < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be at least 1")
    for key in ("batch_size", "eval_batch_size"):
        if cfg.benchmark[key] < 1:
            raise ConfigError(f"benchmark.{key}={cfg.benchmark[key]} must be at least 1")
    for key in ("max_train_examples_per_language", "max_eval_examples_per_language"):
        limit = cfg.benchmark[key]
        if limit is not None and limit < 1:
            raise ConfigError(f"benchmark.{key}={limit} would drop examples: give at least 1, "
                              f"or null for every example (benchmark.{key}=null)")
    _choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
