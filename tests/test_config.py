"""Config composition and start-up validation: every mistake fails before anything loads."""
from __future__ import annotations


import pytest

from xlt_runner.validation import validate
from xlt_runner import config
from xlt_runner.cli import CONF_DIR, compose, job_overrides
from xlt_runner.identity import run_id
from xlt_runner.methods import method_class

from conftest import run_cli

GROUPS = ["model", "method", "benchmark", "languages", "trainer", "logger"]


#: The other groups a generation option composes with (the root defaults are classification's).
GENERATION_CONTEXT = {"model": "tiny_llama", "method": "prompting", "benchmark": "mkqa_cbqa", "languages": "qa_english"}


#: The other groups a rag option composes with (QTT-RAG and its baselines).
RAG_CONTEXT = {"model": "tiny_llama", "method": "qtt_rag", "benchmark": "mkqa", "languages": "rag_paper"}


def _is_rag(cfg) -> bool:
    return cfg.benchmark.task == "rag" or cfg.method.family == "rag" or cfg.languages.name.startswith("rag_")


def _is_generation(cfg) -> bool:
    generation_only = "classification" not in method_class(cfg.method.family, "generation").supported_tasks
    return (cfg.model.kind == "decoder" or cfg.benchmark.task in ("generation", "math") or generation_only
            or cfg.languages.source[0] == "en")  # the QA benchmarks' codes (SIB-200's are eng_Latn ...)


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))])
def test_every_group_option_composes_and_validates(group, option):
    """Each option validates among options of its task kind (a decoder, a generation method or
    benchmark with the generation defaults); the mismatches are refused (test below)."""
    overrides = [f"{group}={option}"]
    cfg = compose(overrides)
    if cfg.model.kind == "seq2seq":  # a translator for pipelines (QTT-RAG); no task kind runs one alone
        with pytest.raises(config.ConfigError, match="runs on encoder models"):
            validate(cfg)
        return
    if _is_rag(cfg):
        overrides += [f"{g}={o}" for g, o in RAG_CONTEXT.items() if g != group]
        if "benchmark=xor_tydi" in overrides or cfg.languages.name == "rag_xor":
            overrides = [o for o in overrides if o not in ("benchmark=mkqa", "languages=rag_paper")]
            overrides += [x for x in ("benchmark=xor_tydi", "languages=rag_xor") if x not in overrides]
        validate(compose(overrides))
        return
    if _is_generation(cfg):
        overrides += [f"{g}={o}" for g, o in GENERATION_CONTEXT.items() if g != group]
    if group == "method" and "model.layer_sets" in (CONF_DIR / group / f"{option}.yaml").read_text():
        overrides.append("model=llama32_1b")  # a preset of the paper's layers per model, which tiny_llama lacks
    if (group, option) == ("languages", "coco_paper"):
        overrides.append("benchmark=mintaka")  # Hindi is not in MKQA
    if (group, option) == ("languages", "partition_transfer"):
        overrides.append("benchmark=mgsm")  # Swahili is not in MKQA
    if group == "method" and getattr(method_class(cfg.method.family, "generation"), "requires_train_data", False):
        modes = method_class(cfg.method.family, "generation").train_data_modes
        overrides += ["train_data=gsm8k_mkqa", f"train_data.mode={modes[0]}", "languages.targets=[en,ja]",
                      "languages.source=[en,ja]" if modes[0] == "alternate" else "languages.source=[en]"]
    validate(compose(overrides))


#: What an experiment preset leaves to the command line (a ``???`` value: data only the user has).
EXPERIMENT_REQUIRED = {"partition_table1": ["train_data.language.path=instructions.jsonl"],
                       "qtt_paper": ["benchmark.corpus.path=passages.jsonl"],
                       "qtt_paper_xor": ["benchmark.corpus.path=passages.jsonl"]}


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes(experiment):
    validate(compose([f"experiment={experiment}", *EXPERIMENT_REQUIRED.get(experiment, [])]))


