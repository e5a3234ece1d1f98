"""SFT training throughput: xlt_runner's ``method=sft`` against TRL's ``SFTTrainer``, and Lightning against a plain loop.

Three contenders fine-tune the same decoder (default: the packaged SmolLM2-135M-Instruct,
``model=smollm2_135m``, its chat format, fp32, every parameter trains) on the same MKQA English
question/answer pairs (read straight from ``<data-dir>/mkqa-en.jsonl``, first reference as the
answer; the last ``DEV_ROWS`` rows are held out as the dev split), with the same batch size, the
same number of optimiser steps, AdamW (``torch.optim.AdamW``) at the same learning rate with the
same linear decay and no warmup, weight decay 0, gradient clipping at 1.0, no evaluation and no
checkpointing inside the timed window:

* **a_trl**: ``trl.SFTTrainer`` with ``completion_only_loss=True`` on a pre-tokenised dataset
  (``input_ids`` + ``completion_mask``: exactly the project's prompt + completion token ids of
  exactly the examples the project trains on in the same number of steps). TRL's defaults
  otherwise: its ``DataCollatorForLanguageModeling`` (right padding to the longest row of each
  batch, no ``pad_to_multiple_of`` on CPU, not padding-free) and ``transformers.Trainer``'s random
  sampler (no length grouping), and its loss (TRL's chunked log-prob LM head). Changed from TRL's
  defaults, to compare like with like: ``bf16=False`` (fp32), ``gradient_checkpointing=False``
  (xlt_runner does not checkpoint activations), ``optim="adamw_torch"`` (the project's optimiser
  class; TRL's default is the fused ``adamw_torch_fused``, ``--trl-optim`` picks it), logging,
  saving and evaluation off. The packaged GGUF-converted model's config still names a GGUF
  ``quantization_config`` although its weights are plain floats; ``transformers.Trainer`` refuses
  to train a model marked quantized, so that marker is dropped (:func:`strip_gguf_marker`).
* **b_plain**: a plain PyTorch loop over the project's own batches (``GenerationDataModule``'s
  length-grouped training loader) and the project's loss (``DecoderMethod.answer_losses``), with
  the optimiser and schedule of the method's ``configure_optimizers``: forward, backward,
  ``clip_grad_norm_(1.0)``, ``step``, scheduler step, ``zero_grad``; nothing else.
* **c_lightning**: the project's path: ``SupervisedFineTuning`` + ``GenerationDataModule`` +
  ``pl.Trainer`` built by ``runner.build_trainer`` (validation only after the last step,
  progress bar off, no loggers; the ``ModelCheckpoint`` Lightning adds when none is passed is
  removed, since the runner always passes its own).

Each contender runs in its own subprocess (fresh peak-memory figures; the order reverses every
round with ``--repeats``) with ``torch.set_num_threads(--threads)`` (and ``OMP_NUM_THREADS``). The
clock runs from the end of the last of the ``--warmup`` untimed steps to the end of the last step
(data loading, forward, backward, clipping, optimiser step), so set-up and first-call costs are
excluded, the same for all; wall and CPU time of the process are both reported (on a machine
shared with other jobs the CPU-time ratios are the steadier ones, and ``--threads 1`` avoids OpenMP
threads spinning while their partner is descheduled). Memory: the resident set size
sampled every 10 ms from just before training to the end of the last step (and its increase over
the size just before training), plus ``ru_maxrss`` of the whole process (loading included).

Checks: the initial weights are the same (checksum); the loss tokens over all steps are the same
for every contender; b and c take identical steps (their per-step losses must agree exactly);
TRL's batches are drawn by its own sampler, so its first-step loss is compared with the project's
on an identical batch (the project's first batch, fed through TRL's collator and ``compute_loss``
before training). Where the difference comes from is printed: padded tokens per step (TRL pads
random batches to their longest row; the project groups similar lengths) and LM-head rows per step
(the project projects only the positions that predict an answer token; TRL's log-prob head on a
device without Triton projects every position, and again in the backward pass).

Run: ``.venv/bin/python bench/sft_throughput.py [--steps 20] [--batch-size 8] [--repeats 1]``;
``--smoke`` is a seconds-long run on the tiny random llama and generated data. TRL comes with
``pip install -e ".[bench]"``; without it a_trl is skipped with a note (or refused when named in
``--contenders``).
Results go to ``bench/results/sft_throughput.json`` (``--output``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import DEFAULT_CACHE_DIR, REPO_ROOT, RESULT_MARKER, PeakRss, environment, run_contender

DEFAULT_DATA_DIR = str((REPO_ROOT / ".." / "shared" / "data" / "mkqa" / "mia2022_dev").resolve())
DATA_FILE = "mkqa-en.jsonl"
DEV_ROWS = 16  # last rows of the file: the dev split (Lightning validates on 8 of them after the last step)
CONTENDERS = ("a_trl", "b_plain", "c_lightning")
LANG = "en"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help=f"directory with {DATA_FILE} (default {DEFAULT_DATA_DIR}; "
                                                    "--smoke: generated data)")
    p.add_argument("--model", default=None, help="model config name (default smollm2_135m; --smoke: tiny_llama)")
    p.add_argument("--cache-dir", default=str(REPO_ROOT / DEFAULT_CACHE_DIR), help="converted models, tokenised data")
    p.add_argument("--steps", type=int, default=None, help="timed optimiser steps (default 20; --smoke: 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 2; --smoke: 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (--smoke: 4)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: method=sft's method.optim.lr)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (every contender)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all contenders (order reverses each round)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contenders", default=None, help="comma-separated subset of " + ",".join(CONTENDERS) +
                   " (default: all; a_trl is left out, with a note, when trl is not installed)")
    p.add_argument("--trl-optim", default="adamw_torch", help="TRL's optim (adamw_torch = the project's torch.optim.AdamW; "
                                                              "TRL's own default is adamw_torch_fused)")
    p.add_argument("--output", default=None, help="JSON result path (default bench/results/sft_throughput.json; "
                                                  "--smoke: bench/results/sft_throughput_smoke.json)")
    p.add_argument("--smoke", action="store_true", help="seconds-long check: tiny_llama, generated data, tiny sizes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {"model": ("tiny_llama" if smoke else "smollm2_135m"), "steps": 2 if smoke else 20,
                "warmup": 1 if smoke else 2, "batch_size": 4 if smoke else 8,
                "output": str(REPO_ROOT / "bench" / "results" / ("sft_throughput_smoke.json" if smoke
                                                                 else "sft_throughput.json"))}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    args.explicit_contenders = args.contenders is not None
    args.contenders = [c.strip() for c in (args.contenders or ",".join(CONTENDERS)).split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    return args


# ------------------------------------------------------------------------------ data
class JsonlQA:
    """MKQA questions of one language read straight from a MIA-2022 ``mkqa-<lang>.jsonl`` file
    (rows ``{"id", "lang", "question", "answers"}``), as a generation benchmark: ``train`` is every
    row but the last ``dev_rows``, ``dev`` (and ``test``) those. Rows without an answer are skipped."""

    name = "mkqa_en_jsonl"
    task = "generation"

    def __init__(self, path: Path, dev_rows: int) -> None:
        from xlt_runner.data import BenchmarkDataError, GenerationExample
        self.path = Path(path)
        if not self.path.is_file():
            raise SystemExit(f"error: no {self.path}; pass --data-dir with the MIA-2022 {DATA_FILE}")
        raw = self.path.read_bytes()
        self._fingerprint = hashlib.sha1(raw + f"|dev={dev_rows}".encode()).hexdigest()
        examples = []
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            answers = tuple(a for a in row.get("answers", []) if a and a.strip())
            if not row.get("question") or not answers:
                continue
            examples.append(GenerationExample(id=str(row["id"]), lang=LANG, prompt=row["question"], references=answers))
        if len(examples) <= dev_rows:
            raise BenchmarkDataError(f"{self.path}: {len(examples)} usable rows, need more than {dev_rows}")
        self.splits = {"train": examples[:-dev_rows], "dev": examples[-dev_rows:], "test": examples[-dev_rows:]}
        self.location = f"file {self.path}"

    def languages(self) -> list[str]:
        return [LANG]

    def load(self, lang: str, split: str):
        return list(self.splits[split])

    def fingerprint(self) -> str:
        return self._fingerprint


def write_smoke_data(directory: Path, rows: int = 96, seed: int = 0) -> Path:
    """A generated ``mkqa-en.jsonl``: questions of 2-5 words, answers of 1-3 words (short enough for
    tiny_llama's ``max_length`` of 64: no truncation)."""
    rng = random.Random(seed)
    words = ("the who what when where river city king film song team war year born first largest name played "
             "wrote capital country won world cup season episode actor band album book president").split()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / DATA_FILE, "w", encoding="utf-8") as handle:
        for i in range(rows):
            question = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
            handle.write(json.dumps({"id": f"{i}_en", "lang": LANG, "question": question, "answers": [answer]}) + "\n")
    return directory


