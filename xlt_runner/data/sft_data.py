"""Two-dataset supervised fine-tuning data (``train_data``): a ``task`` dataset (math: GSM8K) and a
``language`` dataset (generic instructions or QA in the target language), for the treatments of
Bandarkar et al. (MRL 2025): one dataset, both mixed, or strict alternation for partition SFT.

:func:`read_sft_source` turns one :class:`~xlt_runner.config.SftSourceConfig` into
:class:`SftExample` s (a local jsonl file, a Hub dataset, or a generation benchmark's train split);
:func:`hold_out` splits off its validation part. :class:`SftDataModule` serves them: training
batches of the mode (``task`` | ``language`` | ``mix`` | ``alternate``), each a pure function of
(seed, batch index), every batch carrying ``dataset`` (the index of its rows' dataset in
:data:`ROLES`); validation on equal held-out parts of the datasets used; test as the evaluated
benchmark's (:class:`~xlt_runner.data.generation.GenerationDataModule`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from xlt_runner.config import ConfigError
from xlt_runner.data import BenchmarkDataError
from xlt_runner.data.batching import LengthGroupedTrainSampler
from xlt_runner.data.generation import GenerationDataModule, QADataset, TeacherForcedCollator, TokenizedQA, _pack

#: The two datasets, in the order of a batch's ``dataset`` index.
ROLES = ("task", "language")
#: ``train_data.mode`` -> the datasets it trains on.
MODES = {"task": ("task",), "language": ("language",), "mix": ROLES, "alternate": ROLES}
FORMATS = ("auto", "prompt_completion", "messages", "text", "gsm8k")
#: GSM8K questions are asked, and answers closed, in MGSM's English exemplar wording, so that a
#: GSM8K-tuned model meets at test the form it learnt (``xlt_runner.data.mgsm``).
GSM8K_QUESTION_PREFIX = "Question: "
GSM8K_ANSWER_PREFIX = "Step-by-Step Answer:"
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
#: Seed of the hash order that picks the held-out and the capped examples (fixed: the same
#: examples in every run of a sweep).
HOLD_OUT_SEED = 0


@dataclass(frozen=True)
class SftExample:
    """One training example: ``prompt`` (what fills ``{q}`` of the prompt format; None for a raw
    ``{"text"}`` record, trained on every token) and ``completion`` (the target text)."""
    id: str
    prompt: str | None
    completion: str


# ------------------------------------------------------------------------------ records
def gsm8k_example(question: str, answer: str, id: str) -> SftExample:
    """A GSM8K record as MGSM's English exemplars word it: ``Question: ...`` / ``Step-by-Step
    Answer:`` then the reasoning on one line without ``<<...>>`` notes, ending ``The answer is N.``"""
    reasoning, sep, number = answer.rpartition("####")
    if not sep or not number.strip():
        raise BenchmarkDataError(f"GSM8K record {id}: the answer has no '#### <number>' line")
    steps = " ".join(line.strip() for line in _CALCULATOR_NOTE.sub("", reasoning).splitlines() if line.strip())
    return SftExample(id=id, prompt=f"{GSM8K_QUESTION_PREFIX}{question.strip()}\n{GSM8K_ANSWER_PREFIX}",
                      completion=f"{steps} The answer is {number.strip()}.".strip())


def _record_format(row: dict) -> str:
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "question" in row and "answer" in row:
        return "gsm8k"
    if "text" in row:
        return "text"
    raise BenchmarkDataError(f"a record with keys {sorted(row)[:6]} is none of the SFT formats: "
                             "{prompt, completion}, {messages}, {text}, {question, answer} (GSM8K)")


def record_example(row: dict, fmt: str, id: str, where: str) -> SftExample:
    """One record of format ``fmt`` (:data:`FORMATS`) as an :class:`SftExample`; BenchmarkDataError
    naming ``where`` for a record that does not fit."""
    try:
        if fmt == "prompt_completion":
            return SftExample(id=id, prompt=str(row["prompt"]), completion=str(row["completion"]))
        if fmt == "gsm8k":
            return gsm8k_example(str(row["question"]), str(row["answer"]), id)
        if fmt == "text":
            return SftExample(id=id, prompt=None, completion=str(row["text"]))
        turns = [(m["role"], m["content"]) for m in row["messages"]]
    except (KeyError, TypeError) as exc:
        raise BenchmarkDataError(f"{where}: record {id} lacks {exc} for format {fmt}") from None
    if [role for role, _ in turns] != ["user", "assistant"]:
        raise BenchmarkDataError(f"{where}: record {id} has turns {[r for r, _ in turns]}; a messages record must be "
                                 "one user turn then one assistant turn (a system prompt goes in model.system_prompt)")
    return SftExample(id=id, prompt=str(turns[0][1]), completion=str(turns[1][1]))


def _rows(cfg, cache_dir: str) -> Iterator[tuple[str, dict]]:
    """(id, record) of a jsonl file or Hub dataset, in order; the id is the record's ``id`` or its position."""
    if cfg.path is not None:
        from xlt_runner.data.qa import _json_lines
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise BenchmarkDataError(f"train_data {cfg.name}: {str(path)!r} is not a file; give a jsonl file "
                                     f"(e.g. ../shared/data/gsm8k/train.jsonl)")
        for number, row in _json_lines(cfg.name, path):
            yield str(row.get("id", number)) if isinstance(row, dict) else str(number), row
        return
    from xlt_runner.data.qa import _hub_dataset
    for i, row in enumerate(_hub_dataset(cfg.name, cfg.hub_id, cfg.hub_config, cfg.hub_split, cfg.hub_revision,
                                         "train_data.<role>.path=<a jsonl file>")):
        yield str(row.get("id", i)), dict(row)


