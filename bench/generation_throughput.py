"""Generation throughput: one question at a time vs plain batched ``generate`` vs xlt_runner's path.

The same MKQA questions (``--num-questions``, default 300: the first 60 question ids of each
of 5 languages, read straight from the MIA-2022 jsonl files, which are aligned row by row)
are answered by the packaged SmolLM2-135M-Instruct (``model=smollm2_135m``, its chat
format, fp32) greedily with ``--max-new-tokens`` (32) three ways:

* **(a) one at a time**: ``model.generate(do_sample=False)`` per question, no padding; it
  stops at the end-of-turn token.
* **(b) plain batched**: ``model.generate(do_sample=False)`` on left-padded batches of
  ``--batch-size`` (32) in file order; a batch stops when every row has hit end-of-turn,
  there is no stop-string handling.
* **(c) xlt_runner**: what the generation data module and :func:`xlt_runner.generation.generate_greedy`
  do: batches grouped by the prompt start they share (``prompt_prefix_groups``: on MGSM each
  language whose prompts keep their exemplars on its own; MKQA's chat prompts share only the
  system turn, so all languages together), sorted by prompt length within a group, widest batch
  first (``GroupedEvalSampler``), left padding (``PromptCollator``), the prompt start a batch's
  rows share prefilled once, per-sequence stopping (end-of-turn, or the first stop string after
  non-blank text), finished rows dropped from the batch and the KV cache.

Every side's text is cut with the same rule (:func:`xlt_runner.generation.cut_at_stop`) and
the predictions are compared: mismatches must be 0 in fp32. Tokenisation is excluded from the
timings (prompts are built once with :class:`~xlt_runner.data.generation.PromptFormat`).
Counted per side: forward calls, prompt tokens entering prefill (real and padded) and
decode row-steps (one row advancing one token).

Run: ``.venv/bin/python bench/generation_throughput.py [--limit N] [--repeats R] [--threads T]``
(``--limit`` answers only the first N questions, for a smoke run; ``--repeats`` times (b) and (c)
R times in alternating order and compares medians, against other load on the machine;
``--skip-one-at-a-time`` leaves out (a), the slow side, to compare (b) and (c) only).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import DEFAULT_CACHE_DIR, REPO_ROOT, environment, set_threads, write_results

DEFAULT_DATA_DIR = str((REPO_ROOT / ".." / "shared" / "data" / "mkqa" / "mia2022_dev").resolve())
DEFAULT_LANGUAGES = ["en", "es", "ru", "ar", "ja"]  # Latin, Cyrillic, Arabic, Japanese scripts
#: --benchmark mgsm: MGSM's 2-shot chain-of-thought prompts (plain format), long answers.
MGSM_DATA_DIR = str((REPO_ROOT / ".." / "shared" / "data" / "mgsm").resolve())
MGSM_LANGUAGES = ["en", "zh", "sw", "te", "th"]  # Latin, Han, Telugu, Thai: prompts of very different lengths


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", choices=("mkqa", "mgsm"), default="mkqa",
                   help="mkqa: short answers, chat format (default); mgsm: 2-shot chain-of-thought math prompts, "
                        "plain format, MGSM's stop strings, 128 new tokens by default")
    p.add_argument("--data-dir", default=None, help="MIA-2022 mkqa-<lang>.jsonl files, or the MGSM files")
    p.add_argument("--languages", default=None, help="comma-separated language codes")
    p.add_argument("--num-questions", type=int, default=300, help="in all, split evenly over the languages")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N of them (smoke run)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 (mkqa), 128 (mgsm)")
    p.add_argument("--stop-strings", default=None,
                   help="comma-separated, Python escapes allowed (default: newline; mgsm: the benchmark's)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (every side)")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of (b) and (c), in alternating order (b c, c b, ...); (a) runs once, after round 1")
    p.add_argument("--skip-one-at-a-time", action="store_true",
                   help="leave out (a): compare (b) and (c) only (no c/a figure)")
    return p.parse_args()


def read_questions(data_dir: Path, languages: list[str], total: int) -> list[dict]:
    """The first ``total // len(languages)`` rows of each language's file, checked to be the
    same questions (the ids before ``_<lang>`` agree)."""
    per_language = total // len(languages)
    rows: dict[str, list[dict]] = {}
    for lang in languages:
        path = data_dir / f"mkqa-{lang}.jsonl"
        if not path.is_file():
            raise SystemExit(f"error: no {path}; pass --data-dir with the MIA-2022 mkqa-<lang>.jsonl files")
        with open(path, encoding="utf-8") as handle:
            rows[lang] = [json.loads(line) for _, line in zip(range(per_language), handle)]
    base = [r["id"].rsplit("_", 1)[0] for r in rows[languages[0]]]
    for lang in languages[1:]:
        if [r["id"].rsplit("_", 1)[0] for r in rows[lang]] != base:
            raise SystemExit(f"error: mkqa-{lang}.jsonl is not aligned with mkqa-{languages[0]}.jsonl")
    return [{**row, "lang": lang} for lang in languages for row in rows[lang]]


def read_mgsm(data_dir: Path, languages: list[str], total: int) -> list[dict]:
    """The first ``total // len(languages)`` MGSM problems of each language as their 2-shot prompts."""
    from xlt_runner.data.mgsm import Mgsm, MgsmConfig
    bench = Mgsm(MgsmConfig(name="mgsm", data_dir=str(data_dir)), "/tmp")
    per_language = total // len(languages)
    return [{"question": example.prompt, "lang": lang}
            for lang in languages for example in bench.load(lang, "test")[:per_language]]


