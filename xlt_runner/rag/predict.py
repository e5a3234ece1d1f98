"""Every model stage of the RAG pipeline runs in Lightning's predict loop.

:func:`predict_items` hands a list of work items (prompts, passages, queries) to
``trainer.predict`` through a :class:`BatchPredictor`, so encoding, reranking, translation,
judging, rewriting and generation run on the trainer's accelerator, precision and strategy, the
same as training: under DDP each rank takes every ``world_size``-th item of the length-sorted
list and the results are gathered on every rank.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader


class BatchPredictor(pl.LightningModule):
    """A LightningModule whose ``predict_step`` is ``step(batch)``: ``batch`` is a list of work
    items, the result a list of the same length. ``models`` are registered as submodules so that
    the trainer places them on its device (and casts under its precision plugin)."""

    def __init__(self, models: dict[str, nn.Module], step: Callable[[list], list]) -> None:
        super().__init__()
        self.models = nn.ModuleDict(models)
        self.step = step

    def predict_step(self, batch: list, batch_idx: int) -> list:
        outputs = self.step(batch)
        if len(outputs) != len(batch):
            raise RuntimeError(f"a prediction step returned {len(outputs)} results for {len(batch)} items")
        return outputs

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # plain Python items: the step tokenises and places them itself


def predict_items(trainer: pl.Trainer, predictor: BatchPredictor, items: Sequence, *, batch_size: int,
                  length: Callable[[Any], int], on_batch: Callable[[list[int], list], None] | None = None) -> list:
    """``predictor``'s results for ``items``, in the order of ``items``. Items are batched longest
    first (``length``: a size in tokens or characters), so a batch holds items of similar size
    and the first batch shows at once whether the longest ones fit in memory. ``on_batch(indices,
    results)`` is called after every batch (on every rank, with that rank's items): the pipeline
    stores results as they come, so a job killed mid-stage resumes from its last batch."""
    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: (-length(items[i]), i))
    rank, world = trainer.global_rank, trainer.world_size
    mine = order[rank::world]
    loader = DataLoader([(i, items[i]) for i in mine], batch_size=batch_size, shuffle=False,
                        collate_fn=lambda pairs: pairs)
    indexed = _IndexedStep(predictor.step, on_batch)
    predictor.step = indexed
    try:
        batches = trainer.predict(predictor, dataloaders=loader, return_predictions=True) or []
    finally:
        predictor.step = indexed.step
    pairs = [pair for batch in batches for pair in batch]
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, pairs)
        pairs = [pair for part in gathered for pair in part]
    results: list = [None] * len(items)
    for index, output in pairs:
        results[index] = output
    return results


class _IndexedStep:
    """Runs a step on the items of ``(index, item)`` pairs and pairs each result with its index."""

    def __init__(self, step: Callable[[list], list], on_batch: Callable[[list[int], list], None] | None) -> None:
        self.step, self.on_batch = step, on_batch

    def __call__(self, pairs: list) -> list:
        outputs = self.step([item for _, item in pairs])
        if self.on_batch is not None:
            self.on_batch([index for index, _ in pairs], outputs)
        return [(index, output) for (index, _), output in zip(pairs, outputs)]