# --------------------------------------------------------------------------- helpers
class StepLog:
    """Per-step records and the clock: the window runs from the end of step ``warmup - 1`` to the
    end of step ``total - 1`` (0-based), wall and CPU time."""

    def __init__(self, warmup: int, total: int, memory: PeakRss | None = None) -> None:
        self.warmup, self.total = warmup, total
        self.steps: list[dict] = []
        self.lm_head_rows = 0  # rows projected by the LM head since the last step ended
        self.start = self.end = self.cpu_start = self.cpu_end = None
        self.threads = None
        self.memory = memory
        self._last: tuple[float, float] | None = None  # (wall, CPU) clock at the end of the previous step

    def add_lm_head_rows(self, rows: int) -> None:
        self.lm_head_rows += rows

    def step_end(self, loss: float, batch_stats: dict | None) -> None:
        import torch
        step = len(self.steps)
        now, cpu = time.perf_counter(), time.process_time()
        last = self._last or (now, cpu)
        self.steps.append({"loss": loss, "lm_head_rows": self.lm_head_rows, "wall_s": now - last[0],
                           "cpu_s": cpu - last[1], **(batch_stats or {})})
        self._last = (now, cpu)
        self.lm_head_rows = 0
        if step == self.warmup - 1:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
            self.usage_start = resource.getrusage(resource.RUSAGE_SELF)
        elif step == self.total - 1:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()
            self.usage_end = resource.getrusage(resource.RUSAGE_SELF)
            self.threads = torch.get_num_threads()
            if self.memory is not None:
                self.memory.stop()

    def summary(self) -> dict:
        if len(self.steps) < self.total or self.start is None or self.end is None:
            raise RuntimeError(f"only {len(self.steps)} of {self.total} steps ran")
        window = self.steps[self.warmup:self.total]
        seconds = self.end - self.start
        sums = {key: sum(s[key] for s in window) for key in ("rows", "real_tokens", "padded_tokens", "loss_tokens",
                                                              "lm_head_rows")}
        return {"seconds": seconds, "cpu_seconds": self.cpu_end - self.cpu_start, "timed_steps": len(window),
                "seconds_per_step": seconds / len(window), "window": sums,
                "sys_cpu_seconds": self.usage_end.ru_stime - self.usage_start.ru_stime,
                "minor_page_faults": self.usage_end.ru_minflt - self.usage_start.ru_minflt,
                "median_step_s": statistics.median(s["wall_s"] for s in window),
                "median_step_cpu_s": statistics.median(s["cpu_s"] for s in window),
                "samples_per_s": sums["rows"] / seconds, "real_tokens_per_s": sums["real_tokens"] / seconds,
                "loss_tokens_per_s": sums["loss_tokens"] / seconds, "padded_tokens_per_s": sums["padded_tokens"] / seconds,
                "real_tokens_per_cpu_s": sums["real_tokens"] / (self.cpu_end - self.cpu_start),
                "all_steps": {key: sum(s[key] for s in self.steps[:self.total]) for key in sums},
                "losses": [s["loss"] for s in self.steps[:self.total]], "steps": self.steps[:self.total],
                "torch_threads": self.threads}


