"""Soft-prompt benchmark: xlt_runner's SPT/XPE against PEFT on transformers.Trainer, and XPE/DUAL's prompt cache.

Part (a), training throughput. Four contenders train the same frozen backbone (the packaged
multilingual-e5-small, ``xlt_runner.models.ensure_packaged_model("me5_small", cache_dir)``) on the same
data (SIB-200 train split of eng_Latn + arb_Arab + zho_Hans, ``"query: "`` prefix, at most 128 tokens),
with the same batch size, prompt length and number of steps:

* ``xlt_spt`` / ``xlt_xpe``: ``method=spt`` / ``method=xpe`` driven as the runner drives them
  (``ClassificationDataModule`` + the method + ``pl.Trainer.fit``), with no checkpointing, logging
  or validation.
* ``peft_prompt_tuning`` / ``peft_p_tuning``: ``peft.get_peft_model`` with ``PromptTuningConfig`` /
  ``PromptEncoderConfig(encoder_reparameterization_type="MLP", encoder_hidden_size=256)`` on
  ``AutoModelForSequenceClassification`` of the same folder (its head starts random), trained by
  ``transformers.Trainer`` with ``train_sampling_strategy="group_by_length"`` (transformers 5's name for
  ``group_by_length=True``) and ``DataCollatorWithPadding``.

Both sides use Adafactor at a fixed learning rate, gradient clipping at 1.0 and 32-bit floats. Each
contender runs in its own subprocess (so each has its own peak memory); with ``--repeats`` the order
reverses every round and medians are reported. Timing covers optimiser steps ``warmup`` to
``warmup + steps - 1``: wall clock from the start of the first to the end of the last (data loading,
forward, backward, optimiser step), and the process's CPU time over the same window (less sensitive
to other load on the machine). Reported: samples/s, real (non-padding) tokens/s and per CPU second,
the mean padded width, and memory: the peak resident set size sampled every 10 ms during training,
and its increase over the resident size just before training started.

Part (b), evaluation: the XPE and DUAL (xpe_ratio 0.7) prompt caches. One subprocess builds each
method, then alternates passes over the same evaluation data (source dev splits, eval batch 64,
length-sorted, ``torch.inference_mode``) with the cached prompt (the method's own path) and with the
prompt recomputed by the encoder for every batch (the uncached path), and reports seconds per pass,
the ratio, the cost of one prompt computation, and the largest logit difference between the paths.

Numbers go to stdout and to ``bench/results/soft_prompt_throughput.json``. Run from the repository
root: ``.venv/bin/python bench/soft_prompt_throughput.py``. On 2 CPU cores shared with other jobs (load
average 7-12) it took 28 minutes; an idle machine should need well under 10.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PeakRss

REPO = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO / "bench" / "results" / "soft_prompt_throughput.json"
LANGUAGES = ["eng_Latn", "arb_Arab", "zho_Hans"]
TEXT_PREFIX = "query: "
MAX_LENGTH = 128
LR = 5e-5
PEFT_ENCODER_HIDDEN = 256  # = XPE's encoder_hidden_size
CONTENDERS = ("xlt_spt", "xlt_xpe", "peft_prompt_tuning", "peft_p_tuning")
BASELINE_OF = {"xlt_spt": "peft_prompt_tuning", "xlt_xpe": "peft_p_tuning"}
RESULT_MARKER = "BENCH_RESULT "


# ---------------------------------------------------------------------------- helpers
class RecordingCollator:
    """Wraps a collator; remembers each batch's real tokens and padded width, in call order."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.real_tokens: list[int] = []
        self.widths: list[int] = []
        self.sizes: list[int] = []

    def __call__(self, items):
        batch = self.collate(items)
        mask = batch["attention_mask"]
        self.real_tokens.append(int(mask.sum()))
        self.widths.append(int(mask.shape[1]))
        self.sizes.append(int(mask.shape[0]))
        return batch


