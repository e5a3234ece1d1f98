"""Batch samplers and the data-module base shared by every task kind's data module.

Both samplers shard by rank without padding, so under DDP every example is counted exactly
once, and both are deterministic: training batch ``k`` is a pure function of (seed, k),
evaluation batches a pure function of the lengths. :class:`BatchedDataModule` counts the
training batches the trainer has taken, which is where a resumed run's data continues.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from xlt_runner.data import BenchmarkDataError

MEGABATCH_FACTOR = 50  # length grouping: sort within windows of 50 batches, like HF's group_by_length


class LengthGroupedTrainSampler(Sampler[list[int]]):
    """Yields training batches by global batch index, deterministically from the seed.

    Epoch ``e`` is a permutation drawn from ``seed + e``, cut into mega-batches of
    ``MEGABATCH_FACTOR`` batches, each sorted by length (longest first) and split into
    batches; batch order within the epoch is shuffled too. Batch ``k`` of the run is
    therefore a pure function of (seed, k), so a resumed run continues exactly where it
    stopped by setting ``start_batch``. With ``world_size > 1`` each rank takes every
    ``world_size``-th batch.

    The whole run is one Lightning epoch of ``len(sampler) == num_batches`` batches. A resumed
    run yields only batches ``start_batch .. num_batches - 1``: Lightning restores its own
    position in the epoch (``start_batch`` batches done) and counts on from there, so the
    length stays the whole epoch's; the epoch ends when both agree that ``num_batches`` are done.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, num_batches: int, seed: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(lengths) < batch_size:
            raise BenchmarkDataError(f"the training set has {len(lengths)} examples, fewer than one batch of {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = len(self.lengths) // (batch_size * world_size) * world_size
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.lengths))
        mega = self.batch_size * MEGABATCH_FACTOR
        batches: list[np.ndarray] = []
        for start in range(0, len(perm), mega):
            window = perm[start:start + mega]
            window = window[np.argsort(-self.lengths[window], kind="stable")]
            batches.extend(window[i:i + self.batch_size] for i in range(0, len(window) - self.batch_size + 1, self.batch_size))
        batches = batches[:self.batches_per_epoch]
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
        self._epoch_cache = (epoch, batches)
        return batches

    def global_batch(self, k: int) -> np.ndarray:
        """Indices of global batch ``k`` (counting all ranks' batches)."""
        epoch, within = divmod(k, self.batches_per_epoch)
        return self._epoch_batches(epoch)[within]

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.start_batch, self.num_batches):
            yield self.global_batch(k * self.world_size + self.rank).tolist()

    def __len__(self) -> int:
        return self.num_batches