def read_sft_source(cfg, cache_dir: str, run_benchmark=None) -> list[SftExample]:
    """Every example of one SFT source, in its order (BenchmarkDataError for missing or malformed
    data). ``run_benchmark``: the run's benchmark config (see :func:`_benchmark_of`)."""
    if cfg.benchmark is not None:
        benchmark = _benchmark_of(cfg, cache_dir, run_benchmark)
        lang = cfg.benchmark_language or cfg.language
        return [SftExample(id=e.id, prompt=e.prompt, completion=e.completion or e.references[0])
                for e in benchmark.load(lang, "train")]
    where = cfg.path or f"Hub dataset {cfg.hub_id!r}"
    examples, fmt = [], cfg.format
    for id, row in _rows(cfg, cache_dir):
        if not isinstance(row, dict):
            raise BenchmarkDataError(f"train_data {cfg.name}: {where} record {id} is not a JSON object")
        if fmt == "auto":
            fmt = _record_format(row)
        examples.append(record_example(row, fmt, id, where))
    if not examples:
        raise BenchmarkDataError(f"train_data {cfg.name}: {where} holds no record")
    duplicated = len(examples) - len({e.id for e in examples})
    if duplicated:
        raise BenchmarkDataError(f"train_data {cfg.name}: {duplicated} record ids occur twice in {where}; ids pick "
                                 "the held-out examples, so they must be unique")
    return examples


def _benchmark_of(cfg, cache_dir: str, run_benchmark=None):
    """The generation benchmark a source names, with ``data_dir`` from the source. The run's own
    benchmark (``run_benchmark``, same name) is read with the run's settings, so that its train
    split never holds a question the run tests (its splits come from ``test_size``, ``dev_size``
    and ``split_seed``); another one with its preset in ``conf/benchmark/``."""
    from omegaconf import OmegaConf

    from xlt_runner.composition import CONF_DIR
    from xlt_runner.data import BENCHMARKS, build_benchmark
    if run_benchmark is not None and run_benchmark.name == cfg.benchmark:
        settings = OmegaConf.create(OmegaConf.to_container(run_benchmark))
    else:
        settings = OmegaConf.load(CONF_DIR / "benchmark" / f"{cfg.benchmark}.yaml")
        settings.pop("defaults", None)
    node = OmegaConf.merge(OmegaConf.structured(BENCHMARKS.schema(cfg.benchmark)), settings, {"data_dir": cfg.data_dir})
    return build_benchmark(node, cache_dir)


