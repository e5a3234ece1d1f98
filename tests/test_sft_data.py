"""Two-dataset SFT data (issue 12, item 1): record formats, GSM8K in MGSM's wording, the held-out
validation part, and training batches of every mode as a pure function of (seed, batch index),
alternating by optimiser step for partition SFT."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xlt_runner.config import ConfigError, SftSourceConfig
from xlt_runner.data import BenchmarkDataError
from xlt_runner.data.sft_data import (AlternatingTrainSampler, gsm8k_example, hold_out, read_sft_source,
                                      record_example)
from xlt_runner.metrics.math_answers import score_math_answer

GSM8K_ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                         "May. How many clips did Natalia sell altogether in April and May?",
             "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                       "altogether in April and May.\n#### 72"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def source(path: Path, **settings) -> SftSourceConfig:
    return SftSourceConfig(name="s", language="en", path=str(path), **settings)


def test_gsm8k_reads_as_mgsm_english_and_its_number_is_extracted():
    ex = gsm8k_example(GSM8K_ROW["question"], GSM8K_ROW["answer"], "0")
    assert ex.prompt.startswith("Question: Natalia") and ex.prompt.endswith("\nStep-by-Step Answer:")
    assert ex.completion == ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April "
                             "and May. The answer is 72.")
    assert "<<" not in ex.completion
    assert score_math_answer(ex.completion, "72", "en")["exact_match"] == 1.0
    with pytest.raises(BenchmarkDataError, match="####"):
        gsm8k_example("q", "no final line", "7")


def test_every_record_format_and_the_bad_ones(tmp_path):
    assert record_example({"prompt": "p", "completion": "c"}, "prompt_completion", "1", "f").completion == "c"
    chat = record_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                          "messages", "2", "f")
    assert (chat.prompt, chat.completion) == ("hi", "yo")
    assert record_example({"text": "raw"}, "text", "3", "f").prompt is None
    with pytest.raises(BenchmarkDataError, match="model.system_prompt"):
        record_example({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                     {"role": "assistant", "content": "a"}]}, "messages", "4", "f")
    # auto: by the first record's keys
    path = write_jsonl(tmp_path / "a.jsonl", [GSM8K_ROW, GSM8K_ROW])
    examples = read_sft_source(source(path), str(tmp_path))
    assert [e.id for e in examples] == ["1", "2"] and examples[0].completion.endswith("The answer is 72.")
    with pytest.raises(BenchmarkDataError, match="none of the SFT formats"):
        read_sft_source(source(write_jsonl(tmp_path / "b.jsonl", [{"q": 1}])), str(tmp_path))
    with pytest.raises(BenchmarkDataError, match="occur twice"):
        read_sft_source(source(write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}])),
                        str(tmp_path))
    with pytest.raises(BenchmarkDataError, match="not a file"):
        read_sft_source(source(tmp_path / "missing.jsonl"), str(tmp_path))


def test_the_held_out_part_is_fixed_disjoint_and_capped_training_keeps_it_out(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"q{i}", "completion": f"a{i}"} for i in range(50)]
    examples = read_sft_source(source(write_jsonl(tmp_path / "d.jsonl", rows)), str(tmp_path))
    train, dev = hold_out(examples, 10, None, "d")
    assert len(dev) == 10 and len(train) == 40 and not {e.id for e in train} & {e.id for e in dev}
    shuffled = list(reversed(examples))
    assert sorted(e.id for e in hold_out(shuffled, 10, None, "d")[1]) == sorted(e.id for e in dev)  # by id, not order
    capped, dev_again = hold_out(examples, 10, 5, "d")
    assert len(capped) == 5 and dev_again == dev and set(e.id for e in capped) <= set(e.id for e in train)
    with pytest.raises(BenchmarkDataError):
        hold_out(examples[:5], 10, None, "d")


def _sampler(accumulate: int, steps_per_switch: int, start: int = 0, rank: int = 0, world: int = 1,
             num_batches: int = 24) -> AlternatingTrainSampler:
    lengths = [np.arange(40) % 7 + 1, np.arange(30) % 5 + 1]
    return AlternatingTrainSampler(lengths, [0, 40], 2, num_batches, 3, accumulate, steps_per_switch, start, rank, world)


@pytest.mark.parametrize("accumulate,steps_per_switch", [(1, 1), (2, 1), (3, 2)])
def test_alternation_follows_the_optimiser_step_and_resumes_in_phase(accumulate, steps_per_switch):
    sampler = _sampler(accumulate, steps_per_switch)
    batches = list(sampler)
    for k, batch in enumerate(batches):
        step = k // accumulate
        part = (step // steps_per_switch) % 2
        assert sampler.position(k)[0] == part
        assert all((i < 40) == (part == 0) for i in batch), f"batch {k} of step {step} is not from dataset {part}"
    # each dataset's batches are its own sampler's, in order, none skipped
    for part in (0, 1):
        js = [sampler.position(k)[1] for k in range(len(batches)) if sampler.position(k)[0] == part]
        assert js == list(range(len(js)))
    # a resumed sampler yields exactly the rest
    for start in (1, accumulate * steps_per_switch + 1, 17):
        assert list(_sampler(accumulate, steps_per_switch, start)) == batches[start:]
    # the same seed gives the same batches; another seed others
    assert list(_sampler(accumulate, steps_per_switch)) == batches


def test_under_ddp_every_rank_takes_the_same_dataset_at_each_step_and_no_batch_twice():
    ranks = [list(_sampler(2, 1, rank=r, world=2, num_batches=12)) for r in (0, 1)]
    for k in range(12):
        assert all((i < 40) == ((k // 2) % 2 == 0) for r in (0, 1) for i in ranks[r][k])
    seen = [tuple(b) for r in ranks for b in r]
    assert len(seen) == len(set(seen))


def test_train_data_settings_are_checked_before_anything_loads():
    from xlt_runner.composition import compose
    from xlt_runner.validation import validate
    base = ["model=tiny_llama", "benchmark=mgsm", "languages=mgsm", "train_data=gsm8k_mkqa", "languages.source=[en,ja]",
            "languages.targets=[en,ja]"]
    validate(compose(base + ["method=partition_sft"]))
    validate(compose(base + ["method=sft", "train_data.mode=mix"]))
    cases = {
        ("method=sft",): "does not train with train_data.mode=alternate",
        ("method=partition_sft", "languages.source=[en]"): r"set languages.source=\[en, ja\]",
        ("method=prompting",): "does not train here",
        ("method=partition_sft", "train_data.mode=mix"): "does not train with train_data.mode=mix",
        ("method=partition_sft", "train_data.language=null"): "train_data.language is not set",
        ("method=partition_sft", "train_data.language.path=x.jsonl"): "names both benchmark",
        ("method=partition_sft", "train_data.task.format=csv"): "train_data.task.format",
        ("method=partition_sft", "train_data.steps_per_switch=0"): "steps_per_switch",
        ("method=partition_sft", "method.dataset_partitions.language=math"): "same partition",
        ("method=partition_sft", "method.dataset_partitions.language=lang"): "partition 'lang'",
        ("method=partial_sft", "train_data.mode=task", "languages.source=[en]", "method.partition=bogus"):
            "partition 'bogus'",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate(compose(base + list(overrides)))
    with pytest.raises(ConfigError, match="choose train_data="):
        validate(compose(["model=tiny_llama", "benchmark=mkqa_cbqa", "languages=qa_english", "method=partition_sft"]))
    with pytest.raises(ConfigError, match="MGSM has only a test split"):
        validate(compose(["model=tiny_llama", "benchmark=mgsm", "languages=mgsm", "method=sft"]))


def test_runs_without_train_data_keep_their_ids():
    """``train_data`` came after runs were recorded: unset, it is not part of a run's identity."""
    from xlt_runner.composition import compose
    from xlt_runner.identity import identity_dict
    assert "train_data" not in identity_dict(compose(["model=tiny_llama", "benchmark=mkqa_cbqa", "method=sft",
                                                      "languages=qa_english"]))


def test_a_language_data_language_that_cannot_be_resolved_says_how_to_set_it():
    from xlt_runner.composition import compose
    from xlt_runner.validation import validate
    with pytest.raises(ConfigError, match=r"set languages.targets=\[en,<language>\]"):
        validate(compose(["model=tiny_llama", "benchmark=mgsm", "languages=mgsm", "train_data=gsm8k_mkqa",
                          "method=partition_sft"]))