class SortedEvalSampler(Sampler[list[int]]):
    """Evaluation batches of similar length (longest first); rank ``r`` takes batches r, r+W, ...

    No example is repeated or padded in, so summed metric states equal a single process's.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        order = np.argsort(-np.asarray(lengths), kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class GroupedEvalSampler(Sampler[list[int]]):
    """Evaluation batches that never mix groups, for prompts that share a start within a group
    (generation: one language's few-shot exemplars, which
    :func:`~xlt_runner.generation.generate_greedy` prefills once per batch).

    Each group (in order of first appearance) is sorted by length, longest first, and cut into
    batches of ``batch_size`` (its last one may be shorter); the batches of all groups are then
    ordered by their longest example, longest first (ties: group order, then position), so the
    widest batch still comes first. Rank ``r`` takes batches r, r+W, ...: deterministic, every
    example exactly once, nothing padded in, as :class:`SortedEvalSampler`.
    """

    def __init__(self, lengths: np.ndarray, groups: np.ndarray, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        lengths, groups = np.asarray(lengths), np.asarray(groups)
        if lengths.shape != groups.shape:
            raise ValueError(f"{len(lengths)} lengths but {len(groups)} group keys")
        _, first = np.unique(groups, return_index=True)
        batches: list[np.ndarray] = []
        for key in groups[np.sort(first)]:
            members = np.flatnonzero(groups == key)
            members = members[np.argsort(-lengths[members], kind="stable")]
            batches.extend(members[i:i + batch_size] for i in range(0, len(members), batch_size))
        longest = np.asarray([lengths[b[0]] for b in batches], dtype=np.int64)
        batches = [batches[i] for i in np.argsort(-longest, kind="stable")]
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


#: Key of the data position in a data module's checkpoint state (``state_dict``).
TRAINING_BATCHES_KEY = "training_batches_taken"


class BatchedDataModule(pl.LightningDataModule):
    """Loaders over ``self._datasets`` (``"train"``, ``"dev"``, ``"test"``; each with ``lengths()``),
    which a subclass builds in ``setup``; ``train_collator`` serves training and validation
    batches, ``test_collator`` test and predict batches.

    **Data position.** ``training_batches_taken`` counts the training batches this process has
    handed to the training step (counted in ``on_before_batch_transfer`` while the trainer
    trains), is saved in every checkpoint (``state_dict``) and restored on resume, and a new
    training loader starts at that batch. It is counted, not derived from ``global_step``: a
    method that accumulates gradients itself or steps two optimisers per batch resumes on the
    batch it stopped at, like any other.

    ``eval_languages`` (source ∪ targets, in that order) index the ``lang`` field of every batch.
    """

    def __init__(self, *, source_languages: list[str], target_languages: list[str], batch_size: int,
                 eval_batch_size: int, num_training_batches: int, seed: int, splits: dict[str, str],
                 max_train_examples_per_language: int | None, max_eval_examples_per_language: int | None,
                 num_workers: int, train_collator: Callable, test_collator: Callable) -> None:
        super().__init__()
        if not source_languages:
            raise BenchmarkDataError("no source languages: set languages.source to codes the benchmark has")
        if not target_languages:
            raise BenchmarkDataError("no target languages: languages.targets selects none of the benchmark's languages")
        self.source_languages = list(source_languages)
        self.target_languages = list(target_languages)
        self.eval_languages = list(dict.fromkeys(self.source_languages + self.target_languages))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_training_batches = num_training_batches
        self.seed = seed
        self.splits = dict(splits)
        self.max_train = max_train_examples_per_language
        self.max_eval = max_eval_examples_per_language
        self.num_workers = num_workers
        self.train_collator = train_collator
        self.test_collator = test_collator
        self._datasets: dict[str, Any] = {}
        #: stage -> language -> ids of the examples a ``max_*_examples_per_language`` cap kept
        self.subsampled_ids: dict[str, dict[str, list[str]]] = {}
        self.train_sampler: LengthGroupedTrainSampler | None = None
        self.training_batches_taken = 0

    # -- data position
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.training_batches_taken += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {TRAINING_BATCHES_KEY: self.training_batches_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.training_batches_taken = int(state_dict[TRAINING_BATCHES_KEY])

    # -- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, sampler: Sampler, collator: Callable) -> DataLoader:
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        data = self._datasets["train"]
        self.train_sampler = LengthGroupedTrainSampler(data.lengths(), self.batch_size, self.num_training_batches,
                                                       self.seed, start_batch=self.training_batches_taken,
                                                       rank=rank, world_size=world)
        return self._loader(data, self.train_sampler, self.train_collator)

    def _eval_loader(self, split: str, collator: Callable) -> DataLoader:
        rank, world = self._rank_world()
        data = self._datasets[split]
        return self._loader(data, SortedEvalSampler(data.lengths(), self.eval_batch_size, rank, world), collator)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("dev", self.train_collator)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.test_collator)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def optimizer_steps_per_epoch(self, world_size: int = 1, accumulate_grad_batches: int = 1) -> int:
        """Optimiser steps in one pass over the training set (whole batches only, as the
        training sampler draws them), at least 1."""
        self.setup("fit")
        batches_per_process = len(self._datasets["train"]) // (self.batch_size * world_size)
        return max(1, batches_per_process // accumulate_grad_batches)

    def dataset_sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self._datasets.items()}
