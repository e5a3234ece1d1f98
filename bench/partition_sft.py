"""Partition SFT against full SFT of the same decoder on the same batches: step time.

Three contenders, each in its own subprocess, same model (default: the packaged SmolLM2-135M-Instruct,
fp32), same data (``train_data=gsm8k_mkqa`` from the local GSM8K train file and the MKQA Japanese
train split, alternating by step, batch 8), AdamW at a constant lr, clipping 1.0, 2 untimed + 16
timed optimiser steps, all through Lightning's ``Trainer.fit`` as a run trains:

- **full**: ``method=sft`` (automatic optimisation, one AdamW over every parameter) on the same
  alternating batches;
- **partition**: ``method=partition_sft`` with partition ``--partition`` (default ``layer_swap_a``,
  the paper's [A]): each step updates one partition from its dataset, two AdamW states, the other
  partition toggled off (``toggle_optimizer``), manual optimisation;
- **bare**: the same partition updates as a plain PyTorch loop (``requires_grad`` set per step,
  the step's AdamW, no Lightning): the compute partition SFT cannot avoid.

Printed: seconds per step (wall, CPU) and two ratios: partition/full (the issue's goal: <= 1.05x,
the switching costing at most 5 %; a partition step computes no weight gradient for the inactive
partition, so it can be faster than full SFT) and partition/bare (what Lightning's manual
optimisation and the switching add to the same compute). The first step's loss must agree.

    .venv/bin/python bench/partition_sft.py [--steps 16] [--threads 1] [--partition layer_swap_a]

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

CONTENDERS = ("full", "partition", "bare")
SHARED = (REPO_ROOT / ".." / "shared" / "data").resolve()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task-data", default=str(SHARED / "gsm8k" / "train.jsonl"))
    p.add_argument("--language-data", default=str(SHARED / "mkqa" / "mia2022_dev"))
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--partition", default="layer_swap_a")
    p.add_argument("--cache-dir", default=str(REPO_ROOT / DEFAULT_CACHE_DIR))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "partition_sft.json"))
    p.add_argument("--smoke", action="store_true", help="seconds-long check: tiny_llama, generated data, tiny sizes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.steps, args.warmup, args.batch_size = "tiny_llama", 2, 1, 2
    return args


def write_smoke_data(root: Path) -> dict[str, str]:
    """A GSM8K-format task file, MKQA-layout Japanese language data and two MGSM languages."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "gsm8k.jsonl", "w", encoding="utf-8") as f:
        for i in range(24):
            f.write(json.dumps({"question": f"Ann has {i} pens and gets {i + 1}. How many?",
                                "answer": f"{i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n#### {2 * i + 1}"})
                    + "\n")
    mkqa = root / "mkqa"
    mkqa.mkdir(exist_ok=True)
    for lang, q in (("en", "Who is {i}?"), ("ja", "{i} は誰ですか")):
        with open(mkqa / f"mkqa-{lang}.jsonl", "w", encoding="utf-8") as f:
            for i in range(40):
                f.write(json.dumps({"id": f"{i}_{lang}", "lang": lang, "question": q.format(i=i),
                                    "answers": [f"A{i}"]}, ensure_ascii=False) + "\n")
    return {"task": str(root / "gsm8k.jsonl"), "language": str(mkqa)}


def overrides(name: str, args: argparse.Namespace, total: int) -> list[str]:
    method = ["method=sft", "train_data.mode=mix"] if name == "full" else [
        "method=partition_sft", f"partition@method.partitions={args.partition}"]
    smoke = ["train_data.task.dev_size=2",
             "train_data.language.dev_size=2", "benchmark.test_size=4", "benchmark.dev_size=2"] if args.smoke else []
    return [f"model={args.model}", *method, "benchmark=mkqa_cbqa", f"benchmark.data_dir={args.language_data}",
            "languages=qa_english", "languages.source=[en,ja]", "languages.targets=[en,ja]", "train_data=gsm8k_mkqa",
            f"train_data.task.path={args.task_data}", f"train_data.language.data_dir={args.language_data}",
            f"benchmark.batch_size={args.batch_size}", f"trainer.max_steps={total}", f"trainer.val_check_interval={total}",
            "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.gradient_clip_val=1.0", "logger=none",
            "model.device=cpu", "model.max_length=384", "method.optim.lr=1e-5", "method.optim.warmup_ratio=null",
            "method.optim.warmup_steps=0", "method.optim.schedule=constant", "method.optim.weight_decay=0.0",
            f"paths.cache_dir={args.cache_dir}", *smoke,
            *(["method.partitions={language: [{first: 1}], math: [{last: 1}]}"] if args.smoke and name != "full" else [])]


