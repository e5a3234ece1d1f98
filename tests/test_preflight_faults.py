"""Bad input is stopped before compute is spent, with a message naming the key or file and the fix.

Configuration mistakes fail in ``xlt-run``'s preflight (exit 2, nothing loaded, nothing run);
data mistakes fail in the reader, naming the file and line; the data fingerprint follows content.
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from omegaconf import OmegaConf

from xlt_runner.validation import validate
from xlt_runner import config
from xlt_runner.cli import compose, preflight
from xlt_runner.config import ConfigError
from xlt_runner.data import BenchmarkDataError
from xlt_runner.data.cldr_demo import CldrDemo, CldrDemoConfig
from xlt_runner.data.languages import LanguageTable
from xlt_runner.data.tsv_benchmark import FIELD_SIZE_LIMIT, SIB200_LABELS, Sib200, TsvClassificationBenchmark

from conftest import find_records, make_synthetic_benchmark, run_cli, tiny_run_args


def preflight_fails(args: list[str], tmp_path, *expected: str) -> str:
    """Run ``xlt-run ARGS``; it must exit 2 before running anything, stderr holding ``expected``."""
    result = run_cli([*args, f"paths.output_root={tmp_path / 'out'}"], timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("results.json")), "nothing may run after a preflight error"
    return result.stderr


# ---------------------------------------------------------------- (6) configs that were not asked for
def test_plus_override_cannot_add_a_key_to_a_typed_section(tmp_path):
    preflight_fails(["+trainer.max_step=500"], tmp_path, "unknown key 'trainer.max_step'",
                    "Did you mean trainer.max_steps?")
    for added in (["++method.prompt_length=4"], ["method=spt", "+method.optim.momentum=0.9"], ["+seedx=1"]):
        with pytest.raises(ConfigError, match="unknown key"):
            validate(compose(added))
    # hydra.* stays open, and '++' may set a key the schema has
    preflight(["+hydra.job.env_set.XLT_TEST=1", "++trainer.max_steps=7", f"paths.output_root={tmp_path}",
               f"paths.cache_dir={tmp_path / 'cache'}"])


@pytest.mark.parametrize("key", ["max_train_examples_per_language", "max_eval_examples_per_language"])
def test_example_limits_must_be_positive_or_null(key, tmp_path):
    preflight_fails([f"benchmark.{key}=-5"], tmp_path, f"benchmark.{key}=-5", f"benchmark.{key}=null")
    with pytest.raises(ConfigError, match=f"benchmark.{key}=0"):
        validate(compose([f"benchmark.{key}=0"]))
    validate(compose([f"benchmark.{key}=1"]))


def test_explicit_language_missing_from_local_data_fails_in_preflight(synthetic_data, shared_cache, tmp_path):
    args = tiny_run_args(synthetic_data, tmp_path / "out", shared_cache, "languages.targets=[eng_Latn,deu_Latn]")
    preflight_fails(args, tmp_path, "languages.targets", "'deu_Latn' is not in the benchmark's data",
                    str(synthetic_data))


def test_named_sets_are_intersected_but_explicit_codes_are_required():
    table = LanguageTable.default()
    available = ["eng_Latn", "fra_Latn", "zho_Hans"]
    languages = OmegaConf.create({"source": ["enarzho"], "targets": ["all"], "groups": ["seen", "unseen"]})
    source, targets, members = table.select_run_languages(languages, available, "here")
    assert source == ["eng_Latn", "zho_Hans"] and targets == available and members["unseen"] == []
    with pytest.raises(ConfigError, match=r"languages.source: language 'fur_Latn'.*here.*fra_Latn"):
        table.resolve_in_data("languages.source", ["eng_Latn", "fur_Latn"], available, "here")
    with pytest.raises(ConfigError, match=r"languages.source: unknown language or set 'fra_Latm'"):
        table.resolve_in_data("languages.source", ["fra_Latm"], available, "here")
    with pytest.raises(ConfigError, match="'deu_Latn' is not in the benchmark's data"):
        table.resolve_in_data("languages.targets", ["deu_Latn-joshi5"], available, "here")
    with pytest.raises(ConfigError, match="selects no language"):
        table.resolve_in_data("languages.targets", ["lowperf"], available, "here")


def test_runner_refuses_explicit_language_missing_from_data(synthetic_data, shared_cache, tmp_path):
    """The runner checks too (a Hub benchmark's languages are known only to the job)."""
    from xlt_runner.runner import run

    cfg = compose(tiny_run_args(synthetic_data, tmp_path, shared_cache, "languages.source=[eng_Latn,deu_Latn]"))
    with pytest.raises(ConfigError, match="deu_Latn"):
        run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"


# ------------------------------------------------------------ (8) the sweep points that will run
@pytest.mark.parametrize("args", [["method=spt,xpe", "method.pool=mean"], ["method=spt,xpe", "method.prompt_length=10"],
                                  # 120 points; the preset sweeps spt, xpe, dual_xpe30, dual_xpe70
                                  ["experiment=xpe_table1", "method.prompt_length=10", "trainer.accelerator=cpu"]])
def test_preflight_accepts_a_key_every_swept_method_has(args, tmp_path):
    preflight(["-m", *args, f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}"])


def test_sweep_with_a_key_of_the_swept_methods_runs_every_point(synthetic_data, shared_cache, tmp_path):
    """Hydra composes a multirun's master config from the group defaults (head_only, which has no
    pool); xlt-run hands it such keys as one-value sweeps, so every job gets them."""
    args = tiny_run_args(synthetic_data, tmp_path, shared_cache, "trainer.max_steps=2", "trainer.val_check_interval=2",
                         "languages.targets=[eng_Latn,fra_Latn]", "sweep_name=pool")
    result = run_cli(["-m", "method=spt,xpe", "method.pool=mean", "method.prompt_length=4", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    records = find_records(tmp_path / "sweeps" / "pool")
    assert sorted(r["method"] for r in records) == ["spt", "xpe"] and {r["status"] for r in records} == {"complete"}
    assert all(r["config"]["method"]["pool"] == "mean" and r["config"]["method"]["prompt_length"] == 4 for r in records)
    assert all("method.pool=mean" in r["overrides"] for r in records)


def test_preflight_names_the_sweep_point_a_key_does_not_fit(tmp_path):
    preflight_fails(["-m", "method=spt,head_only", "method.prompt_length=10"], tmp_path,
                    "in the sweep point method=head_only method.prompt_length=10",
                    "unknown key 'method.prompt_length'")


# ------------------------------------------------------------------ (9) errors a user can act on
def test_learning_rates_must_be_positive(tmp_path):
    preflight_fails(["method.optim.lr=-1e-3"], tmp_path, "method.optim.lr=-0.001", "greater than 0")
    for override in ("method.prompt_lr=0", "regime.probe_lr=-1"):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            validate(compose(["method=spt", override]))


def test_type_error_in_an_override_keeps_the_reason(tmp_path):
    preflight_fails(["trainer.max_steps=abc"], tmp_path, "trainer.max_steps", "abc",
                    "could not be converted to Integer")


@pytest.mark.parametrize("key", ["paths.cache_dir", "paths.output_root"])
def test_unwritable_directory_fails_in_preflight(key, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    paths = {"paths.output_root": tmp_path / "out", "paths.cache_dir": tmp_path / "cache", key: blocker / "sub"}
    result = run_cli([f"{k}={v}" for k, v in paths.items()], timeout=120)
    assert result.returncode == 2, result.stderr
    for text in ("cannot be written", str(blocker), key, "a directory you can write"):
        assert text in result.stderr, result.stderr


def test_gpu_accelerator_without_cuda_fails_in_preflight_for_local_jobs(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    preflight_fails(["trainer.accelerator=gpu"], tmp_path, "trainer.accelerator=gpu", "trainer.accelerator=cpu",
                    "trainer.accelerator=auto")
    # jobs of a SLURM launcher run on GPU nodes: not checked on the submitting machine
    preflight(["-m", "trainer=gpu", "hydra/launcher=slurm_a100", "seed=0,1", f"paths.output_root={tmp_path}",
               f"paths.cache_dir={tmp_path / 'c'}"])


def test_non_utf8_data_names_file_and_line(tmp_path):
    root = make_synthetic_benchmark(tmp_path / "data", languages=["eng_Latn"], sizes=(7, 7, 7))
    train = root / "eng_Latn" / "train.tsv"
    lines = train.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"\n", "caf\u00e9\n".encode("latin-1"))
    train.write_bytes(b"".join(lines))
    with pytest.raises(BenchmarkDataError, match=r"train.tsv' line 5 is not valid UTF-8.*iconv"):
        TsvClassificationBenchmark("t", root, SIB200_LABELS).load("eng_Latn", "train")
    (root / "eng_Latn" / "labels.txt").write_bytes("\n".join(SIB200_LABELS).encode("utf-16"))
    with pytest.raises(BenchmarkDataError, match=r"labels.txt' line 1 is not valid UTF-8"):
        TsvClassificationBenchmark("t", root, SIB200_LABELS).load("eng_Latn", "dev")


def test_long_field_is_read_and_runaway_quote_names_its_line(tmp_path):
    root = make_synthetic_benchmark(tmp_path / "data", languages=["eng_Latn"], sizes=(7, 7, 7))
    long_text = "word " * 40_000  # 200,000 characters: over csv's default limit, legitimate
    with open(root / "eng_Latn" / "dev.tsv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerow(["900", "travel", long_text])
    assert TsvClassificationBenchmark("t", root, SIB200_LABELS).load("eng_Latn", "dev")[-1].text == long_text
    with open(root / "eng_Latn" / "test.tsv", "a", encoding="utf-8") as f:
        f.write('901\ttravel\t"an unclosed quote\n' + "more text\n" * (FIELD_SIZE_LIMIT // 10 + 1))
    with pytest.raises(BenchmarkDataError, match=r"test.tsv' line 9: a field is longer than .*double quote"):
        TsvClassificationBenchmark("t", root, SIB200_LABELS).load("eng_Latn", "test")


# --------------------------------------------------------------- (4) the data fingerprint is content
def test_fingerprint_follows_content_not_location(tmp_path):
    def fingerprints(root):
        sib = Sib200(config.BenchmarkConfig(name="sib200", data_dir=str(root)), cache_dir=str(tmp_path / "c"))
        demo = CldrDemo(CldrDemoConfig(name="cldr_demo", data_dir=str(root)), cache_dir=str(tmp_path / "c"))
        return sib.fingerprint(), demo.fingerprint()

    original = make_synthetic_benchmark(tmp_path / "a", languages=["eng_Latn", "fra_Latn"], sizes=(7, 7, 7))
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(original, copy, copy_function=shutil.copyfile)  # new paths and mtimes, same bytes
    assert fingerprints(copy) == fingerprints(original)
    for changed in (copy / "eng_Latn" / "test.tsv", copy / "fra_Latn" / "labels.txt"):
        before, stat = changed.read_bytes(), changed.stat()
        changed.write_bytes(before[:-2] + bytes([before[-2] ^ 1]) + before[-1:])  # one bit; same size
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
        assert fingerprints(copy)[0] != fingerprints(original)[0] and fingerprints(copy)[1] != fingerprints(original)[1]
        changed.write_bytes(before)


def test_null_beside_a_group_sweep_stays_a_plain_override():
    from xlt_runner.cli import defer_to_jobs
    argv = ["-m", "method=full_ft,head_only", "method.init_from=null", "method.classifier_dropout=0.2"]
    assert defer_to_jobs(argv) == ["-m", "method=full_ft,head_only", "method.init_from=null",
                                   "method.classifier_dropout=choice(0.2)"]
