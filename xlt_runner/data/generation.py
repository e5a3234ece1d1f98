"""Prompt formatting and the LightningDataModule of generation tasks (decoder LLMs, QA).

:class:`PromptFormat` turns a question into prompt token ids and an answer into completion
token ids, so that training (prompt + completion, loss on the completion only) sees exactly
the prompt tokens that generation sees. :class:`GenerationDataModule` mirrors
:class:`~xlt_runner.data.classification.ClassificationDataModule`: training mixes the train
splits of all source languages (length-grouped batches, a pure function of (seed, batch
index)); validation is the teacher-forced loss on the source languages' dev splits; test and
predict give left-padded prompts of every target language in one pass, in batches grouped by
the prompt start they share (a language whose prompts share more than all prompts do, e.g. its
few-shot exemplars, is batched on its own, so generation prefills that start once per batch;
the other languages are batched together: :func:`prompt_prefix_groups`), sorted by length
within a group, widest batch first, and sharded by rank without padding
(:class:`~xlt_runner.data.batching.GroupedEvalSampler`), each batch carrying ``index`` (into
:attr:`GenerationDataModule.eval_examples`) and ``lang`` (into ``eval_languages``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.data import BenchmarkDataError, GenerationBenchmark, GenerationExample
from xlt_runner.data.batching import BatchedDataModule, GroupedEvalSampler
from xlt_runner.data.classification import tokenizer_fingerprint
from xlt_runner.fileio import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("plain", "chat")
#: ``labels`` value of positions that carry no loss (prompt and padding), as torch's cross-entropy ignores.
IGNORE_INDEX = -100
#: Seed of the hash order a ``max_*_examples_per_language`` cap takes its questions in: fixed, so
#: every run of a sweep and every language get the same question ids.
SUBSAMPLE_SEED = 0
#: Bumped when the tokenised-cache format or the subsampling changes (old files become misses).
CACHE_FORMAT = "gen-v1"


# ------------------------------------------------------------------------------ prompts
def check_prompt_config(model_cfg: ModelConfig, training: bool) -> None:
    """Checks of ``model.format``/``template``/``system_prompt`` that need no tokenizer; raises
    :class:`ConfigError` naming the key. ``training``: the template must end with ``{a}``."""
    if model_cfg.format not in FORMATS:
        raise ConfigError(f"model.format={model_cfg.format!r} is not valid; choose one of: {', '.join(FORMATS)}")
    if model_cfg.format == "chat":
        return
    if model_cfg.system_prompt is not None:
        raise ConfigError("model.system_prompt applies to model.format=chat only; with model.format=plain put the "
                          "instruction into model.template, or set model.system_prompt=null")
    template = model_cfg.template
    if template.count("{q}") != 1:
        raise ConfigError(f"model.template={template!r} must contain {{q}} (where the question goes) exactly once, "
                          f"e.g. model.template='### Question: {{q}}\\n ### Answer: {{a}}'")
    if "{a}" in template and (template.count("{a}") != 1 or not template.endswith("{a}")):
        raise ConfigError(f"model.template={template!r}: {{a}} (the answer) must come once, at the very end, so "
                          f"that the prompt is everything before it")
    if training and "{a}" not in template:
        raise ConfigError(f"model.template={template!r} has no {{a}}: training needs to know where the answer goes; "
                          f"end the template with {{a}}")


class PromptFormat:
    """Question -> prompt ids, answer -> completion ids, for one model config and tokenizer.

    ``plain``: the prompt is ``model.template`` up to ``{a}`` with ``{q}`` filled in, tokenised
    with the tokenizer's leading special tokens (BOS); the completion is the answer's tokens
    followed by EOS. ``chat``: the prompt is ``apply_chat_template([system?, user],
    add_generation_prompt=True)``; the completion is what the template adds for the assistant
    turn (the whole conversation's ids minus the prompt's), up to and including its end-of-turn
    token. :attr:`stop_token_ids` are the tokens that end an answer (for ``eos_token_ids`` of
    :func:`xlt_runner.generation.generate_greedy`).

    Raises ConfigError for an invalid config (:func:`check_prompt_config`), ``format: chat`` on a
    tokenizer without a chat template, or a chat template whose full conversation does not
    start with its generation prompt.
    """

    def __init__(self, model_cfg: ModelConfig, tokenizer, training: bool) -> None:
        check_prompt_config(model_cfg, training)
        self.format = model_cfg.format
        self.template = model_cfg.template
        self.system_prompt = model_cfg.system_prompt
        self.tokenizer = tokenizer
        self.model_name = model_cfg.name
        self.training = training  # checked for training: the data module refuses to fit otherwise
        if self.format == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError(f"model.format=chat but the tokenizer of model {model_cfg.name!r} has no chat "
                                  f"template; use model.format=plain (with model.template)")
            probe_prompt = self._render("?")
            probe_full = self._chat_ids("?", "!")
            self._check_prefix(probe_prompt, probe_full)
            added = probe_full[len(probe_prompt):]
            special = set(tokenizer.all_special_ids)
            special |= {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
            ends = [k for k, token in enumerate(added) if token in special]
            if not ends:
                raise ConfigError(f"the chat template of model {model_cfg.name!r} closes the assistant turn with no "
                                  f"special token, so generation could not stop at the end of the answer; use "
                                  f"model.format=plain")
            self.end_of_turn_id = added[ends[0]]
            self._after_end = len(added) - ends[0] - 1  # template tokens after end-of-turn ("\n")
            stops = [self.end_of_turn_id, tokenizer.eos_token_id]
        else:
            self._before_a = self.template.split("{a}")[0]
            with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
            without = tokenizer("a", add_special_tokens=False)["input_ids"]
            self._leading = next(with_special[:k] for k in range(len(with_special) + 1)
                                 if with_special[k:k + len(without)] == without)
            stops = [tokenizer.eos_token_id]
        self.stop_token_ids: tuple[int, ...] = tuple(dict.fromkeys(t for t in stops if t is not None))
        self.overhead = len(self._render(""))  # prompt tokens of an empty question

    def fingerprint(self) -> str:
        """What the token ids depend on besides the tokenizer's vocabulary (keys caches)."""
        chat_template = self.tokenizer.chat_template if self.format == "chat" else ""
        raw = f"{self.format}|{self.template}|{self.system_prompt}|{chat_template}"
        return hashlib.sha1(raw.encode()).hexdigest()[:16]

    # -- rendering
    def _messages(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return system + [{"role": "user", "content": question}]

    def _chat_ids(self, question: str, answer: str) -> list[int]:
        conversation = self._messages(question) + [{"role": "assistant", "content": answer}]
        return list(self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])

    def _render(self, question: str) -> list[int]:
        if self.format == "chat":
            return list(self.tokenizer.apply_chat_template(self._messages(question), add_generation_prompt=True,
                                                           tokenize=True, return_dict=True)["input_ids"])
        text = self._before_a.replace("{q}", question)
        return self._leading + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _check_prefix(self, prompt: list[int], full: list[int]) -> None:
        if full[:len(prompt)] != prompt:
            raise ConfigError(f"the chat template of model {self.model_name!r} does not render a conversation as its "
                              f"generation prompt followed by the answer (prompt {prompt[-8:]}..., conversation "
                              f"{full[len(prompt) - 8:len(prompt)]}... differ), so training and generation would "
                              f"see different prompts; use model.format=plain")

    # -- public
    def encode_prompt(self, question: str, room: int | None = None) -> tuple[list[int], bool]:
        """Prompt ids of ``question`` and whether it was truncated: at most ``room`` tokens
        (None: no limit), cutting the question from the LEFT (template kept). Raises
        ConfigError when the template alone takes more than ``room``."""
        _, ids, truncated = self._fit(question, room)
        return ids, truncated

    def _fit(self, question: str, room: int | None) -> tuple[str, list[int], bool]:
        """(question as kept, prompt ids, truncated) for :meth:`encode_prompt`."""
        ids = self._render(question)
        if room is None or len(ids) <= room:
            return question, ids, False
        if self.overhead > room:
            raise ConfigError(f"the prompt format of model {self.model_name!r} takes {self.overhead} tokens without "
                              f"any question, more than the {room} left for the prompt; raise model.max_length")
        offsets = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        drop = len(ids) - room
        while len(ids) > room:
            start = offsets[drop][0] if drop < len(offsets) else len(question)
            question = question[max(start, 1):]  # at least one character: a token spanning the whole text
            # (an unknown-character token) must not stop the loop from progressing
            offsets = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            ids = self._render(question)
            drop = len(ids) - room
        return question, ids, True

    def prompt_ids(self, question: str, room: int | None = None) -> list[int]:
        """Prompt ids of ``question``, cut from the left of the question to ``room`` tokens."""
        return self.encode_prompt(question, room)[0]

    def completion_ids(self, answer: str, question: str = "?") -> list[int]:
        """The tokens that follow the prompt for ``answer``, ending with EOS (plain) or the chat
        template's end-of-turn token (chat: the assistant turn rendered after ``question``)."""
        if self.format == "plain":
            return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return self._assistant_turn(self._render(question), self._chat_ids(question, answer), answer)

    def _assistant_turn(self, prompt: list[int], full: list[int], answer: str) -> list[int]:
        self._check_prefix(prompt, full)
        completion = full[len(prompt):len(full) - self._after_end]
        if len(full) - len(prompt) <= self._after_end or completion[-1] != self.end_of_turn_id:
            raise ConfigError(f"the chat template of model {self.model_name!r} does not close the assistant turn of "
                              f"answer {answer!r} with the same end-of-turn token as other answers; "
                              f"use model.format=plain")
        return completion

    def encode_example(self, question: str, answer: str, max_length: int) -> tuple[list[int], list[int], bool, bool]:
        """(prompt ids, completion ids, prompt truncated, completion truncated) of one training
        example of at most ``max_length`` tokens: the completion keeps its room (cut on the
        right only if even an empty question leaves too little), the prompt gets the rest. In chat
        format the conversation of this very question and answer must render as prompt +
        completion (else ConfigError)."""
        prompt = self._render(question)
        if self.format == "plain":
            completion = self.completion_ids(answer)
        else:
            completion = self._assistant_turn(prompt, self._chat_ids(question, answer), answer)
        if len(prompt) + len(completion) <= max_length:
            return prompt, completion, False, False
        completion_room = max_length - self.overhead
        if completion_room < 1:
            raise ConfigError(f"model.max_length={max_length} leaves no room for an answer after the "
                              f"{self.overhead}-token prompt format of model {self.model_name!r}; "
                              f"raise model.max_length")
        cut_completion = len(completion) > completion_room
        completion = completion[:completion_room]
        kept_question, prompt, cut_prompt = self._fit(question, max_length - len(completion))
        if self.format == "chat" and cut_prompt:
            self._check_prefix(prompt, self._chat_ids(kept_question, answer))
        return prompt, completion, cut_prompt, cut_completion