def source_fingerprint(cfg, cache_dir: str, run_benchmark=None) -> str:
    """What one source's examples depend on: the file's content, the Hub id and revision, or
    the benchmark's data fingerprint; with the format and the source's own settings."""
    from xlt_runner.fileio import file_sha256
    if cfg.benchmark is not None:
        benchmark = _benchmark_of(cfg, cache_dir, run_benchmark)
        content = f"{cfg.benchmark}:{benchmark.fingerprint()}:{cfg.benchmark_language or cfg.language}"
    elif cfg.path is not None:
        path = Path(cfg.path).expanduser()
        content = file_sha256(path) if path.is_file() else f"missing:{path}"
    else:
        content = f"hub:{cfg.hub_id}:{cfg.hub_config}:{cfg.hub_split}@{cfg.hub_revision}"
    raw = f"{content}|{cfg.format}|{cfg.max_examples}|{cfg.dev_size}|{HOLD_OUT_SEED}"
    return hashlib.sha256(raw.encode()).hexdigest()


def hold_out(examples: Sequence[SftExample], dev_size: int, max_examples: int | None,
             where: str) -> tuple[list[SftExample], list[SftExample]]:
    """(train, dev): ``dev_size`` examples held out, the first by a hash of their id; of the
    rest the first ``max_examples`` by the same order (all when None); each in file order."""
    from xlt_runner.data.qa import split_question_ids
    ids = split_question_ids([e.id for e in examples], 0, dev_size, HOLD_OUT_SEED, where)
    train_ids = ids["train"] if max_examples is None else ids["train"][:max_examples]
    if not train_ids:
        raise BenchmarkDataError(f"{where}: no training example is left after holding out {dev_size} for validation")
    keep_train, keep_dev = set(train_ids), set(ids["dev"])
    return [e for e in examples if e.id in keep_train], [e for e in examples if e.id in keep_dev]


def check_train_data(cfg) -> None:
    """Checks of ``train_data`` that need no data: the mode and its datasets, one source each,
    known formats, and ``languages.source`` equal to the used datasets' languages. ConfigError."""
    t = cfg.train_data
    if t is None:
        return
    if t.mode not in MODES:
        raise ConfigError(f"train_data.mode={t.mode!r} is not valid; choose one of: {', '.join(MODES)}")
    if t.steps_per_switch < 1:
        raise ConfigError(f"train_data.steps_per_switch={t.steps_per_switch} must be at least 1")
    for role in MODES[t.mode]:
        source = t[role]
        if source is None:
            raise ConfigError(f"train_data.mode={t.mode} trains on the {role} dataset, but train_data.{role} is "
                              f"not set; give it (path, hub_id or benchmark) or choose another train_data.mode")
        if source.benchmark is not None and source.path is not None:
            raise ConfigError(f"train_data.{role} names both benchmark={source.benchmark} and path={source.path}; "
                              "a source is a jsonl file (path), a Hub dataset (hub_id) or a benchmark's train split")
        if source.benchmark is None and source.path is None and source.hub_id is None:
            raise ConfigError(f"train_data.{role} has no source: set path (a jsonl file), hub_id or benchmark")
        if source.format not in FORMATS:
            raise ConfigError(f"train_data.{role}.format={source.format!r} is not valid; choose one of: "
                              f"{', '.join(FORMATS)}")
        if source.dev_size < 1:
            raise ConfigError(f"train_data.{role}.dev_size={source.dev_size} must be at least 1 (validation picks "
                              "the best checkpoint)")
        if source.benchmark is not None and source.benchmark not in ("mkqa_cbqa", "mintaka"):
            raise ConfigError(f"train_data.{role}.benchmark={source.benchmark!r}: the QA benchmarks with a train "
                              "split are mkqa_cbqa and mintaka")
    from omegaconf.errors import InterpolationResolutionError
    try:
        languages = list(dict.fromkeys(t[role].language for role in MODES[t.mode]))
    except InterpolationResolutionError as exc:
        raise ConfigError(f"train_data.<dataset>.language could not be resolved ({str(exc).splitlines()[0]}"
                          f"); the presets take the language data's language from languages.targets.1: set "
                          f"languages.targets=[en,<language>] (or train_data.language.language=<language>)") from None
    if list(cfg.languages.source) != languages:
        raise ConfigError(f"languages.source={list(cfg.languages.source)} but train_data={t.name} (mode {t.mode}) "
                          f"trains on {languages}: set languages.source={languages}".replace("'", ""))


