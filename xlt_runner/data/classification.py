"""LightningDataModule for multi-source training and per-language evaluation.

Training mixes the train splits of all source languages; validation uses the dev
splits of the source languages; testing covers the test split of every target
language in one pass whose batches carry a language index, so per-language metrics
come out of a single evaluation loop.

Batches are padded to their own longest sequence. Training batches are formed by
length-grouped sampling (shuffle, cut into mega-batches, sort each by length);
evaluation batches are sorted by length across all languages, which is where most of
the evaluation speed comes from on a CPU. All samplers shard by rank without padding
so that, under DDP, every example is counted exactly once.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from xlt_runner.data import BenchmarkDataError, ClassificationBenchmark, Example
from xlt_runner.data.batching import BatchedDataModule
from xlt_runner.fileio import atomic_path

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- tokenised
#: Seed of the subsample that a ``max_*_examples_per_language`` cap takes. Fixed, so every run
#: of a sweep, whatever its own seed, sees the same examples; and the same for every language,
#: so on parallel data (SIB-200) the same sentences are drawn in every language.
SUBSAMPLE_SEED = 0
#: Bumped when the tokenised-cache format or the subsampling changes (old files become misses).
CACHE_FORMAT = "v2-stratified"


def stratified_subsample(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """``limit`` examples whose label shares match ``examples``' (largest remainder), drawn
    without replacement with :data:`SUBSAMPLE_SEED`, returned in file order. Files sorted by
    label (SIB-200's are) would otherwise give one class to a first-N cap."""
    if limit is None or limit >= len(examples):
        return list(examples)
    by_label: dict[int, list[int]] = {}
    for i, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(i)
    labels = sorted(by_label)
    quota = {label: limit * len(by_label[label]) / len(examples) for label in labels}
    count = {label: int(quota[label]) for label in labels}
    for label in sorted(labels, key=lambda l: (count[l] - quota[l], l))[:limit - sum(count.values())]:
        count[label] += 1
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    chosen = [i for label in labels for i in rng.permutation(by_label[label])[:count[label]].tolist()]
    return [examples[i] for i in sorted(chosen)]


@dataclass
class TokenizedSplit:
    """Token ids of one (language, split), stored flat with offsets."""
    ids: np.ndarray  # int32, all sequences concatenated
    offsets: np.ndarray  # int64, len = n + 1
    labels: np.ndarray  # int64, len = n
    example_ids: np.ndarray  # str, len = n: the benchmark's ``Example.id`` of each row

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies a tokenizer by class, name and vocabulary (not by object identity)."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha1(f"{type(tokenizer).__name__}|{getattr(tokenizer, 'name_or_path', '')}|{len(vocab)}".encode())
    for token in sorted(vocab)[:: max(1, len(vocab) // 2000)]:
        h.update(f"{token}={vocab[token]};".encode())
    return h.hexdigest()[:16]


class TokenizationCache:
    """Tokenises (language, split) texts once and keeps the result on disk.

    The key covers the benchmark's data fingerprint, the tokenizer, the text prefix, the
    maximum length and the example cap (a stratified subsample, :func:`stratified_subsample`),
    so a second run with the same settings does not re-tokenise. A cache file that cannot be
    read is a miss: it is rebuilt, with a warning.
    """

    def __init__(self, root: str | os.PathLike, tokenizer, max_length: int, text_prefix: str = "") -> None:
        self.root = Path(root)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_prefix = text_prefix
        self._tok_fp = tokenizer_fingerprint(tokenizer)
        self.hits = 0
        self.misses = 0

    def key(self, benchmark: ClassificationBenchmark, lang: str, split: str, limit: int | None) -> str:
        raw = (f"{CACHE_FORMAT}|{benchmark.name}|{benchmark.fingerprint()}|{lang}|{split}|{limit}|{self._tok_fp}|"
               f"{self.max_length}|{self.text_prefix}")
        return hashlib.sha1(raw.encode()).hexdigest()[:20]

    def get(self, benchmark: ClassificationBenchmark, lang: str, split: str, limit: int | None = None) -> TokenizedSplit:
        path = self.root / f"{benchmark.name}-{lang}-{split}-{self.key(benchmark, lang, split, limit)}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    cached = TokenizedSplit(z["ids"], z["offsets"], z["labels"], z["example_ids"])
                self.hits += 1
                return cached
            except Exception as exc:  # truncated, not an npz, missing arrays: rebuild it
                log.warning("tokenised-data cache file %s is unreadable (%s: %s); rebuilding it",
                            path, type(exc).__name__, exc)
                path.unlink(missing_ok=True)
        self.misses += 1
        examples = stratified_subsample(benchmark.load(lang, split), limit)
        if not examples:
            raise BenchmarkDataError(f"{benchmark.name}: split '{split}' of language '{lang}' is empty")
        encoded = self.tokenizer([self.text_prefix + ex.text for ex in examples], truncation=True,
                                 max_length=self.max_length, add_special_tokens=True)["input_ids"]
        lengths = np.fromiter((len(x) for x in encoded), dtype=np.int64, count=len(encoded))
        split_data = TokenizedSplit(
            ids=np.fromiter((t for seq in encoded for t in seq), dtype=np.int32, count=int(lengths.sum())),
            offsets=np.concatenate([[0], np.cumsum(lengths)]),
            labels=np.asarray([ex.label for ex in examples], dtype=np.int64),
            example_ids=np.asarray([ex.id for ex in examples], dtype=str),
        )
        with atomic_path(path) as tmp:  # concurrent runs filling the same entry: each replaces it whole
            np.savez(tmp, ids=split_data.ids, offsets=split_data.offsets, labels=split_data.labels,
                     example_ids=split_data.example_ids)
        return split_data


# ----------------------------------------------------------------------------- dataset
class MultiLanguageDataset(Dataset):
    """Concatenation of tokenised splits; item ``i`` knows its language index."""

    def __init__(self, splits: Sequence[TokenizedSplit], lang_indices: Sequence[int]) -> None:
        self.splits = list(splits)
        self.lang_indices = list(lang_indices)
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.splits])])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def lengths(self) -> np.ndarray:
        return np.concatenate([s.lengths() for s in self.splits]) if self.splits else np.zeros(0, dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        part = int(np.searchsorted(self.starts, i, side="right") - 1)
        j = i - int(self.starts[part])
        split = self.splits[part]
        return split.sequence(j), int(split.labels[j]), self.lang_indices[part]


class PaddingCollator:
    """Pads a batch to its longest sequence. Returns input_ids, attention_mask, labels, lang."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[tuple[np.ndarray, int, int]]) -> dict[str, torch.Tensor]:
        width = max(len(seq) for seq, _, _ in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (seq, _, _) in enumerate(items):
            input_ids[row, :len(seq)] = torch.from_numpy(seq.astype(np.int64))
            attention_mask[row, :len(seq)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([label for _, label, _ in items], dtype=torch.long),
            "lang": torch.tensor([lang for _, _, lang in items], dtype=torch.long),
        }


# -------------------------------------------------------------------------- datamodule
class ClassificationDataModule(BatchedDataModule):
    """Source-language training, source dev validation, per-target-language testing
    (loaders and the data position: :class:`~xlt_runner.data.batching.BatchedDataModule`).
    Methods size their per-language metrics with ``len(eval_languages)``.
    """

    def __init__(self, benchmark: ClassificationBenchmark, tokenizer, *, source_languages: list[str],
                 target_languages: list[str], max_length: int, text_prefix: str, batch_size: int,
                 eval_batch_size: int, num_training_batches: int, seed: int, cache_dir: str | os.PathLike,
                 train_split: str = "train", dev_split: str = "dev", test_split: str = "test",
                 max_train_examples_per_language: int | None = None,
                 max_eval_examples_per_language: int | None = None, num_workers: int = 0) -> None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        collator = PaddingCollator(pad)
        super().__init__(source_languages=source_languages, target_languages=target_languages, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_training_batches=num_training_batches, seed=seed,
                         splits={"train": train_split, "dev": dev_split, "test": test_split},
                         max_train_examples_per_language=max_train_examples_per_language,
                         max_eval_examples_per_language=max_eval_examples_per_language, num_workers=num_workers,
                         train_collator=collator, test_collator=collator)
        self.benchmark = benchmark
        self.tokenizer = tokenizer
        self.cache = TokenizationCache(Path(cache_dir) / "tokenized", tokenizer, max_length, text_prefix)

    def _build(self, stage: str, languages: list[str], limit: int | None) -> MultiLanguageDataset:
        index = {lang: i for i, lang in enumerate(self.eval_languages)}
        splits = [self.cache.get(self.benchmark, lang, self.splits[stage], limit) for lang in languages]
        if limit is not None:
            self.subsampled_ids[stage] = {lang: split.example_ids.tolist() for lang, split in zip(languages, splits)}
        return MultiLanguageDataset(splits, [index[lang] for lang in languages])

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and "train" not in self._datasets:
            self._datasets["train"] = self._build("train", self.source_languages, self.max_train)
            self._datasets["dev"] = self._build("dev", self.source_languages, self.max_eval)
        if stage in ("validate",) and "dev" not in self._datasets:
            self._datasets["dev"] = self._build("dev", self.source_languages, self.max_eval)
        if stage in ("test", "predict", None) and "test" not in self._datasets:
            self._datasets["test"] = self._build("test", self.target_languages, self.max_eval)