# ------------------------------------------------------------------------------- cache
def subsample_by_id(examples: Sequence[GenerationExample], limit: int | None) -> list[GenerationExample]:
    """The ``limit`` examples whose ids come first in a seeded hash order (:data:`SUBSAMPLE_SEED`),
    in file order: the same question ids in every language of parallel data."""
    if limit is None or limit >= len(examples):
        return list(examples)
    rank = sorted(range(len(examples)),
                  key=lambda i: hashlib.sha1(f"{SUBSAMPLE_SEED}|{examples[i].id}".encode()).hexdigest())
    return [examples[i] for i in sorted(rank[:limit])]


@dataclass
class TokenizedQA:
    """Token ids of one (language, split), flat with offsets. Each row is the prompt, followed
    by the completion in teacher-forced splits; ``prompt_lengths`` says where the prompt ends."""
    ids: np.ndarray  # int32, all rows concatenated
    offsets: np.ndarray  # int64, len = n + 1
    prompt_lengths: np.ndarray  # int64, len = n
    example_ids: np.ndarray  # str, len = n
    truncated_prompts: int
    truncated_completions: int

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


def _pack(rows: list[tuple[list[int], int]], example_ids: list[str], truncated_prompts: int,
          truncated_completions: int) -> TokenizedQA:
    lengths = np.fromiter((len(ids) for ids, _ in rows), dtype=np.int64, count=len(rows))
    return TokenizedQA(
        ids=np.fromiter((t for ids, _ in rows for t in ids), dtype=np.int32, count=int(lengths.sum())),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        prompt_lengths=np.asarray([p for _, p in rows], dtype=np.int64),
        example_ids=np.asarray(example_ids, dtype=str),
        truncated_prompts=truncated_prompts, truncated_completions=truncated_completions)


