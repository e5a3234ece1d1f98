"""Tokenisation cache, samplers and collator of the classification data module."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from xlt_runner.config import BenchmarkConfig
from xlt_runner.data import build_benchmark
from xlt_runner.data.batching import (TRAINING_BATCHES_KEY, BatchedDataModule, LengthGroupedTrainSampler,
                                      SortedEvalSampler)
from xlt_runner.data.classification import ClassificationDataModule, PaddingCollator, TokenizationCache
from xlt_runner.models import build_tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_model("xlmr")[1]


@pytest.fixture(scope="module")
def benchmark(synthetic_data):
    return build_benchmark(BenchmarkConfig(name="sib200", data_dir=str(synthetic_data)), cache_dir="unused")


def test_tokenised_splits_are_cached_on_disk(benchmark, tokenizer, tmp_path):
    first = TokenizationCache(tmp_path, tokenizer, max_length=32, text_prefix="query: ")
    a = first.get(benchmark, "fra_Latn", "train")
    assert (first.hits, first.misses) == (0, 1)
    second = TokenizationCache(tmp_path, tokenizer, max_length=32, text_prefix="query: ")
    b = second.get(benchmark, "fra_Latn", "train")
    assert (second.hits, second.misses) == (1, 0), "a second run must not re-tokenise"
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)
    other = TokenizationCache(tmp_path, tokenizer, max_length=16, text_prefix="query: ")
    other.get(benchmark, "fra_Latn", "train")
    assert other.misses == 1, "another max length is another cache entry"
    assert other.get(benchmark, "fra_Latn", "train").lengths().max() <= 16


def test_train_sampler_is_a_function_of_seed_and_batch_index():
    lengths = np.random.default_rng(0).integers(5, 60, size=500)
    full = list(LengthGroupedTrainSampler(lengths, 16, num_batches=70, seed=3))
    assert len(full) == 70 and all(len(b) == 16 for b in full)
    resumed = list(LengthGroupedTrainSampler(lengths, 16, num_batches=70, seed=3, start_batch=40))
    assert resumed == full[40:], "a resumed run continues with exactly the batches it would have seen"
    assert list(LengthGroupedTrainSampler(lengths, 16, num_batches=70, seed=4)) != full
    epoch = full[:len(lengths) // 16]
    assert len({i for b in epoch for i in b}) == 16 * len(epoch), "no repeats within an epoch"
    # length grouping: batches are much more uniform in length than random ones
    spread = np.mean([np.ptp(lengths[b]) for b in epoch])
    random_spread = np.mean([np.ptp(lengths[np.random.default_rng(i).choice(500, 16)]) for i in range(30)])
    assert spread < random_spread / 2


def test_train_sampler_shards_ranks_disjointly():
    lengths = np.arange(400) % 37 + 3
    ranks = [list(LengthGroupedTrainSampler(lengths, 8, num_batches=10, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_sampler_covers_every_example_exactly_once(world_size):
    lengths = np.random.default_rng(1).integers(1, 90, size=103)
    seen = [i for r in range(world_size) for b in SortedEvalSampler(lengths, 10, r, world_size) for i in b]
    assert sorted(seen) == list(range(103))


def test_collator_pads_to_longest_in_batch():
    batch = PaddingCollator(pad_token_id=1)([(np.array([5, 6, 7]), 2, 0), (np.array([5]), 4, 1)])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [2, 4] and batch["lang"].tolist() == [0, 1]


def test_datamodule_mixes_sources_and_indexes_targets(benchmark, tokenizer, tmp_path):
    dm = ClassificationDataModule(benchmark, tokenizer, source_languages=["eng_Latn", "arb_Arab"],
                                  target_languages=["fra_Latn", "eng_Latn"], max_length=32, text_prefix="",
                                  batch_size=8, eval_batch_size=16, num_training_batches=5, seed=0, cache_dir=tmp_path)
    dm.setup("fit")
    dm.setup("test")
    assert dm.eval_languages == ["eng_Latn", "arb_Arab", "fra_Latn"]
    assert dm.dataset_sizes() == {"train": 140, "dev": 28, "test": 42}
    langs = [int(x) for batch in dm.test_dataloader() for x in batch["lang"]]
    assert sorted(set(langs)) == [0, 2] and len(langs) == 42
    train_langs = {int(x) for batch in dm.train_dataloader() for x in batch["lang"]}
    assert train_langs == {0, 1}


def test_example_cap_is_a_stratified_fixed_seed_subsample(tokenizer, tmp_path):
    """SIB-200's files are sorted by label: a first-N cap would evaluate one class."""
    from conftest import SIB_LABELS, write_split
    from xlt_runner.data.classification import stratified_subsample

    for lang in ("eng_Latn", "fra_Latn"):
        rows = [(i, SIB_LABELS[i // 10], f"text {i} {lang}") for i in range(70)]  # sorted by label, 10 each
        for split in ("train", "dev", "test"):
            write_split(tmp_path / "data" / lang / f"{split}.tsv", rows)
    sorted_benchmark = build_benchmark(BenchmarkConfig(name="sib200", data_dir=str(tmp_path / "data")), "unused")
    examples = sorted_benchmark.load("eng_Latn", "test")
    assert [e.label for e in examples[:7]] == [0] * 7

    picked = stratified_subsample(examples, 14)
    assert sorted(e.label for e in picked) == sorted(list(range(7)) * 2)
    assert [e.id for e in picked] == sorted((e.id for e in picked), key=int), "file order is kept"
    assert [e.id for e in stratified_subsample(examples, 14)] == [e.id for e in picked], "fixed seed"
    assert [e.id for e in stratified_subsample(sorted_benchmark.load("fra_Latn", "test"), 14)] == \
        [e.id for e in picked], "parallel data: the same sentences in every language"
    assert len({e.label for e in stratified_subsample(examples, 5)}) == 5
    assert stratified_subsample(examples, None) == examples and stratified_subsample(examples, 99) == examples

    dm = ClassificationDataModule(sorted_benchmark, tokenizer, source_languages=["eng_Latn"],
                                  target_languages=["fra_Latn"], max_length=32, text_prefix="", batch_size=4,
                                  eval_batch_size=8, num_training_batches=2, seed=0, cache_dir=tmp_path / "cache",
                                  max_eval_examples_per_language=14)
    dm.setup("test")
    assert dm.subsampled_ids["test"]["fra_Latn"] == [e.id for e in picked]
    assert sorted(dm._datasets["test"].splits[0].labels.tolist()) == sorted(list(range(7)) * 2)


def test_a_corrupt_cache_file_is_rebuilt(benchmark, tokenizer, tmp_path, caplog):
    cache = TokenizationCache(tmp_path, tokenizer, max_length=32)
    good = cache.get(benchmark, "fra_Latn", "dev")
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[:40])  # a write cut short
    again = TokenizationCache(tmp_path, tokenizer, max_length=32)
    with caplog.at_level("WARNING"):
        rebuilt = again.get(benchmark, "fra_Latn", "dev")
    assert (again.hits, again.misses) == (0, 1) and "unreadable" in caplog.text and str(path) in caplog.text
    assert np.array_equal(rebuilt.ids, good.ids) and list(rebuilt.example_ids) == list(good.example_ids)
    assert TokenizationCache(tmp_path, tokenizer, max_length=32).get(benchmark, "fra_Latn", "dev") is not None


# ------------------------------------------------------------------ data position on resume
class _IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> np.ndarray:
        return (np.arange(self.n) * 7) % 23 + 1


class _IndexDataModule(BatchedDataModule):
    def __init__(self, num_training_batches: int) -> None:
        collate = lambda items: {"index": torch.tensor(items)}  # noqa: E731
        super().__init__(source_languages=["en"], target_languages=["en"], batch_size=4, eval_batch_size=4,
                         num_training_batches=num_training_batches, seed=5, splits={}, num_workers=0,
                         max_train_examples_per_language=None, max_eval_examples_per_language=None,
                         train_collator=collate, test_collator=collate)

    def setup(self, stage=None) -> None:
        self._datasets = {"train": _IndexDataset(40), "dev": _IndexDataset(8), "test": _IndexDataset(8)}


class _ManualAccumulation(pl.LightningModule):
    """Steps its optimiser itself once every ``accumulate`` batches (as a method that steps two
    partitions or accumulates by hand does): ``global_step`` is then not the batch count."""

    def __init__(self, accumulate: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.accumulate = accumulate
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        self.manual_backward((self.weight - batch["index"].float().mean()).pow(2).sum())
        if (batch_idx + 1) % self.accumulate == 0:
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()

    def validation_step(self, batch, batch_idx):  # validation batches are no training position
        self.log("val/loss", batch["index"].float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _StopAfter(pl.Callback):
    """Saves a checkpoint after ``batches`` training batches, then stops as a killed job would."""

    def __init__(self, batches: int, path) -> None:
        self.batches, self.path = batches, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.batches:
            trainer.save_checkpoint(self.path)
            raise _Stopped()


class _Stopped(Exception):
    pass


def _fit(dm, module, tmp_path, callbacks=(), ckpt_path=None):
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=dm.num_training_batches // module.accumulate,
                         max_epochs=1, val_check_interval=6, check_val_every_n_epoch=None, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return trainer


@pytest.mark.parametrize("accumulate", [1, 3])
def test_a_resumed_run_continues_at_the_batch_it_stopped_at_whatever_the_step_count(accumulate, tmp_path):
    """The data module counts the batches it served; with manual accumulation ``global_step`` is a
    third of that, and a position derived from it would serve batches 4-11 twice."""
    undisturbed = _ManualAccumulation(accumulate)
    _fit(_IndexDataModule(24), undisturbed, tmp_path / "a")
    assert len(undisturbed.seen) == 24
    first = _ManualAccumulation(accumulate)
    with pytest.raises(_Stopped):
        _fit(_IndexDataModule(24), first, tmp_path / "b", [_StopAfter(12, tmp_path / "stop.ckpt")])
    resumed = _ManualAccumulation(accumulate)
    dm = _IndexDataModule(24)
    trainer = _fit(dm, resumed, tmp_path / "c", ckpt_path=str(tmp_path / "stop.ckpt"))
    assert first.seen[:12] + resumed.seen == undisturbed.seen
    assert dm.training_batches_taken == 24 and trainer.global_step == 24 // accumulate


def test_a_resume_checkpoint_without_a_data_position_is_refused(tmp_path):
    from xlt_runner.resume import ResumeCheckpointError, read_resume_checkpoint
    path = tmp_path / "resume.ckpt"
    torch.save({"global_step": 3, "state_dict": {}}, path)
    with pytest.raises(ResumeCheckpointError, match="no training-data position"):
        read_resume_checkpoint(str(path), "run")
    torch.save({"global_step": 3, "_IndexDataModule": {TRAINING_BATCHES_KEY: 9}}, path)
    assert read_resume_checkpoint(str(path), "run") == 3