class WorkCounter:
    """Forward calls, prefill tokens (tokens of calls with more than one position; real: not
    padding) and decode row-steps (rows of one-position calls) of one model, from a forward pre-hook."""

    def __init__(self, model) -> None:
        self.reset()
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def reset(self) -> None:
        self.forwards = self.prefill_real = self.prefill_padded = self.decode_row_steps = 0

    def _hook(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.forwards += 1
        if input_ids.shape[1] > 1:
            self.prefill_padded += int(input_ids.numel())
            mask = kwargs.get("attention_mask")  # generate drops an all-ones mask; a mask may also
            # cover cached slots (a shared prefix): count the columns of this call only
            real = mask[:, -input_ids.shape[1]:].sum() if mask is not None else input_ids.numel()
            self.prefill_real += int(real)
        else:
            self.decode_row_steps += int(input_ids.shape[0])

    def snapshot(self) -> dict[str, int]:
        return {"forwards": self.forwards, "prefill_real_tokens": self.prefill_real,
                "prefill_padded_tokens": self.prefill_padded, "decode_row_steps": self.decode_row_steps}


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    mgsm = args.benchmark == "mgsm"
    languages = [c.strip() for c in (args.languages or ",".join(MGSM_LANGUAGES if mgsm else DEFAULT_LANGUAGES))
                 .split(",") if c.strip()]
    args.max_new_tokens = args.max_new_tokens or (128 if mgsm else 32)
    data_dir = Path(args.data_dir or (MGSM_DATA_DIR if mgsm else DEFAULT_DATA_DIR))
    rows = (read_mgsm(data_dir, languages, args.num_questions) if mgsm else
            read_questions(data_dir, languages, args.num_questions))[:args.limit]

    import numpy as np
    import torch
    import transformers

    from xlt_runner.composition import compose
    from xlt_runner.data.batching import GroupedEvalSampler
    from xlt_runner.data.generation import PromptCollator, PromptFormat, prompt_prefix_groups
    from xlt_runner.generation import cut_at_stop, generate_greedy
    from xlt_runner.models import load_backbone

    transformers.logging.set_verbosity_error()
    cfg = compose(["model=smollm2_135m", "model.format=plain", "model.template='{q} {a}'", "model.max_length=1024",
                   "benchmark=mgsm"] if mgsm else ["model=smollm2_135m", "model.format=chat"])
    stop_strings = ([s.encode().decode("unicode_escape") for s in args.stop_strings.split(",") if s]
                    if args.stop_strings is not None else list(cfg.benchmark.stop_strings) if mgsm else ["\n"])
    backbone = load_backbone(cfg.model, str(REPO_ROOT / DEFAULT_CACHE_DIR))
    model, tokenizer = backbone.model, backbone.tokenizer
    prompt_format = PromptFormat(cfg.model, tokenizer, training=False)
    room = cfg.model.max_length - args.max_new_tokens
    prompts = [prompt_format.prompt_ids(row["question"], room) for row in rows]
    eos = list(prompt_format.stop_token_ids)
    pad = tokenizer.pad_token_id
    collate = PromptCollator(pad)
    counter = WorkCounter(model)

    def batch_of(indices: list[int]) -> dict:
        return collate([(np.asarray(prompts[i]), len(prompts[i]), 0, i) for i in indices])

    def generated_text(new_tokens: torch.Tensor) -> str:
        return cut_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), stop_strings)[0]

    def one_at_a_time() -> list[str]:
        texts = []
        for i in range(len(prompts)):
            ids = torch.tensor([prompts[i]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
            texts.append(generated_text(out[0, ids.shape[1]:]))
        return texts

    def plain_batched() -> list[str]:
        texts = []
        for start in range(0, len(prompts), args.batch_size):
            batch = batch_of(list(range(start, min(start + args.batch_size, len(prompts)))))
            out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                                 max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
            texts += [generated_text(row) for row in out[:, batch["input_ids"].shape[1]:]]
        return texts

    def xlt_runner_path() -> list[str]:
        texts: list[str] = [""] * len(prompts)
        groups = prompt_prefix_groups(prompts, [row["lang"] for row in rows])  # as the data module groups them
        for indices in GroupedEvalSampler([len(p) for p in prompts], groups, args.batch_size):
            batch = batch_of(indices)
            outputs = generate_greedy(model, tokenizer, batch["input_ids"], batch["attention_mask"],
                                      max_new_tokens=args.max_new_tokens, stop_strings=stop_strings,
                                      eos_token_ids=eos)
            for i, output in zip(batch["index"].tolist(), outputs):
                texts[i] = output.text
        return texts

    print(f"generation_throughput: SmolLM2-135M-Instruct ({backbone.source}), {cfg.model.format} format, fp32, greedy, "
          f"{len(prompts)} {args.benchmark.upper()} questions ({', '.join(languages)}), max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size}, stop strings {stop_strings!r}, end-of-turn ids {eos}")
    print(f"environment: {environment()}")
    with torch.inference_mode():
        warm = batch_of([0])
        model(input_ids=warm["input_ids"], attention_mask=warm["attention_mask"])  # untimed: first-call costs
    sides = {"a_one_at_a_time": one_at_a_time, "b_plain_batched": plain_batched, "c_xlt_runner": xlt_runner_path}
    if args.skip_one_at_a_time:
        del sides["a_one_at_a_time"]
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    texts: dict[str, list[str]] = {}
    for r in range(args.repeats):
        order = ["b_plain_batched", "c_xlt_runner"][::1 if r % 2 == 0 else -1] + (["a_one_at_a_time"] if r == 0 and
                                                                                  "a_one_at_a_time" in sides else [])
        for name in order:
            counter.reset()
            start, cpu_start = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                answers = sides[name]()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            if texts.setdefault(name, answers) != answers:
                raise SystemExit(f"error: {name} gave other answers in round {r + 1} than in round 1")
            runs[name].append({"seconds": seconds, "cpu_seconds": cpu_seconds, "questions_per_s": len(prompts) / seconds,
                               **counter.snapshot()})
            print(f"  round {r + 1} {name:16s}: {seconds:7.2f} s ({cpu_seconds:7.2f} CPU s)  "
                  f"{len(prompts) / seconds:6.2f} questions/s  "
                  + "  ".join(f"{k} {v:,}" for k, v in counter.snapshot().items()), flush=True)

    mismatches = {other: sum(x != y for x, y in zip(texts[other], texts["c_xlt_runner"]))
                  for other in ("a_one_at_a_time", "b_plain_batched") if other in texts}
    for other, count in mismatches.items():
        print(f"mismatches {other} vs c_xlt_runner (cut at the stop rule): {count} of {len(prompts)}")
    reference = "a_one_at_a_time" if "a_one_at_a_time" in texts else "b_plain_batched"
    for i in [i for i, (x, y) in enumerate(zip(texts[reference], texts["c_xlt_runner"])) if x != y][:5]:
        print(f"  question {i}: {reference[0]}={texts[reference][i]!r} c={texts['c_xlt_runner'][i]!r}")
    seconds = {name: statistics.median(run["seconds"] for run in runs[name]) for name in sides}
    c_over_a = seconds["a_one_at_a_time"] / seconds["c_xlt_runner"] if "a_one_at_a_time" in seconds else None
    c_over_b = seconds["b_plain_batched"] / seconds["c_xlt_runner"]
    # CPU time: with --threads 1, what each side computed, less distorted than wall time when other
    # processes share the cores
    cpu = {name: statistics.median(run["cpu_seconds"] for run in runs[name]) for name in sides}
    cpu_c_over_a = cpu["a_one_at_a_time"] / cpu["c_xlt_runner"] if "a_one_at_a_time" in cpu else None
    cpu_c_over_b = cpu["b_plain_batched"] / cpu["c_xlt_runner"]
    empty = sum(not t for t in texts["c_xlt_runner"])
    for name in sides:
        print(f"{name:16s}: median {seconds[name]:.2f} s ({cpu[name]:.2f} CPU s) over {len(runs[name])} run(s), "
              f"{len(prompts) / seconds[name]:.2f} questions/s")
    print(f"speed-up c/a: {f'{c_over_a:.1f}x' if c_over_a is not None else 'not measured'} (goal >= 10x); "
          f"c/b: {c_over_b:.2f}x (goal >= 1.3x); per CPU second: c/a "
          f"{f'{cpu_c_over_a:.1f}x' if cpu_c_over_a is not None else 'not measured'}, c/b {cpu_c_over_b:.2f}x; "
          f"empty answers: {empty}; first answers: {texts['c_xlt_runner'][:3]}")
    path = write_results("generation_throughput" + ("_mgsm" if mgsm else ""), {
        "what": f"greedy {args.benchmark} generation: one at a time vs plain batched generate vs xlt_runner "
                "(batches grouped by shared prompt start and sorted by length, shared start prefilled once, "
                "per-row stop)",
        "model": backbone.source, "format": cfg.model.format, "dtype": cfg.model.dtype, "languages": languages,
        "questions": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "stop_strings": stop_strings, "eos_token_ids": eos, "tokenisation_in_timing": False, "repeats": args.repeats,
        "runs": runs, "median_seconds": seconds, "median_cpu_seconds": cpu,
        "speedup_c_over_a": c_over_a, "speedup_c_over_b": c_over_b,
        "cpu_speedup_c_over_a": cpu_c_over_a, "cpu_speedup_c_over_b": cpu_c_over_b, "mismatches_vs_c": mismatches,
        "empty_answers_c": empty, "environment": environment(),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