# ----------------------------------------------------------------------------- dataset
class QADataset(Dataset):
    """Concatenated tokenised splits; item ``i`` is ``(ids, prompt_length, lang index, i)``."""

    def __init__(self, splits: Sequence[TokenizedQA], lang_indices: Sequence[int]) -> None:
        self.splits = list(splits)
        self.lang_indices = list(lang_indices)
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.splits])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def lengths(self) -> np.ndarray:
        return np.concatenate([s.lengths() for s in self.splits]) if self.splits else np.zeros(0, dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, int]:
        part = int(np.searchsorted(self.starts, i, side="right") - 1)
        j = i - int(self.starts[part])
        split = self.splits[part]
        return split.sequence(j), int(split.prompt_lengths[j]), self.lang_indices[part], i


class TeacherForcedCollator:
    """Right-padded prompt + completion: ``input_ids``, ``attention_mask``, ``labels`` (the ids,
    :data:`IGNORE_INDEX` on prompt and padding: loss on the completion only), ``lang``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[tuple[np.ndarray, int, int, int]]) -> dict[str, torch.Tensor]:
        width = max(len(seq) for seq, *_ in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, (seq, prompt_length, _, _) in enumerate(items):
            ids = torch.from_numpy(seq.astype(np.int64))
            input_ids[row, :len(seq)] = ids
            attention_mask[row, :len(seq)] = 1
            labels[row, prompt_length:len(seq)] = ids[prompt_length:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "lang": torch.tensor([lang for _, _, lang, _ in items], dtype=torch.long)}


class PromptCollator:
    """Left-padded prompts for generation: ``input_ids``, ``attention_mask``, ``index`` (the
    row of :attr:`GenerationDataModule.eval_examples`), ``lang``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[tuple[np.ndarray, int, int, int]]) -> dict[str, torch.Tensor]:
        width = max(len(seq) for seq, *_ in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (seq, *_) in enumerate(items):
            input_ids[row, width - len(seq):] = torch.from_numpy(seq.astype(np.int64))
            attention_mask[row, width - len(seq):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "index": torch.tensor([i for *_, i in items], dtype=torch.long),
                "lang": torch.tensor([lang for _, _, lang, _ in items], dtype=torch.long)}


def _common_prefix_length(prompts: Sequence[np.ndarray]) -> int:
    """How many tokens every one of ``prompts`` starts with."""
    shortest = min(len(p) for p in prompts)
    heads = np.stack([np.asarray(p[:shortest]) for p in prompts])
    differs = np.flatnonzero((heads != heads[:1]).any(axis=0))
    return int(differs[0]) if len(differs) else shortest


def prompt_prefix_groups(prompts: Sequence[Sequence[int]], languages: Sequence) -> np.ndarray:
    """The batch group of every prompt (for :class:`~xlt_runner.data.batching.GroupedEvalSampler`),
    by the prompt start it shares: a language whose prompts all start with more tokens than every
    prompt does (its few-shot exemplars, an instruction in the language) forms a group of its own,
    and languages with the very same start share one; the other languages (their prompts share
    only what all share, e.g. a chat template's system turn, or a language has one prompt) form one
    group, sorted by length across them as before. Group ids count from 0 in order of first appearance."""
    if len(prompts) == 0:
        return np.zeros(0, dtype=np.int64)
    languages = np.asarray(languages)
    common = _common_prefix_length(prompts)
    keys: dict[object, int] = {}
    groups = np.empty(len(prompts), dtype=np.int64)
    _, first = np.unique(languages, return_index=True)
    for lang in languages[np.sort(first)]:
        members = np.flatnonzero(languages == lang)
        shared = _common_prefix_length([prompts[i] for i in members]) if len(members) > 1 else 0
        key = tuple(int(t) for t in prompts[members[0]][:shared]) if shared > common else None
        groups[members] = keys.setdefault(key, len(keys))
    return groups


# -------------------------------------------------------------------------- datamodule
class GenerationDataModule(BatchedDataModule):
    """Source-language SFT, source dev loss, per-target-language generation (loaders and the
    data position: :class:`~xlt_runner.data.batching.BatchedDataModule`).

    ``eval_examples`` lists the test examples (every target language, capped, file
    order) that the ``index`` of test/predict batches points into. ``truncated_prompts`` /
    ``truncated_completions``: split name -> language -> examples cut to fit ``max_length``
    (one warning per :meth:`setup` says how many). ``subsampled_ids``: split name -> language
    -> ids a cap kept. Training prompts may take ``max_length`` minus the completion's
    length; generation prompts ``max_length - max_new_tokens``.
    """

    def __init__(self, benchmark: GenerationBenchmark, tokenizer, prompt_format: PromptFormat, *,
                 source_languages: list[str], target_languages: list[str], batch_size: int, eval_batch_size: int,
                 num_training_batches: int, seed: int, cache_dir: str | os.PathLike, max_length: int,
                 max_new_tokens: int, train_split: str = "train", dev_split: str = "dev", test_split: str = "test",
                 max_train_examples_per_language: int | None = None,
                 max_eval_examples_per_language: int | None = None, num_workers: int = 0) -> None:
        if max_length - max_new_tokens < prompt_format.overhead + 1:
            raise ConfigError(f"model.max_length={max_length} minus benchmark.max_new_tokens={max_new_tokens} leaves "
                              f"{max_length - max_new_tokens} tokens for a prompt, but the prompt format alone takes "
                              f"{prompt_format.overhead}; raise model.max_length or lower benchmark.max_new_tokens")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        super().__init__(source_languages=source_languages, target_languages=target_languages, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_training_batches=num_training_batches, seed=seed,
                         splits={"train": train_split, "dev": dev_split, "test": test_split},
                         max_train_examples_per_language=max_train_examples_per_language,
                         max_eval_examples_per_language=max_eval_examples_per_language, num_workers=num_workers,
                         train_collator=TeacherForcedCollator(pad), test_collator=PromptCollator(pad))
        self.benchmark = benchmark
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.cache_root = Path(cache_dir) / "tokenized"
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self._tok_fp = tokenizer_fingerprint(tokenizer)
        self.eval_examples: list[GenerationExample] = []
        self.truncated_prompts: dict[str, dict[str, int]] = {}
        self.truncated_completions: dict[str, dict[str, int]] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    # -- tokenisation and its cache
    def _cache_path(self, stage: str, lang: str, limit: int | None) -> Path:
        return self.tokenized_cache_path(f"{self.benchmark.name}|{self.benchmark.fingerprint()}|{limit}", stage, lang)

    def tokenized_cache_path(self, data_key: str, stage: str, lang: str) -> Path:
        """The cache file of one tokenised split: ``data_key`` says which examples (data content and
        selection); the tokenizer, prompt format, lengths and the split's role are added here."""
        prompt_room = "teacher" if stage != "test" else f"prompt-{self.max_length - self.max_new_tokens}"
        raw = (f"{CACHE_FORMAT}|{data_key}|{lang}|{self.splits[stage]}|{self._tok_fp}|"
               f"{self.prompt_format.fingerprint()}|{self.max_length}|{prompt_room}")
        key = hashlib.sha1(raw.encode()).hexdigest()[:20]
        return self.cache_root / f"{data_key.split('|')[0]}-{lang}-{self.splits[stage]}-{key}.npz"

    def _tokenize(self, examples: list[GenerationExample], stage: str) -> TokenizedQA:
        rows: list[tuple[list[int], int]] = []
        cut_prompts = cut_completions = 0
        for ex in examples:
            if stage == "test":
                prompt, cut = self.prompt_format.encode_prompt(ex.prompt, self.max_length - self.max_new_tokens)
                rows.append((prompt, len(prompt)))
            else:
                answer = ex.completion if ex.completion is not None else ex.references[0]
                prompt, completion, cut, cut_completion = self.prompt_format.encode_example(ex.prompt, answer,
                                                                                           self.max_length)
                rows.append((prompt + completion, len(prompt)))
                cut_completions += cut_completion
            cut_prompts += cut
        return _pack(rows, [ex.id for ex in examples], cut_prompts, cut_completions)

    def _examples(self, stage: str, lang: str, limit: int | None) -> list[GenerationExample]:
        examples = subsample_by_id(self.benchmark.load(lang, self.splits[stage]), limit)
        if not examples:
            raise BenchmarkDataError(f"{self.benchmark.name}: split '{self.splits[stage]}' of language '{lang}' "
                                     f"is empty")
        return examples

    def _tokenized(self, stage: str, lang: str, limit: int | None,
                   examples: list[GenerationExample] | None = None) -> TokenizedQA:
        """The tokenised split, from the cache or tokenised now (from ``examples`` if given)."""
        return self.load_or_tokenize(self._cache_path(stage, lang, limit), lambda: self._tokenize(
            examples if examples is not None else self._examples(stage, lang, limit), stage))

    def load_or_tokenize(self, path: Path, tokenize) -> TokenizedQA:
        """The tokenised split cached at ``path``, else ``tokenize()`` written there atomically
        (an unreadable cache file is rebuilt)."""
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    cached = TokenizedQA(z["ids"], z["offsets"], z["prompt_lengths"], z["example_ids"],
                                         int(z["truncated_prompts"]), int(z["truncated_completions"]))
                self.cache_hits += 1
                return cached
            except Exception as exc:  # truncated, not an npz, missing arrays: rebuild it
                log.warning("tokenised-data cache file %s is unreadable (%s: %s); rebuilding it",
                            path, type(exc).__name__, exc)
                path.unlink(missing_ok=True)
        self.cache_misses += 1
        data = tokenize()
        with atomic_path(path) as tmp:
            np.savez(tmp, ids=data.ids, offsets=data.offsets, prompt_lengths=data.prompt_lengths,
                     example_ids=data.example_ids, truncated_prompts=data.truncated_prompts,
                     truncated_completions=data.truncated_completions)
        return data

    def _build(self, stage: str, languages: list[str], limit: int | None) -> str:
        if stage != "test" and not self.prompt_format.training:
            raise ConfigError("the prompt format was checked for generation only (PromptFormat(..., training=False)); "
                              "build it with training=True to fit or validate")
        index = {lang: i for i, lang in enumerate(self.eval_languages)}
        if stage == "test":  # generation needs the references too
            examples = {lang: self._examples(stage, lang, limit) for lang in languages}
            splits = [self._tokenized(stage, lang, limit, examples[lang]) for lang in languages]
            self.eval_examples = [ex for lang in languages for ex in examples[lang]]
            if [ex.id for ex in self.eval_examples] != [i for s in splits for i in s.example_ids.tolist()]:
                raise BenchmarkDataError(f"{self.benchmark.name}: the tokenised-data cache disagrees with the data "
                                         f"({self.benchmark.location}); delete {self.cache_root} and rerun")
        else:
            splits = [self._tokenized(stage, lang, limit) for lang in languages]
            self.truncated_completions[stage] = {lang: s.truncated_completions for lang, s in zip(languages, splits)}
        if limit is not None:
            self.subsampled_ids[stage] = {lang: split.example_ids.tolist() for lang, split in zip(languages, splits)}
        self.truncated_prompts[stage] = {lang: s.truncated_prompts for lang, s in zip(languages, splits)}
        self._datasets[stage] = QADataset(splits, [index[lang] for lang in languages])
        return stage

    def setup(self, stage: str | None = None) -> None:
        built = []
        if stage in ("fit", None) and "train" not in self._datasets:
            built += [self._build("train", self.source_languages, self.max_train),
                      self._build("dev", self.source_languages, self.max_eval)]
        if stage == "validate" and "dev" not in self._datasets:
            built.append(self._build("dev", self.source_languages, self.max_eval))
        if stage in ("test", "predict", None) and "test" not in self._datasets:
            built.append(self._build("test", self.target_languages, self.max_eval))
        self._warn_truncation(built)

    def test_dataloader(self) -> DataLoader:
        """Test (and predict) batches grouped by the prompt start they share
        (:func:`prompt_prefix_groups`: a language whose prompts start alike beyond what every prompt
        shares, e.g. its few-shot exemplars, is batched on its own), longest prompts first within a
        group, widest batch first, rank r taking batches r, r+W, ...:
        :func:`~xlt_runner.generation.generate_greedy` prefills what a batch's rows share once,
        which batches sorted across such languages would lose (MGSM: 200-370 shared tokens of
        240-630)."""
        rank, world = self._rank_world()
        data = self._datasets["test"]
        groups = prompt_prefix_groups([split.sequence(j) for split in data.splits for j in range(len(split))],
                                      np.repeat(np.arange(len(data.splits)), [len(s) for s in data.splits]))
        sampler = GroupedEvalSampler(data.lengths(), groups, self.eval_batch_size, rank, world)
        return self._loader(data, sampler, self.test_collator)

    def _warn_truncation(self, stages: list[str]) -> None:
        parts, total = [], 0
        for stage in stages:
            counts = {lang: n for lang, n in self.truncated_prompts[stage].items() if n}
            if counts:
                parts.append(f"{self.splits[stage]}: " + ", ".join(f"{lang} {n}" for lang, n in counts.items()))
            total += len(self._datasets[stage])
        if parts:
            cut = sum(sum(self.truncated_prompts[s].values()) for s in stages)
            warnings.warn(f"{cut} of {total} prompts were longer than the room left in model.max_length="
                          f"{self.max_length} (generation prompts: minus benchmark.max_new_tokens="
                          f"{self.max_new_tokens}; "
                          f"training prompts: minus the answer) and lost the start of their question "
                          f"({'; '.join(parts)})", stacklevel=3)