class StepClock:
    """Wall clock from the start of step ``first`` to the end of step ``last`` (0-based)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.start = self.end = None
        self.cpu_start = self.cpu_end = None

    def begin(self, step: int) -> None:
        if step == self.first:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def finish(self, step: int) -> None:
        if step == self.last:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()


def window_stats(clock: StepClock, collator: RecordingCollator, first: int, steps: int, prompt_length: int) -> dict:
    if clock.start is None or clock.end is None:
        raise RuntimeError("the timed window did not run: fewer optimiser steps than warmup + steps")
    seconds = clock.end - clock.start
    window = slice(first, first + steps)
    samples = sum(collator.sizes[window])
    real = sum(collator.real_tokens[window])
    padded = sum(n * (w + prompt_length) for n, w in zip(collator.sizes[window], collator.widths[window]))
    return {"seconds": seconds, "cpu_seconds": clock.cpu_end - clock.cpu_start, "steps": steps, "samples": samples, "real_tokens": real,
            "processed_positions": padded, "samples_per_s": samples / seconds, "real_tokens_per_s": real / seconds,
            "mean_width": statistics.mean(collator.widths[window]), "seconds_per_step": seconds / steps,
            "real_tokens_per_cpu_s": real / (clock.cpu_end - clock.cpu_start)}


def compose_run_config(method: str, args: argparse.Namespace):
    from xlt_runner.cli import compose
    overrides = [f"method={method}", "model=me5_small", "benchmark=sib200", "languages=enarzho",
                 f"benchmark.data_dir={args.data_dir}", f"benchmark.batch_size={args.batch_size}",
                 f"benchmark.eval_batch_size={args.eval_batch_size}", f"paths.cache_dir={args.cache_dir}",
                 f"method.prompt_length={args.prompt_length}", f"model.max_length={MAX_LENGTH}",
                 f"trainer.max_steps={args.warmup + args.steps}",
                 f"seed={args.seed}"]
    if method == "dual":
        overrides.append("method.xpe_ratio=0.7")
    cfg = compose(overrides)
    if cfg.model.text_prefix != TEXT_PREFIX:
        raise RuntimeError(f"xlt_runner/conf/model/me5_small.yaml has text_prefix {cfg.model.text_prefix!r}, the bench uses {TEXT_PREFIX!r}")
    return cfg


def build_xlt(method: str, args: argparse.Namespace, num_training_batches: int):
    """(method module, data module) built the way ``xlt_runner.runner`` builds them."""
    import pytorch_lightning as pl

    from xlt_runner.data import build_benchmark
    from xlt_runner.data.classification import ClassificationDataModule
    from xlt_runner.methods import ClassificationTask, method_class
    from xlt_runner.models import load_backbone

    cfg = compose_run_config(method, args)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    benchmark = build_benchmark(cfg.benchmark, cfg.paths.cache_dir)
    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
    datamodule = ClassificationDataModule(
        benchmark, backbone.tokenizer, source_languages=LANGUAGES, target_languages=LANGUAGES,
        max_length=cfg.model.max_length, text_prefix=cfg.model.text_prefix, batch_size=cfg.benchmark.batch_size,
        eval_batch_size=cfg.benchmark.eval_batch_size, num_training_batches=num_training_batches, seed=cfg.seed,
        cache_dir=cfg.paths.cache_dir)
    task = ClassificationTask(labels=list(benchmark.labels), eval_languages=datamodule.eval_languages,
                              source_languages=LANGUAGES)
    module = method_class(method, "classification")(cfg.method, backbone, task, total_steps=cfg.trainer.max_steps)
    return cfg, module, datamodule


# ---------------------------------------------------------------------------- workers
def train_xlt(method: str, args: argparse.Namespace) -> dict:
    import pytorch_lightning as pl
    import torch

    total = args.warmup + args.steps
    cfg, module, datamodule = build_xlt(method, args, total)
    datamodule.setup("fit")
    collator = RecordingCollator(datamodule.train_collator)
    datamodule.train_collator = collator
    clock = StepClock(args.warmup, total - 1)

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.finish(batch_idx)

    trainer = pl.Trainer(
        max_steps=total, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val, precision=cfg.trainer.precision, accelerator="cpu",
        devices=1, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
    memory = PeakRss()
    trainer.fit(module, datamodule=datamodule)
    result = window_stats(clock, collator, args.warmup, args.steps, args.prompt_length)
    result.update(memory.stop())
    result.update(trainable_params=module.parameter_counts()["trainable"], torch_threads=torch.get_num_threads(),
                  optimizer=cfg.method.optim.name)
    return result


def train_peft(kind: str, args: argparse.Namespace) -> dict:
    import datasets
    import torch
    import transformers
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, PromptTuningConfig, TaskType, get_peft_model

    from xlt_runner.config import BenchmarkConfig
    from xlt_runner.data import build_benchmark
    from xlt_runner.models import ensure_packaged_model

    transformers.set_seed(args.seed)
    transformers.logging.set_verbosity_error()
    directory = ensure_packaged_model("me5_small", args.cache_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    benchmark = build_benchmark(BenchmarkConfig(name="sib200", task="classification", data_dir=args.data_dir),
                                args.cache_dir)
    examples = [ex for lang in LANGUAGES for ex in benchmark.load(lang, "train")]
    encoded = tokenizer([TEXT_PREFIX + ex.text for ex in examples], truncation=True, max_length=MAX_LENGTH)
    train = datasets.Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                                        "labels": [ex.label for ex in examples]})
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        directory, num_labels=len(benchmark.labels), dtype=torch.float32)
    if kind == "peft_prompt_tuning":
        peft_cfg = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.prompt_length)
    else:
        peft_cfg = PromptEncoderConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.prompt_length,
                                       encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
                                       encoder_hidden_size=PEFT_ENCODER_HIDDEN)
    model = get_peft_model(model, peft_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    total = args.warmup + args.steps
    collator = RecordingCollator(transformers.DataCollatorWithPadding(tokenizer))
    clock = StepClock(args.warmup, total - 1)

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            clock.begin(state.global_step)  # steps completed so far = index of this step

        def on_step_end(self, targs, state, control, **kwargs):
            clock.finish(state.global_step - 1)

    with tempfile.TemporaryDirectory() as out:
        targs = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=total, learning_rate=LR,
            optim="adafactor", lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
            train_sampling_strategy="group_by_length", logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
            remove_unused_columns=False, seed=args.seed)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=train, data_collator=collator,
                                       processing_class=tokenizer, callbacks=[Clock()])
        memory = PeakRss()
        trainer.train()
    result = window_stats(clock, collator, args.warmup, args.steps, args.prompt_length)
    result.update(memory.stop())
    result.update(trainable_params=trainable, torch_threads=torch.get_num_threads(), optimizer="adafactor")
    return result


def eval_cache(args: argparse.Namespace) -> dict:
    """Seconds per evaluation pass, cached prompt vs recomputed per batch, for XPE and DUAL-70."""
    from unittest import mock

    import torch

    out = {}
    for method in ("xpe", "dual"):
        _, module, datamodule = build_xlt(method, args, 1)
        datamodule.setup("fit")
        batches = list(datamodule.val_dataloader())
        module.eval()
        prompt = module.prompt

        def one_pass(cached: bool) -> tuple[float, list]:
            module.eval()  # drops the cache, as every evaluation does: the cached pass computes it once
            with torch.inference_mode(), mock.patch.object(prompt, "forward", prompt.forward if cached else prompt.compute):
                start = time.perf_counter()
                logits = [module(b) for b in batches]
                return time.perf_counter() - start, logits

        one_pass(True)  # warm-up
        times = {"cached": [], "uncached": []}
        logits = {}
        for _ in range(args.eval_passes):
            for mode in ("uncached", "cached"):
                seconds, logits[mode] = one_pass(mode == "cached")
                times[mode].append(seconds)
        max_diff = max(float((a - b).abs().max()) for a, b in zip(logits["cached"], logits["uncached"]))
        with torch.inference_mode():
            reps = 200
            start = time.perf_counter()
            for _ in range(reps):
                prompt.compute()
            compute_ms = (time.perf_counter() - start) / reps * 1000
        cached_s, uncached_s = statistics.median(times["cached"]), statistics.median(times["uncached"])
        out[method] = {"examples": sum(len(b["labels"]) for b in batches), "batches": len(batches),
                       "cached_s_per_pass": cached_s, "uncached_s_per_pass": uncached_s,
                       "speedup_uncached_over_cached": uncached_s / cached_s, "all_cached_s": times["cached"],
                       "all_uncached_s": times["uncached"], "prompt_compute_ms": compute_ms,
                       "max_abs_logit_diff": max_diff, "prompt_tokens_from_encoder": prompt.pseudo.shape[0]}
    return out


def worker(name: str, args: argparse.Namespace) -> dict:
    if name == "eval_cache":
        return eval_cache(args)
    if name.startswith("xlt_"):
        return train_xlt(name.removeprefix("xlt_"), args)
    return train_peft(name, args)


# ----------------------------------------------------------------------------- parent
def run_worker(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data-dir", args.data_dir, "--cache-dir", args.cache_dir,
           "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--prompt-length", str(args.prompt_length),
           "--eval-passes", str(args.eval_passes), "--seed", str(args.seed)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise RuntimeError(f"worker {name} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(RESULT_MARKER):])
    result["process_wall_s"] = time.perf_counter() - start
    return result


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str((REPO / ".." / "shared" / "data" / "sib200" / "annotated").resolve()),
                        help="SIB-200 in the upstream layout <dir>/<lang>/train.tsv")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "xlt_runner"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimiser steps before them")
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="runs of every contender (order reverses each round)")
    parser.add_argument("--eval-passes", type=int, default=3, help="timed passes per path in part (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["train", "eval"], help="run one part only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data_dir = str(Path(args.data_dir).resolve())
    args.cache_dir = str(Path(args.cache_dir).resolve())
    if args.worker:
        print(RESULT_MARKER + json.dumps(worker(args.worker, args)), flush=True)
        return 0

    if not Path(args.data_dir, LANGUAGES[0], "train.tsv").is_file():
        print(f"no SIB-200 data under {args.data_dir} (expected <dir>/{LANGUAGES[0]}/train.tsv); pass --data-dir",
              file=sys.stderr)
        return 2
    from xlt_runner.models import ensure_packaged_model
    ensure_packaged_model("me5_small", args.cache_dir)  # convert once, outside every timed process

    t0 = time.perf_counter()
    report: dict = {"settings": {k: v for k, v in vars(args).items() if k != "worker"},
                    "backbone": "packaged me5_small (multilingual-e5-small, BertModel)", "languages": LANGUAGES,
                    "cpu_count": os.cpu_count()}
    print(f"soft-prompt benchmark: batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"prompt length {args.prompt_length}, {args.repeats} repeat(s), {os.cpu_count()} CPUs")
    if args.only != "eval":
        runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
        for r in range(args.repeats):
            order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]  # A B C D, D C B A, ...
            for name in order:
                res = run_worker(name, args)
                runs[name].append(res)
                print(f"  [{r + 1}/{args.repeats}] {name:20s} {res['samples_per_s']:6.2f} samples/s "
                      f"{res['real_tokens_per_s']:7.0f} tok/s ({res['real_tokens_per_cpu_s']:.0f} per CPU s)  "
                      f"{res['seconds_per_step']:.2f} s/step  "
                      f"mean width {res['mean_width']:.1f}  peak RSS {res['peak_rss_train_mb']:.0f} MB "
                      f"(+{res['peak_rss_train_delta_mb']:.0f})", flush=True)
        summary = {name: {key: median_of(rs, key) for key in
                          ("samples_per_s", "real_tokens_per_s", "real_tokens_per_cpu_s", "seconds_per_step",
                           "mean_width", "peak_rss_train_mb",
                           "peak_rss_train_delta_mb", "rss_before_train_mb")} | {"trainable_params": rs[0]["trainable_params"]}
                   for name, rs in runs.items()}
        ratios = {}
        print("\n(a) training throughput (median over repeats)")
        print(f"  {'contender':20s} {'samples/s':>9s} {'real tok/s':>10s} {'tok/CPU s':>9s} {'s/step':>7s} {'width':>6s} "
              f"{'peak RSS MB':>11s} {'train delta MB':>14s} {'trainable':>9s}")
        for name, s in summary.items():
            print(f"  {name:20s} {s['samples_per_s']:9.2f} {s['real_tokens_per_s']:10.0f} {s['real_tokens_per_cpu_s']:9.0f} "
                  f"{s['seconds_per_step']:7.2f} "
                  f"{s['mean_width']:6.1f} {s['peak_rss_train_mb']:11.0f} {s['peak_rss_train_delta_mb']:14.0f} "
                  f"{s['trainable_params']:9,d}")
        for ours, theirs in BASELINE_OF.items():
            a, b = summary[ours], summary[theirs]
            ratios[f"{ours}/{theirs}"] = {
                "samples_per_s": a["samples_per_s"] / b["samples_per_s"],
                "real_tokens_per_s": a["real_tokens_per_s"] / b["real_tokens_per_s"],
                "real_tokens_per_cpu_s": a["real_tokens_per_cpu_s"] / b["real_tokens_per_cpu_s"],
                "peak_rss": a["peak_rss_train_mb"] / b["peak_rss_train_mb"],
                "peak_rss_delta": a["peak_rss_train_delta_mb"] / b["peak_rss_train_delta_mb"]}
            q = ratios[f"{ours}/{theirs}"]
            print(f"  {ours} vs {theirs}: {q['samples_per_s']:.2f}x samples/s, {q['real_tokens_per_s']:.2f}x real "
                  f"tokens/s ({q['real_tokens_per_cpu_s']:.2f}x per CPU second), peak RSS {q['peak_rss']:.2f}x, "
                  f"training RSS increase {q['peak_rss_delta']:.2f}x")
        report["train"] = {"runs": runs, "median": summary, "ratios": ratios}
    if args.only != "train":
        res = run_worker("eval_cache", args)
        print("\n(b) evaluation, cached prompt vs recomputed per batch (median s per pass)")
        for method, e in res.items():
            if method == "process_wall_s":
                continue
            print(f"  {method:5s} {e['examples']} examples in {e['batches']} batches: cached {e['cached_s_per_pass']:.3f} s, "
                  f"uncached {e['uncached_s_per_pass']:.3f} s -> {e['speedup_uncached_over_cached']:.3f}x; one prompt "
                  f"computation {e['prompt_compute_ms']:.3f} ms; max |logit diff| {e['max_abs_logit_diff']:.1e}")
        report["eval_cache"] = res
    report["total_wall_s"] = time.perf_counter() - t0
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(report, indent=2))
    print(f"\ntotal wall time {report['total_wall_s']:.0f} s; numbers in {RESULTS_PATH.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
