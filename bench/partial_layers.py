"""Partial-layer fine-tuning against full fine-tuning of the same decoder: step time and peak memory.

Two contenders, each in its own subprocess (its own peak memory), same model (default: the packaged
SmolLM2-135M-Instruct, fp32), same batches (the project's ``GenerationDataModule`` over MKQA
English, batch 8), same optimiser (AdamW, lr 2e-5, linear decay, clipping 1.0), 2 untimed + 20
timed steps, the project's loss (``DecoderMethod.answer_losses``) in a bare loop (the Lightning step
adds under 1 % on top, ``bench/sft_throughput.py``):

- **full**: ``method=sft``, every parameter trains;
- **partial**: ``method=partial_layers`` with ``--trainable`` (default ``last=0.25``: the last
  quarter of the layers, attention, MLP and norms; embeddings, final norm and LM head frozen).

Printed: seconds per step (wall and CPU), peak resident memory in training and its increase over
the loaded model, trainable parameters, and the ratios partial/full (goals: <= 0.5x the time and
<= 0.6x the peak memory; the CoCo-CoLa paper reports about 0.5x and 0.65x on GPUs).

    .venv/bin/python bench/partial_layers.py [--steps 20] [--threads 1] [--trainable last=0.25]

``--smoke`` runs tiny_llama on generated data in seconds (``tests/test_bench_smoke.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CACHE_DIR, REPO_ROOT, RESULT_MARKER, run_contender, write_report  # noqa: E402
from sft_throughput import (DEFAULT_DATA_DIR, PeakRss, StepLog, batch_stats, build_method,  # noqa: E402
                            project_parts, write_smoke_data)

CONTENDERS = ("full", "partial")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--cache-dir", default=str(REPO_ROOT / DEFAULT_CACHE_DIR))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--trainable", default="last=0.25",
                   help="the partial contender's method.trainable overrides, comma-separated key=value")
    p.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "partial_layers.json"))
    p.add_argument("--smoke", action="store_true", help="seconds-long check: tiny_llama, generated data, tiny sizes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.steps, args.warmup, args.batch_size = "tiny_llama", 2, 1, 4
    return args


def method_overrides(name: str, args: argparse.Namespace) -> tuple[str, ...]:
    if name == "full":
        return ("method=sft",)
    keys = [item.strip() for item in args.trainable.split(",") if item.strip()]
    return ("method=partial_layers", "method.trainable.last=null",
            *(f"method.trainable.{k}" for k in keys))


def worker(name: str, args: argparse.Namespace) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    cfg, backbone, task_kind, datamodule = project_parts(args, total, method_overrides(name, args))
    method = build_method(cfg, backbone, task_kind, datamodule, total)
    optim = method.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    memory = PeakRss()
    log = StepLog(args.warmup, total, memory)
    method.train()
    for batch in datamodule.train_dataloader():
        summed, count = method.answer_losses(batch)
        loss = summed.sum() / count.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.step_end(float(loss.detach()), batch_stats(batch["input_ids"], batch["attention_mask"], batch["labels"]))
    summary = log.summary()
    return {"seconds_per_step": summary["seconds_per_step"],
            "cpu_seconds_per_step": summary["cpu_seconds"] / summary["timed_steps"],
            "losses": summary["losses"], "params": method.parameter_counts(), **memory.stop()}


def run_worker(name: str, args: argparse.Namespace) -> dict:
    return run_contender(__file__, name, args, ("data_dir", "model", "cache_dir", "steps", "warmup", "batch_size",
                                               "threads", "seed", "trainable"),
                         ("--lr", repr(args.lr)) if args.lr is not None else ())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_MARKER + json.dumps(worker(args.worker, args)), flush=True)
        return 0
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="xlt_bench_partial_")
        args.data_dir = str(write_smoke_data(Path(tmp.name)))
    print(f"partial_layers: {args.model}, batch {args.batch_size}, {args.warmup} untimed + {args.steps} timed steps, "
          f"{args.threads} torch thread(s); partial = method.trainable {args.trainable}")
    runs = {}
    for name in CONTENDERS:
        start = time.perf_counter()
        runs[name] = run_worker(name, args)
        r = runs[name]
        print(f"  {name:8s}: {r['seconds_per_step']:6.2f} s/step ({r['cpu_seconds_per_step']:.2f} CPU s), peak RSS "
              f"{r['peak_rss_train_mb']:,.0f} MB (+{r['peak_rss_train_delta_mb']:,.0f} over the loaded model), "
              f"trainable {r['params']['trainable']:,} of {r['params']['total']:,} "
              f"({time.perf_counter() - start:.0f} s)")
    full, part = runs["full"], runs["partial"]
    if full["losses"][0] != part["losses"][0]:
        raise SystemExit("error: the first step's loss differs: the contenders did not start from the same model "
                         "and batch")
    time_ratio = part["seconds_per_step"] / full["seconds_per_step"]
    memory_ratio = part["peak_rss_train_mb"] / full["peak_rss_train_mb"]
    delta_ratio = part["peak_rss_train_delta_mb"] / full["peak_rss_train_delta_mb"]
    print(f"partial/full: time {time_ratio:.2f}x (goal <= 0.5x: {'met' if time_ratio <= 0.5 else 'NOT met'}), "
          f"peak memory {memory_ratio:.2f}x (goal <= 0.6x: {'met' if memory_ratio <= 0.6 else 'NOT met'}), "
          f"memory added by training {delta_ratio:.2f}x")
    write_report(args.output, args, runs, {"time": time_ratio, "peak_memory": memory_ratio,
                                           "memory_added": delta_ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