def batch_stats(input_ids, attention_mask, labels) -> dict:
    """Rows, padded width, real tokens (mask ones), padded tokens (ids incl. padding) and loss tokens
    (positions whose next token carries a label) of one collated batch."""
    return {"rows": int(input_ids.shape[0]), "width": int(input_ids.shape[1]),
            "real_tokens": int(attention_mask.sum()), "padded_tokens": int(input_ids.numel()),
            "loss_tokens": int((labels[:, 1:] != -100).sum())}


def weight_checksum(model) -> str:
    """A digest of every parameter's values (same initial weights on every side)."""
    import torch
    digest = hashlib.sha1()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            digest.update(name.encode())
            digest.update(f"{float(p.double().sum()):.10e}|{float(p.double().abs().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def model_shape(model) -> dict:
    """Parameter counts for the FLOP estimate: total (tied once), input embedding, LM head."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return {"params": total, "embed_params": embed.numel(), "lm_head_params": head.numel(),
            "tied": head is embed, "vocab": int(head.shape[0]), "hidden": int(head.shape[1])}


# ----------------------------------------------------------------------------- project
def run_overrides(args: argparse.Namespace, total: int, method: tuple[str, ...] = ("method=sft",)) -> list[str]:
    """The run config's overrides; ``method``: the method's (``bench/partial_layers.py`` passes its own)."""
    overrides = [f"model={args.model}", *method, "benchmark=mkqa_cbqa", "languages=qa_english", "logger=none",
                 f"benchmark.batch_size={args.batch_size}", "benchmark.max_eval_examples_per_language=8",
                 "benchmark.num_workers=0", f"trainer.max_steps={total}", f"trainer.val_check_interval={total}",
                 "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
                 "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=1", "model.device=cpu",
                 "model.dtype=float32", "method.optim.name=adamw", "method.optim.warmup_ratio=null",
                 "method.optim.warmup_steps=0", "method.optim.weight_decay=0.0", "method.optim.schedule=linear",
                 f"seed={args.seed}", f"paths.cache_dir={args.cache_dir}"]
    if args.lr is not None:
        overrides.append(f"method.optim.lr={args.lr}")
    return overrides


def project_parts(args: argparse.Namespace, total: int, method: tuple[str, ...] = ("method=sft",)):
    """(config, backbone, task kind, data module set up for fit), built as the runner builds them."""
    import pytorch_lightning as pl
    import transformers

    from xlt_runner.composition import compose
    from xlt_runner.models import load_backbone
    from xlt_runner.tasks.generation import Generation

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    cfg = compose(run_overrides(args, total, method))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    benchmark = JsonlQA(Path(args.data_dir) / DATA_FILE, DEV_ROWS)
    backbone = load_backbone(cfg.model, args.cache_dir)
    task_kind = Generation(cfg, benchmark, backbone)
    datamodule = task_kind.datamodule([LANG], [LANG], total)
    datamodule.setup("fit")  # tokenise (or read the cache) before any clock starts
    return cfg, backbone, task_kind, datamodule


def build_method(cfg, backbone, task_kind, datamodule, total: int):
    from xlt_runner.methods import method_class
    method = method_class(cfg.method.family, cfg.benchmark.task)(
        cfg.method, backbone, task_kind.method_task(datamodule, [LANG]), total_steps=total)
    return method


def count_lm_head_rows(model, log: StepLog) -> None:
    """Counts rows entering the LM head (the project calls the module on the answer positions)."""
    def hook(module, inputs):
        log.add_lm_head_rows(int(inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0]))
    model.get_output_embeddings().register_forward_pre_hook(hook)


def worker_plain(args: argparse.Namespace, total: int) -> dict:
    import torch
    cfg, backbone, task_kind, datamodule = project_parts(args, total)
    method = build_method(cfg, backbone, task_kind, datamodule, total)
    checksum = weight_checksum(method.backbone)
    loader = datamodule.train_dataloader()
    optim_cfg = method.configure_optimizers()
    optimizer, scheduler = optim_cfg["optimizer"], optim_cfg["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip = cfg.trainer.gradient_clip_val
    memory = PeakRss()
    log = StepLog(args.warmup, total, memory)
    count_lm_head_rows(method.backbone, log)
    method.train()
    for batch in loader:
        summed, count = method.answer_losses(batch)
        loss = summed.sum() / count.sum().clamp(min=1)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        log.step_end(float(loss.detach()), batch_stats(batch["input_ids"], batch["attention_mask"], batch["labels"]))
    return {**log.summary(), **memory.stop(), "initial_weights": checksum, "lr": cfg.method.optim.lr,
            "optimizer": type(optimizer).__name__, "batches": "GenerationDataModule.train_dataloader "
            "(LengthGroupedTrainSampler, TeacherForcedCollator: right padding to the batch's longest row)",
            "model_shape": model_shape(method.backbone)}


def worker_lightning(args: argparse.Namespace, total: int) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from xlt_runner.runner import build_trainer

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    import logging
    logging.getLogger("pytorch_lightning").setLevel("WARNING")
    logging.getLogger("lightning.pytorch").setLevel("WARNING")
    cfg, backbone, task_kind, datamodule = project_parts(args, total)
    method = build_method(cfg, backbone, task_kind, datamodule, total)
    checksum = weight_checksum(method.backbone)
    holder: dict = {}

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            log = holder["log"]
            if len(log.steps) < total:
                log.step_end(float(outputs["loss"].detach()),
                             batch_stats(batch["input_ids"], batch["attention_mask"], batch["labels"]))

    with tempfile.TemporaryDirectory(prefix="xlt_bench_sft_") as root:
        trainer = build_trainer(cfg, Path(root), [], [Clock()], total, cfg.trainer.val_check_interval,
                                manual_optimization=not method.automatic_optimization)
        # The runner always passes its ModelCheckpoint; called without one, Lightning adds a default
        # that would save the weights and optimiser state: no checkpointing here.
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, ModelCheckpoint)]
        memory = PeakRss()
        holder["log"] = log = StepLog(args.warmup, total, memory)
        count_lm_head_rows(method.backbone, log)
        trainer.fit(method, datamodule=datamodule)
        validated = trainer.callback_metrics.get("val/loss")
    return {**log.summary(), **memory.stop(), "initial_weights": checksum, "lr": cfg.method.optim.lr,
            "optimizer": type(trainer.optimizers[0]).__name__, "val_loss_after_last_step":
            None if validated is None else float(validated), "model_shape": model_shape(method.backbone),
            "batches": "GenerationDataModule (as b_plain), pl.Trainer from runner.build_trainer"}


# --------------------------------------------------------------------------------- TRL
def strip_gguf_marker(model) -> bool:
    """The packaged GGUF models are converted to plain float weights, but their saved config keeps
    ``quantization_config`` (gguf), so ``from_pretrained`` marks the model quantized and
    ``transformers.Trainer`` refuses to train it. Drop the marker (transformers' own
    ``remove_quantization_config``) when every parameter is a float tensor of a plain module.
    Returns whether it was there."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return False
    if str(getattr(quantizer.quantization_config, "quant_method", "")).lower().split(".")[-1] != "gguf" or any(
            not p.dtype.is_floating_point for p in model.parameters()):
        raise SystemExit(f"the model is really quantized ({quantizer.quantization_config}); TRL cannot fine-tune it")
    quantizer.remove_quantization_config(model)
    return True


def worker_trl(args: argparse.Namespace, total: int) -> dict:
    import datasets
    import torch
    import transformers
    import trl
    import trl.trainer.utils as trl_utils
    from trl import SFTConfig, SFTTrainer

    cfg, backbone, _, datamodule = project_parts(args, total)
    if cfg.method.optim.schedule not in ("linear", "constant"):
        raise SystemExit(f"method.optim.schedule={cfg.method.optim.schedule} has no TRL twin here")
    datasets.disable_progress_bars()
    # Exactly the examples the project trains on in `total` steps, with its token ids
    loader = datamodule.train_dataloader()
    project_batches = [list(b) for b in loader.batch_sampler]
    used = [i for b in project_batches for i in b]
    if len(set(used)) != len(used):
        raise RuntimeError("the project's sampler repeats examples within the run: fewer steps, or more data")
    items = [loader.dataset[i] for i in used]
    ids = [seq.astype("int64").tolist() for seq, *_ in items]
    completion_mask = [[0] * prompt + [1] * (len(seq) - prompt) for seq, prompt, *_ in items]
    train = datasets.Dataset.from_dict({"input_ids": ids, "completion_mask": completion_mask})

    model = backbone.model
    checksum = weight_checksum(model)
    stripped_marker = strip_gguf_marker(model)
    holder: dict = {}

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            log = holder["log"]
            step = state.global_step - 1
            stats = holder["collated"][step] if step < len(holder["collated"]) else None
            log.step_end(float(holder["losses"][step]), stats)

    with tempfile.TemporaryDirectory(prefix="xlt_bench_trl_") as out:
        sft_args = SFTConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=total,
            learning_rate=cfg.method.optim.lr, lr_scheduler_type=cfg.method.optim.schedule, warmup_steps=0,
            weight_decay=0.0, max_grad_norm=cfg.trainer.gradient_clip_val, optim=args.trl_optim,
            adam_beta1=cfg.method.optim.betas[0], adam_beta2=cfg.method.optim.betas[1],
            bf16=False, fp16=False, gradient_checkpointing=False, completion_only_loss=True,
            max_length=cfg.model.max_length, logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=args.seed,
            data_seed=args.seed)
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train, processing_class=backbone.tokenizer,
                             callbacks=[Clock()])
        collator = trainer.data_collator
        prepared = trainer.train_dataset
        # TRL's labels must be the project's: prompt masked, completion kept, nothing truncated
        if len(prepared) != len(items):
            raise RuntimeError(f"TRL kept {len(prepared)} of {len(items)} examples")
        for row, (seq, prompt, *_) in zip(prepared, items):
            want = [-100] * prompt + seq[prompt:].astype("int64").tolist()
            if row["input_ids"] != seq.astype("int64").tolist() or row["labels"] != want:
                raise RuntimeError("TRL's tokens or loss mask differ from the project's")
        # First-step loss on an identical batch: the project's batch 0 through TRL's collator and loss
        first = collator([prepared[j] for j in range(len(project_batches[0]))])
        first_stats = batch_stats(first["input_ids"], first["attention_mask"], first["labels"])
        model.eval()
        with torch.no_grad():
            loss_on_project_batch0 = float(trainer.compute_loss(model, dict(first)))
        trainer._metrics["eval"].clear()

        collated: list[dict] = []

        def recording_collator(features):
            batch = collator(features)
            collated.append(batch_stats(batch["input_ids"], batch["attention_mask"], batch["labels"]))
            return batch

        trainer.data_collator = recording_collator
        losses: list = []
        original_compute_loss = trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = original_compute_loss(model, inputs, return_outputs=return_outputs,
                                         num_items_in_batch=num_items_in_batch)
            losses.append((loss[0] if return_outputs else loss).detach())
            return loss

        trainer.compute_loss = compute_loss
        chunked = trl_utils._ChunkedLogProbFunction

        class CountingLogProb:
            """TRL's chunked log-prob LM head, counting the rows it projects (forward)."""

            @staticmethod
            def apply(hidden, *rest):
                holder["log"].add_lm_head_rows(int(hidden.shape[0]))
                return chunked.apply(hidden, *rest)

        trl_utils._ChunkedLogProbFunction = CountingLogProb
        memory = PeakRss()
        holder.update(log=StepLog(args.warmup, total, memory), collated=collated, losses=losses)
        trainer.train()
        log = holder["log"]
        optimizer = trainer.optimizer
        collator_info = {"class": type(collator).__name__, "pad_to_multiple_of": collator.pad_to_multiple_of,
                         "padding_free": collator.padding_free,
                         "sampler": getattr(sft_args, "train_sampling_strategy", "random"),
                         "group_by_length": getattr(sft_args, "group_by_length", False)}
        fused = bool(optimizer.param_groups[0].get("fused"))
    return {**log.summary(), **memory.stop(), "initial_weights": checksum, "lr": sft_args.learning_rate,
            "optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__ + (" (fused)" if fused else ""),
            "trl_version": trl.__version__, "trl_optim": args.trl_optim, "collator": collator_info,
            "stripped_gguf_quantization_marker": stripped_marker,
            "loss_on_project_batch0": loss_on_project_batch0, "project_batch0_stats": first_stats,
            "lm_head": ("TRL chunked log-prob head, every position (no Triton on this device); "
                        "the backward pass recomputes each projection tile"),
            "model_shape": model_shape(model)}