def test_method_schema_is_typed_and_specific():
    cfg = compose(["method=lora", "method.r=4"])
    assert cfg.method.r == 4 and cfg.method.name == "lora"
    with pytest.raises(Exception, match="r"):
        compose(["method=head_only", "method.r=4"])  # head_only has no rank
    with pytest.raises(Exception, match="method.r=four"):
        compose(["method=lora", "method.r=four"])


def test_sweep_points_are_the_jobs_hydra_runs():
    points = job_overrides(["method=head_only,full_ft", "seed=0,1,2", "model=tiny_xlmr"], "config", multirun=True)
    assert points[0] == ["method=head_only", "seed=0", "model=tiny_xlmr"]
    assert ["method=full_ft", "seed=2", "model=tiny_xlmr"] in points and len(points) == 6
    # the preset's sweeps (4 methods x 3 source sets x 10 seeds) with the command line's seeds instead
    table1 = job_overrides(["experiment=xpe_table1", "seed=0,1"], "config", multirun=True)
    assert len(table1) == 4 * 3 * 2 and ["method=xpe", "languages=seen", "seed=1", "experiment=xpe_table1"] in table1
    assert job_overrides(["seed=1", "hydra.run.dir=x"], "config", multirun=False) == [["seed=1"]]


def test_run_id_ignores_paths_and_logging_but_not_seed():
    a = compose(["seed=1", "paths.output_root=/a", "logger=none", "benchmark.data_dir=/x"])
    b = compose(["seed=1", "paths.output_root=/b", "logger=default"])
    c = compose(["seed=2"])
    assert run_id(a) == run_id(b) != run_id(c)
    assert run_id(a).startswith("head_only-xlmr_base-enarzho-s1-")


@pytest.mark.parametrize("args,expected", [
    (["method=head_onyl"], ["unknown option method=head_onyl", "head_only", "lora", "Did you mean method=head_only"]),
    (["trainer.max_step=5"], ["trainer.max_step", "max_steps", "Did you mean trainer.max_steps"]),
    (["method=lora", "method.rank=4"], ["method.rank", "Valid keys of method", "alpha"]),
    (["trainer.max_steps=many"], ["max_steps", "many"]),
    (["languages.source=[eng_Latn,xxx_Latn]"], ["languages.source", "xxx_Latn", "enarzho"]),
    (["languages.groups=[sen]"], ["languages.groups", "sen", "seen"]),
    (["-m", "method=head_only,ful_ft", "seed=0,1"], ["sweep point", "ful_ft", "full_ft"]),
    (["model=tiny_llama"], ["runs on encoder models", "encoder"]),
])
def test_bad_config_fails_at_startup_with_choices(args, expected, tmp_path):
    result = run_cli([*args, f"paths.output_root={tmp_path}"], timeout=120)
    assert result.returncode == 2, result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    assert not list(tmp_path.rglob("results.json")), "nothing may run after a config error"


@pytest.mark.parametrize("overrides,expected", [
    (["method=spt", "method.prompt_position=afer_cls"], "method.prompt_position='afer_cls'"),
    (["method=dual", "method.xpe_ratio=1.5"], "method.xpe_ratio=1.5"),
    (["method=spt", "method.init=vocabulary"], "method.init='vocabulary'"),
    (["method=head_only", "method.pool=first_virtual"], "method.pool='first_virtual'"),
    (["regime.stages=[fit,tset]"], "tset"),
    (["trainer.monitor=val/exact_match"], "val/accuracy, val/loss"),
])
def test_component_checks_run_in_the_preflight_before_any_model_loads(overrides, expected):
    """What a method or stage accepts is checked by ``validate`` on the composed config (every
    sweep point), not first in a constructor after the model has loaded."""
    with pytest.raises(config.ConfigError) as err:
        validate(compose(overrides))
    assert expected in str(err.value), str(err.value)
