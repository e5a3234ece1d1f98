"""Evaluation throughput: xlt_runner's per-language test pass vs a loop of ``transformers.Trainer.evaluate``.

Both sides evaluate the same model on the test splits of the same SIB-200 languages,
with the same batch size and maximum length, in one process, one after the other:

* **xlt_runner**: what ``xlt-run`` does after training: ``ClassificationDataModule``
  (one pass over every target language, batches sorted by length across languages,
  dynamic padding) + the ``head_only`` method + ``pl.Trainer.test`` built by
  ``runner.build_trainer`` with the runner's checkpoint callback and CSV logger.
* **transformers.Trainer**: ``AutoModelForSequenceClassification`` on the same converted
  checkpoint, one ``datasets.Dataset`` per language, ``DataCollatorWithPadding`` (dynamic
  padding), ``compute_metrics`` accuracy, ``Trainer.evaluate`` once per language,
  ``report_to="none"``, ``use_cpu=True``, default dataloader settings.

Model: the packaged multilingual-e5-small (``model=me5_small``, inputs prefixed with
"query: "), frozen, with a classification head of fixed random initialisation (seeded).
The Trainer model gets the very same weights: its BERT pooler dense layer and classifier
are loaded from the xlt_runner head (dense -> tanh -> out_proj, identical in eval mode),
and its encoder weights are checked equal to the xlt_runner backbone's.

Tokenisation is excluded from both timings: the data module tokenises (or reads its cache)
and the ``datasets`` are mapped before the clocks start. The timed part is the
``trainer.test`` call and the loop of ``Trainer.evaluate`` calls (both include their
dataloader construction, the forward passes, metric computation and bookkeeping).
Progress bars are off on both sides unless ``--progress-bars``.

Run: ``.venv/bin/python bench/eval_throughput.py [--languages a,b,...] [--repeats N]``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from common import (DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, REPO_ROOT, TokenCounter, compose_config, environment,
                    resolve_data_dir, set_threads, write_results)

# 20 SIB-200 codes: 12 seen by XLM-R in pretraining, 8 unseen; 17 scripts (Latin, Cyrillic,
# Arabic, Han, Japanese, Devanagari, Tamil, Georgian, Greek, Hebrew, Thai, Hangul, Tibetan,
# Ethiopic, N'Ko, Ol Chiki, Myanmar).
DEFAULT_LANGUAGES = [
    "eng_Latn", "rus_Cyrl", "arb_Arab", "zho_Hans", "jpn_Jpan", "hin_Deva", "tam_Taml", "kat_Geor",
    "ell_Grek", "heb_Hebr", "tha_Thai", "kor_Hang",                                   # seen
    "yor_Latn", "quy_Latn", "dzo_Tibt", "tir_Ethi", "nqo_Nkoo", "sat_Olck", "shn_Mymr", "ckb_Arab",  # unseen
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="SIB-200 'annotated' dir (relative to the repo root)")
    p.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES), help="comma-separated SIB-200 codes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens incl. special tokens")
    p.add_argument("--max-examples", type=int, default=None, help="test examples per language (default: all 204)")
    p.add_argument("--repeats", type=int, default=1, help="rounds; round r runs the two sides in alternating order")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both sides)")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's random initialisation")
    p.add_argument("--progress-bars", action="store_true", help="keep both progress bars on")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    languages = [c.strip() for c in args.languages.split(",") if c.strip()]
    set_threads(args.threads)

    import datasets
    import numpy as np
    import torch
    import transformers
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from xlt_runner.data import build_benchmark
    from xlt_runner.data.classification import ClassificationDataModule
    from xlt_runner.methods import ClassificationTask, method_class
    from xlt_runner.models import ensure_packaged_model, load_backbone
    from xlt_runner.data.classification import stratified_subsample
    from xlt_runner.runner import Patience, build_callbacks, build_checkpoint_callback, build_loggers, build_trainer
    from xlt_runner.tasks.classification import Classification

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # weight-loading bar (set-up, not timed)
    datasets.disable_progress_bar()  # .map bars (pre-tokenisation, not timed)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*pin_memory.*")
    cache_dir = str(REPO_ROOT / DEFAULT_CACHE_DIR)
    cfg = compose_config([
        # method.pool=cls: the Trainer's BertForSequenceClassification reads [CLS] (through its pooler)
        "model=me5_small", "method=head_only", "method.pool=cls", "benchmark=sib200", "logger=none",
        f"benchmark.data_dir={data_dir}", f"benchmark.eval_batch_size={args.batch_size}",
        f"model.max_length={args.max_length}", f"trainer.enable_progress_bar={str(args.progress_bars).lower()}",
        f"paths.cache_dir={cache_dir}",
    ])
    benchmark = build_benchmark(cfg.benchmark, cache_dir)
    missing = [c for c in languages if c not in benchmark.languages()]
    if missing:
        raise SystemExit(f"error: languages {missing} are not in {data_dir}; choose SIB-200 codes like eng_Latn")

    # ---- xlt_runner side: the method and data module the runner builds
    backbone = load_backbone(cfg.model, cache_dir)
    tokenizer = backbone.tokenizer
    datamodule = ClassificationDataModule(
        benchmark, tokenizer, source_languages=[languages[0]], target_languages=languages,
        max_length=args.max_length, text_prefix=cfg.model.text_prefix, batch_size=args.batch_size,
        eval_batch_size=args.batch_size, num_training_batches=1, seed=args.seed, cache_dir=cache_dir,
        max_eval_examples_per_language=args.max_examples)
    datamodule.setup("test")  # tokenise (or read the tokenisation cache) before timing
    task = ClassificationTask(labels=list(benchmark.labels), eval_languages=datamodule.eval_languages,
                              source_languages=[languages[0]])
    torch.manual_seed(args.seed)
    method = method_class("head_only", "classification")(cfg.method, backbone, task, total_steps=1)

    # ---- transformers side: the same checkpoint as AutoModelForSequenceClassification, same head weights
    hf_model = AutoModelForSequenceClassification.from_pretrained(
        ensure_packaged_model("me5_small", cache_dir), num_labels=len(benchmark.labels), dtype=torch.float32)
    with torch.no_grad():
        hf_model.bert.pooler.dense.load_state_dict(method.head.dense.state_dict())
        hf_model.classifier.load_state_dict(method.head.out_proj.state_dict())
    ours = backbone.model.state_dict()
    theirs = {k: v for k, v in hf_model.bert.state_dict().items() if not k.startswith("pooler.")}
    assert ours.keys() == theirs.keys(), "encoder parameter names differ"
    weight_diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
    assert weight_diff == 0.0, f"encoder weights differ by {weight_diff}"
    hf_model.eval()

    hf_datasets = {}
    for lang in languages:
        # the sentences the data module evaluates: a label-stratified cap, not the first N
        examples = stratified_subsample(benchmark.load(lang, cfg.benchmark.test_split), args.max_examples)
        ds = Dataset.from_dict({"text": [cfg.model.text_prefix + ex.text for ex in examples],
                                "label": [ex.label for ex in examples]})
        hf_datasets[lang] = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
                                   batched=True, remove_columns=["text"])
    ours_tokens = int(datamodule._datasets["test"].lengths().sum())
    theirs_tokens = sum(sum(len(x) for x in ds["input_ids"]) for ds in hf_datasets.values())
    assert ours_tokens == theirs_tokens, f"tokenisations differ: {ours_tokens} vs {theirs_tokens} tokens"

    def accuracy(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    out_dir = Path(tempfile.mkdtemp(prefix="xlt_bench_eval_"))
    hf_trainer = Trainer(
        model=hf_model,
        args=TrainingArguments(output_dir=str(out_dir / "hf"), per_device_eval_batch_size=args.batch_size,
                               report_to="none", use_cpu=True, disable_tqdm=not args.progress_bars),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, compute_metrics=accuracy)

    counters = {"xlt_runner": TokenCounter(), "hf_trainer": TokenCounter()}
    counters["xlt_runner"].attach(method.backbone)
    counters["hf_trainer"].attach(hf_model.bert)

    def run_xlt_runner() -> tuple[float, dict[str, float]]:
        loggers, _ = build_loggers(cfg, out_dir / "xlt", "bench", {})
        t = cfg.trainer
        monitor = Classification.monitor(cfg)
        callbacks = [build_checkpoint_callback(out_dir / "xlt" / "checkpoints", *monitor),
                     *build_callbacks(cfg, method, *monitor, t.max_steps, t.val_check_interval, Patience())]
        trainer = build_trainer(cfg, out_dir / "xlt", loggers, callbacks, t.max_steps, t.val_check_interval,
                                manual_optimization=False)
        start = time.perf_counter()
        trainer.test(method, datamodule=datamodule, verbose=False)
        seconds = time.perf_counter() - start
        return seconds, {lang: method.test_results[lang]["accuracy"] for lang in languages}

    def run_hf_trainer() -> tuple[float, dict[str, float]]:
        start = time.perf_counter()
        acc = {lang: hf_trainer.evaluate(hf_datasets[lang])["eval_accuracy"] for lang in languages}
        return time.perf_counter() - start, acc

    # One untimed forward pass of each model (so neither side pays first-call costs), which also
    # checks that both compute the same logits: a random head may predict one class everywhere,
    # in which case equal accuracies alone would prove little.
    warm_batch = DataCollatorWithPadding(tokenizer)([hf_datasets[lang][0] for lang in languages])
    method.eval()  # as trainer.test does: head dropout off
    with torch.inference_mode():
        ours_logits = method({"input_ids": warm_batch["input_ids"], "attention_mask": warm_batch["attention_mask"]})
        hf_logits = hf_model(input_ids=warm_batch["input_ids"], attention_mask=warm_batch["attention_mask"]).logits
    logit_diff = float((ours_logits - hf_logits).abs().max())

    sides = {"xlt_runner": run_xlt_runner, "hf_trainer": run_hf_trainer}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    print(f"eval_throughput: me5_small (frozen, random head seed {args.seed}), {len(languages)} SIB-200 test "
          f"languages, {len(datamodule._datasets['test'])} examples, batch {args.batch_size}, max_length "
          f"{args.max_length}, torch threads {torch.get_num_threads()}; tokenisation excluded from timings")
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            counters[name].reset()
            seconds, acc = sides[name]()
            tokens = counters[name].snapshot()
            runs[name].append({"seconds": seconds, "accuracy": acc, **tokens})
            print(f"  round {r + 1} {name:10s}: {seconds:7.2f} s  {tokens['batches']:4d} batches  "
                  f"real tokens {tokens['real_tokens']:,}  padded tokens {tokens['padded_tokens']:,} "
                  f"({tokens['padded_tokens'] / tokens['real_tokens']:.2f}x real)")

    median = {name: statistics.median(run["seconds"] for run in runs[name]) for name in sides}
    n_examples = len(datamodule._datasets["test"])
    acc_diff = max(abs(runs["xlt_runner"][0]["accuracy"][lang] - runs["hf_trainer"][0]["accuracy"][lang])
                   for lang in languages)
    speedup = median["hf_trainer"] / median["xlt_runner"]
    padded = {name: runs[name][0]["padded_tokens"] for name in sides}
    print(f"logits on a {len(languages)}-example batch, max |xlt_runner - Trainer| = {logit_diff:.2e}")
    print(f"per-language accuracy, max |xlt_runner - Trainer| = {acc_diff:.6f} "
          f"(mean accuracy {statistics.mean(runs['xlt_runner'][0]['accuracy'].values()):.4f})")
    for name in sides:
        print(f"{name:10s}: median {median[name]:.2f} s over {args.repeats} round(s), "
              f"{n_examples / median[name]:.1f} examples/s, padded tokens {padded[name]:,}")
    print(f"speed-up xlt_runner vs Trainer.evaluate loop: {speedup:.2f}x (goal >= 1.5x); "
          f"padded tokens ratio {padded['hf_trainer'] / padded['xlt_runner']:.2f}x")
    path = write_results("eval_throughput", {
        "what": "xlt_runner per-language test pass vs loop of transformers.Trainer.evaluate",
        "model": "me5_small (frozen) + head (seeded random)", "languages": languages, "examples": n_examples,
        "batch_size": args.batch_size, "max_length": args.max_length, "repeats": args.repeats,
        "tokenisation_in_timing": False, "progress_bars": args.progress_bars,
        "runs": runs, "median_seconds": median, "speedup": speedup,
        "max_abs_accuracy_diff": acc_diff, "max_abs_logit_diff": logit_diff, "environment": environment(),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