def worker(name: str, args: argparse.Namespace) -> dict:
    import pytorch_lightning as pl
    import torch
    import transformers

    from xlt_runner.composition import compose
    from xlt_runner.data import build_benchmark
    from xlt_runner.methods import method_class
    from xlt_runner.models import load_backbone
    from xlt_runner.tasks.generation import Generation

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    total = args.warmup + args.steps
    cfg = compose(overrides("full" if name == "full" else "partition", args, total))
    pl.seed_everything(0, verbose=False)
    backbone = load_backbone(cfg.model, args.cache_dir)
    task_kind = Generation(cfg, build_benchmark(cfg.benchmark, args.cache_dir), backbone)
    source = list(cfg.languages.source)
    datamodule = task_kind.datamodule(source, ["ja"], total)
    datamodule.setup("fit")
    if name == "full":  # the same alternating batches as the partition contenders
        datamodule.mode = "alternate"
    method = method_class(cfg.method.family, "generation")(cfg.method, backbone,
                                                           task_kind.method_task(datamodule, source), total)
    method.accumulate_grad_batches, method.gradient_clip_val = 1, 1.0
    counts = method.parameter_counts()  # before training toggles requires_grad
    clock: list[tuple[float, float]] = []
    losses: list[float] = []
    if name == "bare":
        from xlt_runner.data.sft_data import ROLES
        params = dict(method.named_parameters())
        optimizers = [torch.optim.AdamW([params[n] for n in method.role_parameters[r]], lr=1e-5, weight_decay=0.0)
                      for r in ROLES]
        loader = datamodule.train_dataloader()
        method.train()
        for k, batch in enumerate(loader):
            part = int(batch["dataset"][0])
            chosen = set(method.role_parameters[ROLES[part]])
            for n, p in params.items():
                p.requires_grad_(n in chosen)
            summed, count = method.answer_losses(batch)
            loss = summed.sum() / count.sum().clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([params[n] for n in chosen], 1.0)
            optimizers[part].step()
            optimizers[part].zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            clock.append((time.perf_counter(), time.process_time()))
    else:
        class Clock(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                losses.append(float(loss))
                clock.append((time.perf_counter(), time.process_time()))

        trainer = pl.Trainer(max_steps=total, max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[Clock()],
                             gradient_clip_val=None if name == "partition" else 1.0)
        trainer.fit(method, datamodule=datamodule)
    timed = len(clock) - args.warmup
    wall = (clock[-1][0] - clock[args.warmup - 1][0]) / timed
    cpu = (clock[-1][1] - clock[args.warmup - 1][1]) / timed
    return {"seconds_per_step": wall, "cpu_seconds_per_step": cpu, "losses": losses,
            "params": counts}


def run_worker(name: str, args: argparse.Namespace) -> dict:
    return run_contender(__file__, name, args, ("task_data", "language_data", "model", "partition", "cache_dir",
                                               "steps", "warmup", "batch_size", "threads"),
                         ("--smoke",) if args.smoke else ())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_MARKER + json.dumps(worker(args.worker, args)), flush=True)
        return 0
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="xlt_bench_partition_")
        paths = write_smoke_data(Path(tmp.name))
        args.task_data, args.language_data = paths["task"], paths["language"]
    print(f"partition_sft: {args.model}, batch {args.batch_size}, {args.warmup} untimed + {args.steps} timed steps, "
          f"{args.threads} torch thread(s); partitions {args.partition}")
    runs = {}
    for name in CONTENDERS:
        start = time.perf_counter()
        runs[name] = r = run_worker(name, args)
        print(f"  {name:9s}: {r['seconds_per_step']:6.3f} s/step ({r['cpu_seconds_per_step']:.3f} CPU s), trainable "
              f"{r['params']['trainable']:,} of {r['params']['total']:,} ({time.perf_counter() - start:.0f} s)")
    if len({r["losses"][0] for r in runs.values()}) != 1:
        raise SystemExit(f"error: the first step's loss differs ({[r['losses'][0] for r in runs.values()]}): the "
                         "contenders did not start from the same model and batch")
    if runs["partition"]["losses"] != runs["bare"]["losses"]:
        print("  note: partition and bare losses differ after step 0 "
              f"(max |diff| {max(abs(a - b) for a, b in zip(runs['partition']['losses'], runs['bare']['losses'])):.2e})")
    vs_full = runs["partition"]["seconds_per_step"] / runs["full"]["seconds_per_step"]
    vs_bare = runs["partition"]["seconds_per_step"] / runs["bare"]["seconds_per_step"]
    cpu_vs_full = runs["partition"]["cpu_seconds_per_step"] / runs["full"]["cpu_seconds_per_step"]
    cpu_vs_bare = runs["partition"]["cpu_seconds_per_step"] / runs["bare"]["cpu_seconds_per_step"]
    print(f"partition/full: {vs_full:.3f}x wall, {cpu_vs_full:.3f}x CPU (goal <= 1.05x: "
          f"{'met' if vs_full <= 1.05 else 'NOT met'}); partition/bare loop (same compute): {vs_bare:.3f}x wall, "
          f"{cpu_vs_bare:.3f}x CPU")
    path = write_report(args.output, args, runs, {"partition_vs_full": vs_full, "partition_vs_bare": vs_bare,
                                                  "cpu_partition_vs_full": cpu_vs_full,
                                                  "cpu_partition_vs_bare": cpu_vs_bare})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