WORKERS = {"a_trl": worker_trl, "b_plain": worker_plain, "c_lightning": worker_lightning}


def worker(name: str, args: argparse.Namespace) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    result = WORKERS[name](args, total)
    if result["torch_threads"] != args.threads:
        raise RuntimeError(f"{name} ran with {result['torch_threads']} torch threads, not {args.threads}")
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ------------------------------------------------------------------------------ parent
def run_worker(name: str, args: argparse.Namespace) -> dict:
    return run_contender(__file__, name, args, ("data_dir", "model", "cache_dir", "steps", "warmup", "batch_size",
                                               "threads", "seed", "trl_optim", "output"),
                         ("--lr", repr(args.lr)) if args.lr is not None else ())


def estimated_gflop_per_step(name: str, run: dict) -> dict:
    """Matmul GFLOP per timed step: body = 6 x (params outside the embedding and LM head) x padded
    tokens; LM head = 2 x vocab x hidden x rows x (3: forward + two backward GEMMs; TRL on CPU 4:
    it recomputes the forward tile in the backward pass). Attention scores are left out (short rows)."""
    shape, window, steps = run["model_shape"], run["window"], run["timed_steps"]
    body_params = shape["params"] - shape["embed_params"] - (0 if shape["tied"] else shape["lm_head_params"])
    body = 6 * body_params * window["padded_tokens"] / steps / 1e9
    passes = 4 if name == "a_trl" else 3
    head = 2 * shape["vocab"] * shape["hidden"] * passes * window["lm_head_rows"] / steps / 1e9
    return {"body": body, "lm_head": head, "total": body + head}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_MARKER + json.dumps(worker(args.worker, args)), flush=True)
        return 0

    import importlib.metadata as md
    versions = {}
    for package in ("torch", "transformers", "pytorch-lightning", "trl", "accelerate", "datasets"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    if "a_trl" in args.contenders and versions["trl"] is None:
        if args.explicit_contenders:
            print('error: trl is not installed: pip install -e ".[bench]", or pass --contenders b_plain,c_lightning',
                  file=sys.stderr)
            return 2
        args.contenders = [c for c in args.contenders if c != "a_trl"]
        print('NOTE: trl is not installed (pip install -e ".[bench]"): a_trl is skipped, so there is no TRL '
              'comparison in this run, only the Lightning overhead', file=sys.stderr)
    tmp = None
    if args.data_dir is None:
        if args.smoke:
            tmp = tempfile.TemporaryDirectory(prefix="xlt_bench_sft_data_")
            args.data_dir = str(write_smoke_data(Path(tmp.name)))
        else:
            args.data_dir = DEFAULT_DATA_DIR
    args.data_dir = str(Path(args.data_dir).resolve())
    args.cache_dir = str(Path(args.cache_dir).resolve())
    if not (Path(args.data_dir) / DATA_FILE).is_file():
        print(f"error: no {Path(args.data_dir) / DATA_FILE}; pass --data-dir", file=sys.stderr)
        return 2

    from xlt_runner.composition import compose
    cfg = compose(run_overrides(args, args.warmup + args.steps))
    if cfg.model.packaged:
        from xlt_runner.models import ensure_packaged_model
        ensure_packaged_model(cfg.model.packaged, args.cache_dir)  # convert once, outside every timed process

    import torch
    torch.set_num_threads(args.threads)
    env = {**environment(), "torch_threads_every_contender": args.threads, "versions": versions,
           "load_average": os.getloadavg()}
    total = args.warmup + args.steps
    print(f"sft_throughput: model {args.model} ({cfg.model.format} format, fp32), {DATA_FILE} from {args.data_dir}, "
          f"batch {args.batch_size}, {args.warmup} untimed + {args.steps} timed optimiser steps, AdamW lr "
          f"{cfg.method.optim.lr} linear decay, no warmup, clip 1.0, {args.repeats} round(s)")
    print(f"environment: torch threads {args.threads} for every contender (torch.set_num_threads, OMP_NUM_THREADS), "
          f"{env['cpu_count']} CPUs, load average {tuple(round(x, 2) for x in env['load_average'])}, python "
          f"{env['python']}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in args.contenders}
    for r in range(args.repeats):
        order = args.contenders if r % 2 == 0 else args.contenders[::-1]
        for name in order:
            res = run_worker(name, args)
            runs[name].append(res)
            w = res["window"]
            print(f"  [{r + 1}/{args.repeats}] {name:12s} {res['seconds']:7.2f} s for {res['timed_steps']} steps "
                  f"({res['seconds_per_step']:.2f} s/step)  real {res['real_tokens_per_s']:6.0f} tok/s  "
                  f"loss {res['loss_tokens_per_s']:5.1f} tok/s  padded {res['padded_tokens_per_s']:6.0f} tok/s  "
                  f"peak RSS {res['peak_rss_train_mb']:.0f} MB (+{res['peak_rss_train_delta_mb']:.0f})  "
                  f"padded/real {w['padded_tokens'] / w['real_tokens']:.3f}  LM-head rows/step "
                  f"{w['lm_head_rows'] / res['timed_steps']:.0f}", flush=True)

    keys = ("seconds", "cpu_seconds", "seconds_per_step", "samples_per_s", "real_tokens_per_s", "loss_tokens_per_s",
            "padded_tokens_per_s", "real_tokens_per_cpu_s", "peak_rss_train_mb", "peak_rss_train_delta_mb",
            "rss_before_train_mb", "ru_maxrss_mb", "median_step_s", "median_step_cpu_s", "sys_cpu_seconds")
    median = {name: {k: statistics.median(run[k] for run in rs) for k in keys} for name, rs in runs.items()}
    first = {name: rs[0] for name, rs in runs.items()}
    report: dict = {
        "what": "SFT (loss on answer tokens) training throughput: TRL SFTTrainer vs a plain loop vs xlt_runner "
                "(Lightning), same model/examples/batch size/steps/optimiser",
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "explicit_contenders")},
        "model": args.model, "format": cfg.model.format, "data": str(Path(args.data_dir) / DATA_FILE),
        "environment": env, "runs": runs, "median": median}

    print("\nper contender (median over rounds; window = the timed steps)")
    print(f"  {'contender':12s} {'s/step':>7s} {'CPU s/step':>10s} {'real tok/s':>10s} {'loss tok/s':>10s} {'padded tok/s':>12s} "
          f"{'padded/step':>11s} {'real/step':>9s} {'loss/step':>9s} {'LM-head rows/step':>17s} {'est. GFLOP/step':>16s} "
          f"{'peak RSS MB':>11s} {'+train MB':>9s} {'maxrss MB':>9s}")
    where: dict = {}
    for name in runs:
        res, m = first[name], median[name]
        steps = res["timed_steps"]
        w = res["window"]
        flops = estimated_gflop_per_step(name, res)
        where[name] = {"padded_tokens_per_step": w["padded_tokens"] / steps, "real_tokens_per_step": w["real_tokens"] / steps,
                       "loss_tokens_per_step": w["loss_tokens"] / steps, "lm_head_rows_per_step": w["lm_head_rows"] / steps,
                       "mean_width": statistics.mean(s["width"] for s in res["steps"][args.warmup:]),
                       "estimated_gflop_per_step": flops}
        print(f"  {name:12s} {m['seconds_per_step']:7.2f} {m['cpu_seconds'] / steps:10.2f} {m['real_tokens_per_s']:10.0f} {m['loss_tokens_per_s']:10.1f} "
              f"{m['padded_tokens_per_s']:12.0f} {where[name]['padded_tokens_per_step']:11.1f} "
              f"{where[name]['real_tokens_per_step']:9.1f} {where[name]['loss_tokens_per_step']:9.1f} "
              f"{where[name]['lm_head_rows_per_step']:17.1f} {flops['total']:7.1f} ({flops['lm_head']:4.1f} head) "
              f"{m['peak_rss_train_mb']:11.0f} {m['peak_rss_train_delta_mb']:9.0f} {m['ru_maxrss_mb']:9.0f}")
    report["where"] = where

    checks: dict = {}
    weights = {name: res["initial_weights"] for name, res in first.items()}
    checks["same_initial_weights"] = len(set(weights.values())) == 1
    loss_tokens = {name: res["all_steps"]["loss_tokens"] for name, res in first.items()}
    real_tokens = {name: res["all_steps"]["real_tokens"] for name, res in first.items()}
    checks["loss_tokens_all_steps"] = loss_tokens
    checks["same_loss_tokens"] = len(set(loss_tokens.values())) == 1
    checks["same_real_tokens"] = len(set(real_tokens.values())) == 1
    print(f"\nchecks: initial weights {weights} -> {'same' if checks['same_initial_weights'] else 'DIFFERENT'}")
    print(f"  loss tokens over all {total} steps: {loss_tokens} -> {'equal' if checks['same_loss_tokens'] else 'NOT EQUAL'}; "
          f"real tokens {real_tokens} -> {'equal' if checks['same_real_tokens'] else 'NOT EQUAL'}")
    if "b_plain" in runs and "c_lightning" in runs:
        b, c = first["b_plain"]["losses"], first["c_lightning"]["losses"]
        diff = max(abs(x - y) for name in ("b_plain", "c_lightning") for run in runs[name]
                   for x, y in zip(run["losses"], b))
        checks["b_c_step1_loss"] = [b[0], c[0]]
        checks["b_c_max_abs_loss_diff_all_steps"] = diff
        print(f"  step-1 loss b_plain {b[0]:.6f} vs c_lightning {c[0]:.6f} (equal: {b[0] == c[0]}); "
              f"max |loss - b_plain's loss| over all {total} steps and rounds {diff:.2e} (identical batches: should be 0)")
    if "a_trl" in runs:
        a = first["a_trl"]
        project = first.get("b_plain") or first.get("c_lightning")
        checks["a_step1_loss_own_batch"] = a["losses"][0]
        checks["a_loss_on_project_batch0"] = a["loss_on_project_batch0"]
        line = (f"  a_trl: step-1 loss {a['losses'][0]:.6f} on its own first batch (its sampler draws other batches: "
                f"{a['steps'][0]['rows']} rows, width {a['steps'][0]['width']}); on the project's first batch "
                f"(width {a['project_batch0_stats']['width']}, {a['project_batch0_stats']['loss_tokens']} loss tokens) "
                f"through TRL's collator and loss {a['loss_on_project_batch0']:.6f}")
        if project is not None:
            d = abs(a["loss_on_project_batch0"] - project["losses"][0])
            checks["a_vs_project_batch0_abs_diff"] = d
            checks["a_vs_project_batch0_ok"] = d <= 1e-4 * max(1.0, abs(project["losses"][0]))
            line += f" vs project {project['losses'][0]:.6f}: |diff| {d:.2e}"
        print(line)
        print(f"  a_trl collation: {a['collator']['class']} (pads right to the longest row of each batch; "
              f"pad_to_multiple_of={a['collator']['pad_to_multiple_of']}, padding_free={a['collator']['padding_free']}), "
              f"sampler {a['collator']['sampler']} (no length grouping); optimiser {a['optimizer']}; LM head: {a['lm_head']}")
    report["checks"] = checks

    ratios: dict = {}
    verdict = []
    if "a_trl" in median and "c_lightning" in median:
        a, c = median["a_trl"], median["c_lightning"]
        ratios["c_over_a"] = {
            "real_tokens_per_s": c["real_tokens_per_s"] / a["real_tokens_per_s"],
            "loss_tokens_per_s": c["loss_tokens_per_s"] / a["loss_tokens_per_s"],
            "samples_per_s": c["samples_per_s"] / a["samples_per_s"],
            "real_tokens_per_cpu_s": c["real_tokens_per_cpu_s"] / a["real_tokens_per_cpu_s"],
            "peak_rss_train": c["peak_rss_train_mb"] / a["peak_rss_train_mb"],
            "peak_rss_train_delta": c["peak_rss_train_delta_mb"] / a["peak_rss_train_delta_mb"],
            "ru_maxrss": c["ru_maxrss_mb"] / a["ru_maxrss_mb"]}
        q = ratios["c_over_a"]
        wa, wc = where["a_trl"], where["c_lightning"]
        verdict.append(f"c/a throughput: {q['real_tokens_per_s']:.2f}x real tokens/s, {q['loss_tokens_per_s']:.2f}x loss "
                       f"tokens/s, {q['samples_per_s']:.2f}x samples/s ({q['real_tokens_per_cpu_s']:.2f}x per CPU second) "
                       f"(goal >= 1.2x: {'met' if q['real_tokens_per_s'] >= 1.2 else 'NOT met'})")
        verdict.append(f"peak RSS in training c/a: {q['peak_rss_train']:.3f}x ({c['peak_rss_train_mb']:.0f} vs "
                       f"{a['peak_rss_train_mb']:.0f} MB; increase in training {c['peak_rss_train_delta_mb']:.0f} vs "
                       f"{a['peak_rss_train_delta_mb']:.0f} MB; whole-process maxrss {c['ru_maxrss_mb']:.0f} vs "
                       f"{a['ru_maxrss_mb']:.0f} MB) (goal <= 1: {'met' if q['peak_rss_train'] <= 1.0 else 'NOT met'})")
        if "b_plain" in median:
            b = median["b_plain"]
            ratios["b_over_a_peak_rss_train"] = b["peak_rss_train_mb"] / a["peak_rss_train_mb"]
            verdict.append(f"  (the project's loss in the plain loop, b/a: {ratios['b_over_a_peak_rss_train']:.3f}x, "
                           f"{b['peak_rss_train_mb']:.0f} MB; every side frees its gradients right after the optimiser "
                           f"step: c in MethodBase.optimizer_step)")
        verdict.append(f"where from: padded tokens/step {wc['padded_tokens_per_step']:.0f} vs {wa['padded_tokens_per_step']:.0f} "
                       f"(mean width {wc['mean_width']:.1f} vs {wa['mean_width']:.1f}: length-grouped vs random batches, "
                       f"{wa['padded_tokens_per_step'] / wc['padded_tokens_per_step']:.2f}x the positions for TRL); "
                       f"LM-head rows/step {wc['lm_head_rows_per_step']:.0f} vs {wa['lm_head_rows_per_step']:.0f} "
                       f"(project: answer positions only; TRL: every position, recomputed in backward); estimated "
                       f"matmul GFLOP/step {wc['estimated_gflop_per_step']['total']:.0f} vs "
                       f"{wa['estimated_gflop_per_step']['total']:.0f} (LM head {wc['estimated_gflop_per_step']['lm_head']:.1f} "
                       f"vs {wa['estimated_gflop_per_step']['lm_head']:.1f}, body "
                       f"{wc['estimated_gflop_per_step']['body']:.0f} vs {wa['estimated_gflop_per_step']['body']:.0f})")
    if "b_plain" in median and "c_lightning" in median:
        total_s = {n: sum(run["seconds"] for run in runs[n]) for n in ("b_plain", "c_lightning")}
        total_cpu = {n: sum(run["cpu_seconds"] for run in runs[n]) for n in ("b_plain", "c_lightning")}
        overhead = (total_s["c_lightning"] - total_s["b_plain"]) / total_s["b_plain"]
        overhead_cpu = (total_cpu["c_lightning"] - total_cpu["b_plain"]) / total_cpu["b_plain"]
        mb, mc = median["b_plain"]["median_step_s"], median["c_lightning"]["median_step_s"]
        per_round = [(rc["seconds"] - rb["seconds"]) / rb["seconds"] for rb, rc in zip(runs["b_plain"], runs["c_lightning"])]
        ratios.update(lightning_overhead_vs_plain=overhead, lightning_overhead_per_round=per_round,
                      lightning_overhead_cpu=overhead_cpu, lightning_overhead_median_step=(mc - mb) / mb)
        verdict.append(f"Lightning (c) vs plain loop (b) on identical batches: {100 * overhead:+.2f}% wall time "
                       f"({total_s['c_lightning']:.2f} vs {total_s['b_plain']:.2f} s summed over rounds; per round "
                       f"{', '.join(f'{100 * x:+.1f}%' for x in per_round)}; median step {100 * (mc - mb) / mb:+.2f}%); "
                       f"CPU time {100 * overhead_cpu:+.2f}% (goal <= 5%: wall {'met' if overhead <= 0.05 else 'NOT met'}, "
                       f"CPU {'met' if overhead_cpu <= 0.05 else 'NOT met'})")
    report["ratios"] = ratios
    report["verdict"] = verdict
    report["total_wall_s"] = time.perf_counter() - t0
    print()
    for line in verdict:
        print(line)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"\ntotal wall time {report['total_wall_s']:.0f} s; wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
