"""Batch samplers shared by the data modules (classification, generation).

Both shard by rank without padding, so under DDP every example is counted exactly once, and
both are deterministic: training batch ``k`` is a pure function of (seed, k), evaluation
batches a pure function of the lengths.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

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