def train_data_fingerprint(cfg, cache_dir: str) -> str | None:
    """One digest of every used SFT source (None without ``train_data``)."""
    t = cfg.train_data
    if t is None:
        return None
    parts = [f"{t.mode}:{t.steps_per_switch}"] + [f"{role}:{source_fingerprint(t[role], cache_dir, cfg.benchmark)}"
                                                  for role in MODES[t.mode]]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


# --------------------------------------------------------------------------- data module
class SftDataset(QADataset):
    """Tokenised datasets, one part per role; item ``i`` is ``(ids, prompt_length, lang index,
    dataset index)`` (the index into :data:`ROLES`)."""

    def __init__(self, splits: Sequence[TokenizedQA], lang_indices: Sequence[int], roles: Sequence[int]) -> None:
        super().__init__(splits, lang_indices)
        self.roles = list(roles)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, int]:
        sequence, prompt_length, lang, _ = super().__getitem__(i)
        part = int(np.searchsorted(self.starts, i, side="right") - 1)
        return sequence, prompt_length, lang, self.roles[part]


class SftCollator(TeacherForcedCollator):
    """:class:`TeacherForcedCollator` plus ``dataset``: each row's dataset index (:data:`ROLES`)."""

    def __call__(self, items: list[tuple[np.ndarray, int, int, int]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        batch["dataset"] = torch.tensor([role for *_, role in items], dtype=torch.long)
        return batch


class AlternatingTrainSampler:
    """Training batches that alternate between datasets by optimiser step: the ``accumulate``
    batches of step ``s`` come from dataset ``(s // steps_per_switch) % 2`` (the task first).
    Each dataset has its own length-grouped order (:class:`LengthGroupedTrainSampler`, seeded from
    (seed, dataset)); batch ``k`` of a rank is its dataset's ``j``-th, where ``j`` counts that
    dataset's earlier batches: a pure function of (seed, k), so a resumed run continues exactly,
    in the same phase. Under DDP every rank takes the same dataset at the same step."""

    def __init__(self, part_lengths: Sequence[np.ndarray], part_starts: Sequence[int], batch_size: int,
                 num_batches: int, seed: int, accumulate: int, steps_per_switch: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.parts = [LengthGroupedTrainSampler(lengths, batch_size, num_batches, seed * len(ROLES) + p,
                                                rank=rank, world_size=world_size)
                      for p, lengths in enumerate(part_lengths)]
        self.part_starts = list(part_starts)
        self.num_batches = num_batches
        self.accumulate = accumulate
        self.steps_per_switch = steps_per_switch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size

    def position(self, k: int) -> tuple[int, int]:
        """(dataset, that dataset's batch number) of this rank's batch ``k``."""
        step, micro = divmod(k, self.accumulate)
        cycle, within = divmod(step, 2 * self.steps_per_switch)
        part, offset = divmod(within, self.steps_per_switch)
        return part, (cycle * self.steps_per_switch + offset) * self.accumulate + micro

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.start_batch, self.num_batches):
            part, j = self.position(k)
            batch = self.parts[part].global_batch(j * self.world_size + self.rank)
            yield (batch + self.part_starts[part]).tolist()

    def __len__(self) -> int:
        return self.num_batches


class SftDataModule(GenerationDataModule):
    """:class:`GenerationDataModule` whose training and validation data are ``train_data``'s
    datasets (``sources``: role -> (source config, examples)); test data are the benchmark's.

    ``mode`` as ``train_data.mode``; ``accumulate`` (batches per optimiser step) and
    ``steps_per_switch`` place the switches of ``alternate``. ``source_languages`` are the used
    datasets' languages (task first), so a batch's ``lang`` is its dataset's language."""

    def __init__(self, *args, train_data, accumulate: int, run_benchmark, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_data = train_data
        self.run_benchmark = run_benchmark
        self.mode = train_data.mode
        self.roles = MODES[self.mode]
        self.accumulate = accumulate
        self.steps_per_switch = train_data.steps_per_switch
        self.train_collator = SftCollator(self.train_collator.pad_token_id)
        self._split_cache: dict[str, tuple[list[SftExample], list[SftExample]]] = {}
        self._fingerprints: dict[str, str] = {}  # role -> source_fingerprint (hashes the data: once)

    def _split_of(self, role: str) -> tuple[list[SftExample], list[SftExample]]:
        if role not in self._split_cache:
            source = self.train_data[role]
            examples = read_sft_source(source, str(self.cache_root.parent), self.run_benchmark)
            self._split_cache[role] = hold_out(examples, source.dev_size, source.max_examples,
                                               f"train_data.{role} ({source.name})")
        return self._split_cache[role]

    def _tokenize_sft(self, examples: list[SftExample]) -> TokenizedQA:
        rows, cut_prompts, cut_completions = [], 0, 0
        eos = self.tokenizer.eos_token_id
        for ex in examples:
            if ex.prompt is None:  # raw text: every token after the first carries loss
                ids = self.tokenizer(ex.completion, add_special_tokens=True)["input_ids"] + [eos]
                cut_completions += len(ids) > self.max_length
                rows.append((ids[:self.max_length], 0))
                continue
            prompt, completion, cut, cut_completion = self.prompt_format.encode_example(
                ex.prompt, ex.completion, self.max_length)
            rows.append((prompt + completion, len(prompt)))
            cut_prompts += cut
            cut_completions += cut_completion
        return _pack(rows, [ex.id for ex in examples], cut_prompts, cut_completions)

    def _sft_split(self, stage: str, role: str) -> TokenizedQA:
        source = self.train_data[role]
        if role not in self._fingerprints:
            self._fingerprints[role] = source_fingerprint(source, str(self.cache_root.parent), self.run_benchmark)
        key = f"sft|{role}|{self._fingerprints[role]}"
        path = self.tokenized_cache_path(key, stage, source.language)
        return self.load_or_tokenize(path, lambda: self._tokenize_sft(self._split_of(role)[stage == "dev"]))

    def _build(self, stage: str, languages: list[str], limit: int | None) -> str:
        if stage == "test":
            return super()._build(stage, languages, limit)
        if not self.prompt_format.training:
            raise ConfigError("the prompt format was checked for generation only; build it with training=True")
        index = {lang: i for i, lang in enumerate(self.eval_languages)}
        splits = [self._sft_split(stage, role) for role in self.roles]
        langs = [index[self.train_data[role].language] for role in self.roles]
        self._datasets[stage] = SftDataset(splits, langs, [ROLES.index(role) for role in self.roles])
        self.truncated_prompts[stage] = {role: s.truncated_prompts for role, s in zip(self.roles, splits)}
        self.truncated_completions[stage] = {role: s.truncated_completions for role, s in zip(self.roles, splits)}
        return stage

    def train_dataloader(self) -> DataLoader:
        if self.mode != "alternate":
            return super().train_dataloader()
        rank, world = self._rank_world()
        data = self._datasets["train"]
        self.train_sampler = AlternatingTrainSampler(
            [s.lengths() for s in data.splits], data.starts[:-1].tolist(), self.batch_size, self.num_training_batches,
            self.seed, self.accumulate, self.steps_per_switch, start_batch=self.training_batches_taken, rank=rank,
            world_size=world)
        return self._loader(data, self.train_sampler, self.train_collator)

    def describe(self) -> dict[str, Any]:
        """What the record keeps about the training data: per dataset its name, language and sizes."""
        return {"name": self.train_data.name, "mode": self.mode, "steps_per_switch": self.steps_per_switch,
                "datasets": {role: {"name": self.train_data[role].name, "language": self.train_data[role].language,
                                    "train": len(self._split_of(role)[0]), "dev": len(self._split_of(role)[1])}
                             for role in self.roles}}
