"""Training-step overhead of xlt_runner's Lightning module against a plain PyTorch loop.

For each method (default ``head_only`` and ``lora`` on the packaged multilingual-e5-small,
SIB-200 train splits of eng_Latn/arb_Arab/zho_Hans, batch 32, max_length 128), three
sides run the same optimiser steps on the same batches (the data module's
``LengthGroupedTrainSampler`` with the same seed, the same collator), from the same
initial weights and torch RNG state, with the optimiser and LR schedule of the method's
own ``configure_optimizers`` and the same gradient clipping (the runner's default 1.0):

* **plain**: ``for batch in loader: logits = method(batch); loss = cross_entropy; backward;
  clip_grad_norm_; optimizer.step(); scheduler.step(); zero_grad()`` with nothing else.
* **lightning_bare**: ``pl.Trainer.fit`` on the method (its own ``training_step``,
  which also checks the loss is finite and logs it) with logger, checkpointing, progress
  bar, model summary and validation off.
* **lightning_runner**: the trainer exactly as ``xlt-run`` builds it (``runner.build_trainer``,
  its checkpoint callback and callbacks, CSV logger, ``log_every_n_steps`` from config,
  progress bar off); the validation + checkpoint at the end of the step budget falls
  after the timed window.

Timing: wall time from the end of warm-up step ``--warmup`` to the end of the last step
(including data loading of the timed steps), so set-up, first-call costs and validation
are excluded. The sides run in rounds, in reversed order every other round (A B C, C B A,
...) to spread drift and noise from other processes; overhead is
``(lightning_time - plain_time) / plain_time`` on times summed over rounds. Torch uses
``--threads`` intra-op threads for all sides (same process). Losses of every step are
compared across sides (max abs difference printed) to show the steps really are the same.

Run: ``.venv/bin/python bench/train_overhead.py [--methods head_only,lora] [--steps 20] [--repeats 2]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from common import (DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, REPO_ROOT, TokenCounter, compose_config, environment,
                    resolve_data_dir, set_threads, write_results)

SOURCE_LANGUAGES = ["eng_Latn", "arb_Arab", "zho_Hans"]
SIDES = ("plain", "lightning_bare", "lightning_runner")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="SIB-200 'annotated' dir (relative to the repo root)")
    p.add_argument("--methods", default="head_only,lora", help="comma-separated: head_only, lora, full_ft")
    p.add_argument("--model", default="me5_small", help="model config name (e.g. tiny_xlmr for a quick check)")
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps per side and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three sides")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (all sides)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    set_threads(args.threads)

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import Callback

    from xlt_runner.data import build_benchmark
    from xlt_runner.data.classification import ClassificationDataModule
    from xlt_runner.methods import ClassificationTask, method_class
    from xlt_runner.models import load_backbone
    from xlt_runner.runner import Patience, build_callbacks, build_checkpoint_callback, build_loggers, build_trainer
    from xlt_runner.tasks.classification import Classification

    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", ".*treespec.*")
    pl_log = __import__("logging").getLogger("pytorch_lightning")
    pl_log.setLevel("WARNING")
    cache_dir = str(REPO_ROOT / DEFAULT_CACHE_DIR)
    total_batches = args.warmup + args.steps
    out_dir = Path(tempfile.mkdtemp(prefix="xlt_bench_train_"))

    class StepClock(Callback):
        """Records the time at the end of warm-up and of the last step, and every step's loss."""

        def __init__(self) -> None:
            self.start = self.end = None
            self.losses: list[torch.Tensor] = []
            self.threads = None
            self.tokens: dict[str, int] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:  # same dropout masks as the plain loop, whatever either drew before
                torch.manual_seed(args.seed)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(outputs["loss"].detach())
            if batch_idx == args.warmup - 1:
                self.start = time.perf_counter()
            elif batch_idx == total_batches - 1:
                self.end = time.perf_counter()
                self.threads = torch.get_num_threads()
                self.tokens = counter.snapshot()  # training steps only, not the validation that follows

    results: dict[str, dict] = {}
    print(f"train_overhead: model {args.model}, sources {','.join(SOURCE_LANGUAGES)}, batch {args.batch_size}, "
          f"max_length {args.max_length}, {args.warmup} warm-up + {args.steps} timed steps per run, "
          f"{args.repeats} round(s), torch threads {torch.get_num_threads()}")
    for method_name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cfg = compose_config([
            f"model={args.model}", f"method={method_name}", "benchmark=sib200", "logger=none",
            f"benchmark.data_dir={data_dir}", f"benchmark.batch_size={args.batch_size}",
            f"model.max_length={args.max_length}", "trainer.enable_progress_bar=false",
            f"trainer.max_steps={total_batches}", f"paths.cache_dir={cache_dir}",
        ])
        benchmark = build_benchmark(cfg.benchmark, cache_dir)
        backbone = load_backbone(cfg.model, cache_dir)  # fresh per method: lora wraps it in place

        def datamodule() -> ClassificationDataModule:
            dm = ClassificationDataModule(
                benchmark, backbone.tokenizer, source_languages=SOURCE_LANGUAGES, target_languages=SOURCE_LANGUAGES,
                max_length=args.max_length, text_prefix=cfg.model.text_prefix, batch_size=args.batch_size,
                eval_batch_size=cfg.benchmark.eval_batch_size, num_training_batches=total_batches, seed=args.seed,
                cache_dir=cache_dir, max_eval_examples_per_language=32)
            dm.setup("fit")  # tokenise (or read the cache) before any clock starts
            return dm

        task = ClassificationTask(labels=list(benchmark.labels), eval_languages=datamodule().eval_languages,
                                  source_languages=SOURCE_LANGUAGES)
        torch.manual_seed(args.seed)
        method = method_class(method_name, "classification")(cfg.method, backbone, task, total_steps=total_batches)
        initial = {k: v.detach().clone() for k, v in method.trainable_state_dict().items()}
        counter = TokenCounter()
        counter.attach(method.backbone)

        def reset() -> None:
            method.load_state_dict(initial, strict=False)
            method.zero_grad(set_to_none=True)  # a Lightning fit leaves its last step's gradients behind
            torch.manual_seed(args.seed)
            counter.reset()

        def run_plain() -> tuple[float, list[float], dict[str, int]]:
            loader = datamodule().train_dataloader()
            optim_cfg = method.configure_optimizers()
            optimizer, scheduler = optim_cfg["optimizer"], optim_cfg["lr_scheduler"]["scheduler"]
            params = [p for group in optimizer.param_groups for p in group["params"]]
            clip = cfg.trainer.gradient_clip_val
            method.train()
            losses, start = [], None
            for batch_idx, batch in enumerate(loader):
                if batch_idx == 0:  # same dropout masks as the Lightning sides
                    torch.manual_seed(args.seed)
                logits = method(batch)
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.detach())
                if batch_idx == args.warmup - 1:
                    start = time.perf_counter()
            seconds = time.perf_counter() - start
            assert len(losses) == total_batches
            return seconds, [float(x) for x in losses], counter.snapshot()

        def run_lightning(runner_style: bool) -> tuple[float, list[float], dict[str, int]]:
            clock = StepClock()
            if runner_style:
                root = out_dir / method_name / "runner"
                loggers, _ = build_loggers(cfg, root, "bench", {})
                monitor = Classification.monitor(cfg)
                callbacks = [build_checkpoint_callback(root / "checkpoints", *monitor),
                             *build_callbacks(cfg, method, *monitor, total_batches, cfg.trainer.val_check_interval,
                                              Patience()),
                             clock]
                trainer = build_trainer(cfg, root, loggers, callbacks, total_batches, cfg.trainer.val_check_interval,
                                        manual_optimization=False)
            else:
                trainer = pl.Trainer(
                    default_root_dir=str(out_dir / method_name / "bare"), max_steps=total_batches, max_epochs=1,
                    limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=cfg.trainer.gradient_clip_val,
                    precision=cfg.trainer.precision, accelerator="cpu", devices=1, use_distributed_sampler=False,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[clock])
            trainer.fit(method, datamodule=datamodule())
            assert len(clock.losses) == total_batches and clock.threads == args.threads, "steps or threads differ"
            return clock.end - clock.start, [float(x) for x in clock.losses], clock.tokens

        sides = {"plain": run_plain, "lightning_bare": lambda: run_lightning(False),
                 "lightning_runner": lambda: run_lightning(True)}
        runs: dict[str, list[dict]] = {name: [] for name in SIDES}
        print(f"{method_name}: trainable {method.parameter_counts()['trainable']:,} of "
              f"{method.parameter_counts()['total']:,} parameters")
        for r in range(args.repeats):
            for name in (SIDES if r % 2 == 0 else tuple(reversed(SIDES))):
                reset()
                seconds, losses, tokens = sides[name]()
                runs[name].append({"seconds": seconds, "losses": losses, **tokens})
                print(f"  round {r + 1} {name:16s}: {seconds:7.2f} s for {args.steps} steps "
                      f"({1000 * seconds / args.steps:6.0f} ms/step)  real tokens {tokens['real_tokens']:,}  "
                      f"padded tokens {tokens['padded_tokens']:,} (all {total_batches} steps)")
        total = {name: sum(run["seconds"] for run in runs[name]) for name in SIDES}
        reference = runs["plain"][0]["losses"]
        loss_diff = max(abs(a - b) for name in SIDES for run in runs[name] for a, b in zip(run["losses"], reference))
        overhead = {name: (total[name] - total["plain"]) / total["plain"] for name in SIDES[1:]}
        per_round = {name: [(runs[name][r]["seconds"] - runs["plain"][r]["seconds"]) / runs["plain"][r]["seconds"]
                            for r in range(args.repeats)] for name in SIDES[1:]}
        print(f"  {method_name}: max |loss - plain loss| over all steps and runs = {loss_diff:.2e}")
        for name in SIDES[1:]:
            rounds = ", ".join(f"{100 * x:+.1f}%" for x in per_round[name])
            print(f"  {method_name}: {name} overhead vs plain = {100 * overhead[name]:+.2f}% "
                  f"({total[name]:.2f} s vs {total['plain']:.2f} s summed over rounds; per round {rounds}) "
                  f"(goal <= 5%)")
        results[method_name] = {"runs": runs, "total_seconds": total, "overhead": overhead,
                                "overhead_per_round": per_round, "max_abs_loss_diff": loss_diff,
                                "params": method.parameter_counts()}
        del method, backbone

    path = write_results("train_overhead", {
        "what": "Lightning training steps (xlt_runner method) vs a plain PyTorch loop, same batches/optimizer/model",
        "model": args.model, "source_languages": SOURCE_LANGUAGES, "batch_size": args.batch_size,
        "max_length": args.max_length, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "repeats": args.repeats, "methods": results, "environment": environment(),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
