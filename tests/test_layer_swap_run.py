"""``method=layer_swap`` (issue 12, item 5): a Layer-Swapping merge of two experts' run weights into
the run's base model, then tested like any run.

Every tensor of the merged model is, bit for bit, the tensor of the source the rule names: full
experts (the paper's partitions [B] and [C], each choice of ``uncovered_from``, tied and untied),
partial experts (a tensor the expert's file lacks keeps the base's value), LoRA experts (adapters
by layer; a base-sourced adapter is zero), the reset-to-base ablation; the folder merge
(``xlt_runner.merging.layer_swap``) and the run's merge agree; experts of another base, missing
files and ambiguous globs are refused before any compute. End to end: runs of ``sft`` and ``lora``
experts merged by ``python -m xlt_runner method=layer_swap``, the record naming the experts'
paths and sha256s, ``merge.json``, the exported transformers folder and ``method_weights``.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import find_records, run_cli, small_llama
from test_generation_run import make_synthetic_qa, qa_args
from xlt_runner.composition import CONF_DIR, compose
from xlt_runner.config import ConfigError
from xlt_runner.merging import layer_swap
from xlt_runner.methods.finetune import LoraConfig, apply_lora
from xlt_runner.methods.merge import merge_adapters, merge_weights, resolve_experts
from xlt_runner.models.layers import LayerSelection

MODEL = "small"  # the model name the expert files' headers carry
DEPTH = 16
#: The layers each preset gives the language expert on a 16-layer model (the rest of the layers: math).
LANGUAGE_LAYERS = {"layer_swap_c": set(range(6)) | {14, 15}, "layer_swap_b": set(range(8)) | {12, 13, 14, 15}}
WEIGHTS = "method_weights.safetensors"


def preset(name: str) -> dict[str, list[LayerSelection]]:
    spec = yaml.safe_load((CONF_DIR / "partition" / f"{name}.yaml").read_text())
    return {part: [LayerSelection(**s) for s in selections] for part, selections in spec.items()}


def layer_of(name: str) -> int | None:
    found = re.match(r"model\.layers\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def perturbed(seed: int, tied: bool = False):
    """The base (``small_llama``, seed 0) with every parameter moved by seeded noise."""
    model = small_llama(layers=DEPTH, tied=tied)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def base_state(tied: bool = False) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in small_llama(layers=DEPTH, tied=tied).named_parameters()}


def save_expert(model, folder: Path, keep=lambda name: True, method: str = "sft", backbone: str | None = MODEL,
                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A run's ``method_weights.safetensors`` (keys ``backbone.<name>``) holding the parameters
    ``keep`` selects; returns them by parameter name."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if keep(n)}
    metadata = {"method": method, **({"backbone": backbone} if backbone else {})}
    save_file({f"backbone.{n}": (t.to(dtype) if dtype else t) for n, t in state.items()}, str(folder / WEIGHTS),
              metadata=metadata)
    return state


def experts_of(math, language, model: str = MODEL):
    spec = lambda value: None if value is None else str(value)
    return resolve_experts(SimpleNamespace(math_expert=spec(math), language_expert=spec(language)), model, digest=True)


def check_merged(model, expected_source, sources_state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Every parameter of ``model`` is bitwise the tensor of ``expected_source(name)``."""
    for name, parameter in model.named_parameters():
        expected = sources_state[expected_source(name)][name]
        assert parameter.dtype == expected.dtype and torch.equal(parameter, expected), (name, expected_source(name))


# ------------------------------------------------------------------------------ full experts
@pytest.mark.parametrize("partition", ["layer_swap_c", "layer_swap_b"])
@pytest.mark.parametrize("uncovered_from", ["math", "language", "base"])
def test_full_experts_give_each_tensor_of_their_partition_bit_for_bit(tmp_path, partition, uncovered_from):
    states = {"base": base_state(), "math": save_expert(perturbed(1), tmp_path / "math"),
              "language": save_expert(perturbed(2), tmp_path / "language")}
    experts = experts_of(tmp_path / "math" / WEIGHTS, tmp_path / "language" / WEIGHTS)
    model = small_llama(layers=DEPTH)
    sources, missing = merge_weights(model, experts, preset(partition), uncovered_from, prefix="backbone.")
    language_layers = LANGUAGE_LAYERS[partition]

    def expected(name: str) -> str:
        layer = layer_of(name)
        return uncovered_from if layer is None else "language" if layer in language_layers else "math"
    check_merged(model, expected, states)
    assert sources == {n: expected(n) for n, _ in model.named_parameters()} and missing == {}
    assert all(not torch.equal(states["math"][n], states["language"][n]) for n in states["math"])  # they differ


def test_a_tied_model_takes_its_shared_matrix_from_the_uncovered_source(tmp_path):
    states = {"base": base_state(tied=True), "math": save_expert(perturbed(1, tied=True), tmp_path / "math"),
              "language": save_expert(perturbed(2, tied=True), tmp_path / "language")}
    model = small_llama(layers=DEPTH, tied=True)
    merge_weights(model, experts_of(tmp_path / "math" / WEIGHTS, tmp_path / "language" / WEIGHTS),
                  preset("layer_swap_c"), "language")
    assert torch.equal(model.lm_head.weight, states["language"]["model.embed_tokens.weight"])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one matrix


def test_a_partial_experts_missing_tensors_keep_the_base_value(tmp_path):
    """A partial expert's file holds only what it trained; the tensors the rule gives it beyond
    those keep the base's value (and merge records them)."""
    language_keeps = lambda n: layer_of(n) in (0, 1) and ".mlp." in n or layer_of(n) == 15 and ".self_attn." in n
    math_keeps = lambda n: layer_of(n) in (6, 7, 8, 9) or n == "model.embed_tokens.weight"
    states = {"base": base_state(), "math": save_expert(perturbed(1), tmp_path / "math", math_keeps, "partial_sft"),
              "language": save_expert(perturbed(2), tmp_path / "language", language_keeps, "partial_sft")}
    model = small_llama(layers=DEPTH)
    sources, missing = merge_weights(model, experts_of(tmp_path / "math" / WEIGHTS, tmp_path / "language" / WEIGHTS),
                                     preset("layer_swap_c"), "math")

    def intended(name: str) -> str:
        layer = layer_of(name)
        return "math" if layer is None else "language" if layer in LANGUAGE_LAYERS["layer_swap_c"] else "math"

    def expected(name: str) -> str:
        return intended(name) if name in states[intended(name)] else "base"
    check_merged(model, expected, states)
    assert {s for s in sources.values()} == {"math", "language", "base"}
    assert missing["math"] == [n for n, _ in model.named_parameters()
                               if intended(n) == "math" and expected(n) == "base"]
    assert "model.norm.weight" in missing["math"] and "lm_head.weight" in missing["math"]
    assert "model.layers.0.self_attn.q_proj.weight" in missing["language"]


def test_reset_to_base_is_the_rule_with_uncovered_from_base(tmp_path):
    """The ablation: fully trained experts reset to the base outside their partitions; one expert
    alone (the other given as ``base``); and that equals merging a partial expert holding just
    its partition (the frozen-from-the-start counterpart goes through the same code)."""
    assert compose(["model=tiny_llama", "method=layer_swap_reset", "benchmark=mkqa_cbqa",
                    "languages=qa_english"]).method.uncovered_from == "base"
    states = {"base": base_state(), "math": save_expert(perturbed(1), tmp_path / "math"),
              "language": save_expert(perturbed(2), tmp_path / "language")}
    language_layers = LANGUAGE_LAYERS["layer_swap_c"]

    def partition(name: str) -> str:
        layer = layer_of(name)
        return "base" if layer is None else "language" if layer in language_layers else "math"
    both = small_llama(layers=DEPTH)
    merge_weights(both, experts_of(tmp_path / "math" / WEIGHTS, tmp_path / "language" / WEIGHTS),
                  preset("layer_swap_c"), "base")
    check_merged(both, partition, states)

    alone = small_llama(layers=DEPTH)
    sources, _ = merge_weights(alone, experts_of(tmp_path / "math" / WEIGHTS, "base"), preset("layer_swap_c"), "base")
    check_merged(alone, lambda n: "math" if partition(n) == "math" else "base", states)
    assert sorted(set(sources.values())) == ["base", "math"]

    save_expert(perturbed(1), tmp_path / "partial", lambda n: partition(n) == "math", "partial_sft")
    frozen = small_llama(layers=DEPTH)
    merge_weights(frozen, experts_of(tmp_path / "partial" / WEIGHTS, "base"), preset("layer_swap_c"), "base")
    assert all(torch.equal(p, dict(alone.named_parameters())[n]) for n, p in frozen.named_parameters())


def test_the_folder_merge_and_the_run_merge_agree(tmp_path):
    """``layer_swap`` of two transformers folders (first 6 and last 2 layers from the language
    expert) and the run's merge with partition preset [C] give the same tensors."""
    for name, seed in (("math", 1), ("language", 2)):
        model = perturbed(seed)
        model.save_pretrained(tmp_path / f"{name}_folder")
        save_expert(model, tmp_path / name)
    small_llama(layers=DEPTH).save_pretrained(tmp_path / "base_folder")
    for uncovered_from in ("math", "base"):
        layer_swap(tmp_path / "math_folder", tmp_path / "language_folder", tmp_path / "merged",
                   language_layers=LayerSelection(first=6, last=2), non_layer=uncovered_from,
                   base=tmp_path / "base_folder")
        folder = load_file(tmp_path / "merged" / "model.safetensors")
        model = small_llama(layers=DEPTH)
        merge_weights(model, experts_of(tmp_path / "math" / WEIGHTS, tmp_path / "language" / WEIGHTS),
                      preset("layer_swap_c"), uncovered_from)
        state = dict(model.named_parameters())
        assert folder.keys() == state.keys()
        assert all(torch.equal(folder[n], state[n]) for n in folder), uncovered_from


# ------------------------------------------------------------------------------ LoRA experts
def lora_expert(folder: Path, seed: int, r: int = 4, alpha: int = 8,
                drop=lambda name: False) -> dict[str, torch.Tensor]:
    """A LoRA run's weights (random adapters on q_proj/v_proj) with its results.json (the settings)."""
    wrapped = apply_lora(small_llama(layers=DEPTH), LoraConfig(r=r, alpha=alpha, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(p.shape, generator=generator) for n, p in wrapped.named_parameters()
             if ".lora_" in n and not drop(n)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"backbone.{n}": t for n, t in state.items()}, str(folder / WEIGHTS),
              metadata={"method": "lora", "backbone": MODEL})
    (folder / "results.json").write_text(json.dumps({"status": "complete", "config": {"method": {
        "name": "lora", "family": "lora", "r": r, "alpha": alpha, "dropout": 0.0, "target_modules": None}}}))
    return state


def test_lora_experts_merge_adapters_by_layer(tmp_path):
    """Adapters of the weights in the language partition from the language expert, the others
    from the math expert; an adapter the expert's file lacks is zero; the base weights untouched."""
    math = lora_expert(tmp_path / "math", 1)
    language = lora_expert(tmp_path / "language", 2, drop=lambda n: ".layers.1.self_attn.v_proj.lora_B" in n)
    experts = experts_of(tmp_path / "math" / WEIGHTS, tmp_path / "language" / WEIGHTS)
    assert experts["math"].lora == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
    base = base_state()
    wrapped, sources, missing = merge_adapters(small_llama(layers=DEPTH), experts, preset("layer_swap_c"), "math",
                                               experts["math"].lora)
    adapters = {n: p for n, p in wrapped.named_parameters() if ".lora_" in n}
    assert adapters.keys() == math.keys() and len(adapters) == 4 * DEPTH
    for name, tensor in adapters.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        if layer in LANGUAGE_LAYERS["layer_swap_c"]:
            expected = language.get(name, torch.zeros_like(tensor))
        else:
            expected = math[name]
        assert torch.equal(tensor, expected), name
        assert sources[name] == ("base" if name not in language and layer in LANGUAGE_LAYERS["layer_swap_c"]
                                 else "language" if layer in LANGUAGE_LAYERS["layer_swap_c"] else "math")
    assert missing == {"language": [n for n in adapters if ".layers.1.self_attn.v_proj.lora_B" in n]}
    plain = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in wrapped.named_parameters()
             if ".lora_" not in n}
    assert plain.keys() == base.keys() and all(torch.equal(plain[n], base[n]) for n in base)


def test_lora_base_expert_gives_zero_adapters(tmp_path):
    lora_expert(tmp_path / "language", 2)
    experts = experts_of("base", tmp_path / "language" / WEIGHTS)
    wrapped, sources, _ = merge_adapters(small_llama(layers=DEPTH), experts, preset("layer_swap_c"), "base",
                                         experts["language"].lora)
    for name, tensor in wrapped.named_parameters():
        if ".lora_" in name and int(name.split(".layers.")[1].split(".")[0]) not in LANGUAGE_LAYERS["layer_swap_c"]:
            assert sources[name] == "base" and not tensor.any()


# ------------------------------------------------------------------------------ refusals
def _expert_files(tmp_path: Path) -> dict[str, Path]:
    save_expert(perturbed(1), tmp_path / "math")
    save_expert(perturbed(2), tmp_path / "language")
    save_expert(perturbed(2), tmp_path / "other", backbone="other_model")
    save_expert(perturbed(2), tmp_path / "anonymous", backbone=None)
    save_expert(perturbed(2), tmp_path / "empty", keep=lambda n: False, method="prompting")
    lora_expert(tmp_path / "lora", 1)
    lora_expert(tmp_path / "lora_r8", 2, r=8)
    lora_expert(tmp_path / "lora_norecord", 3)
    (tmp_path / "lora_norecord" / "results.json").unlink()
    return {"math": tmp_path / "math" / WEIGHTS}


@pytest.mark.parametrize("math,language,message", [
    ("{t}/other/" + WEIGHTS, "{t}/language/" + WEIGHTS, "method.math_expert=.* was trained from model 'other_model', "
                                                        "but this run's base is model=small"),
    ("{t}/math/" + WEIGHTS, "{t}/nowhere/" + WEIGHTS, "method.language_expert=.*: no such file"),
    ("{t}/*/" + WEIGHTS, "{t}/language/" + WEIGHTS,
     r"method.math_expert=.* matches \d+ files: .*it must match exactly one"),
    ("{t}/none-*/" + WEIGHTS, "{t}/language/" + WEIGHTS, "matches 0 files"),
    ("{t}/math", "{t}/language/" + WEIGHTS, "is a directory"),
    ("{t}/anonymous/" + WEIGHTS, "{t}/language/" + WEIGHTS, "does not say which model it was trained from"),
    ("{t}/empty/" + WEIGHTS, "{t}/language/" + WEIGHTS, "holds no tensors"),
    ("{t}/lora/" + WEIGHTS, "{t}/language/" + WEIGHTS, "not one of each"),
    ("{t}/lora/" + WEIGHTS, "{t}/lora_r8/" + WEIGHTS, "the LoRA experts differ in r"),
    ("{t}/lora_norecord/" + WEIGHTS, "{t}/lora/" + WEIGHTS, "results.json"),
    ("base", "base", "use method=prompting"),
    (None, "base", "method.math_expert is not set"),
])
def test_bad_experts_are_refused_naming_the_key(tmp_path, math, language, message):
    _expert_files(tmp_path)
    fill = lambda spec: spec if spec is None else spec.format(t=tmp_path)
    with pytest.raises(ConfigError, match=message):
        experts_of(fill(math), fill(language))


UP = "backbone.model.layers.3.mlp.up_proj.weight"


@pytest.mark.parametrize("change,message", [
    (lambda s: {**s, "backbone.model.norm.weight": torch.ones(3)}, r"model.norm.weight has shape \[3\], the base's"),
    (lambda s: {**s, UP: s[UP].half()},
     "is F16, the base's .* torch.float32: set model.dtype"),
    (lambda s: {**s, "backbone.model.extra.weight": torch.ones(3)}, "holds tensors the base .* lacks"),
])
def test_tensors_of_another_base_are_refused_before_anything_is_copied(tmp_path, change, message):
    save_expert(perturbed(1), tmp_path / "math")
    save_expert(perturbed(2), tmp_path / "language")
    path = tmp_path / "language" / WEIGHTS
    save_file(change(load_file(path)), str(path), metadata={"method": "sft", "backbone": MODEL})
    model = small_llama(layers=DEPTH)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match=message):
        merge_weights(model, experts_of(tmp_path / "math" / WEIGHTS, path), preset("layer_swap_c"), "math")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("overrides,message", [
    (["method.uncovered_from=average"], "method.uncovered_from='average'"),
    (["method.init_from=x.safetensors"], "method.init_from=x.safetensors: method=layer_swap builds its model"),
    (["method.partitions={language:[{layers:[3,1]}]}"], r"method.partitions.language\[0\].layers=\[3, 1\] is empty"),
    (["method.math_expert=base", "method.language_expert=base"], "use method=prompting"),
])
def test_bad_merge_settings_fail_validation(overrides, message):
    from xlt_runner.validation import validate
    cfg = compose(["model=tiny_llama", "method=layer_swap", "benchmark=mkqa_cbqa", "languages=qa_english", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


# ------------------------------------------------------------------------------ runs end to end
TINY_PARTITIONS = "method.partitions={language:[{first:1}],math:[{last:1}]}"  # tiny_llama has 2 layers


@pytest.fixture(scope="module")
def qa(tmp_path_factory) -> Path:
    return make_synthetic_qa(tmp_path_factory.mktemp("qa") / "mkqa")


@pytest.fixture(scope="module")
def expert_runs(qa, tmp_path_factory, shared_cache) -> dict[str, Path]:
    """Four short runs on tiny_llama, one sweep: sft and lora, seeds 0 (math) and 1 (language)."""
    root = tmp_path_factory.mktemp("experts")
    result = run_cli(["-m", *qa_args(qa, root, shared_cache, "method=sft,lora", "seed=0,1", "method.optim.lr=1e-2",
                                     "trainer.max_steps=2", "trainer.val_check_interval=2")])
    assert result.returncode == 0, result.stderr[-3000:]
    found = lambda method, seed: next(root.rglob(f"{method}-tiny_llama-*-s{seed}-*/{WEIGHTS}"))
    return {"math": found("sft", 0), "language": found("sft", 1), "lora_math": found("lora", 0),
            "lora_language": found("lora", 1)}


def merge_run(qa, out: Path, cache: Path, *overrides: str) -> tuple[dict, Path]:
    result = run_cli(qa_args(qa, out, cache, TINY_PARTITIONS, *overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(out)
    return record, next(out.rglob("results.json")).parent


def tiny_base() -> dict[str, torch.Tensor]:
    from xlt_runner.models.tiny import build_tiny_model
    return {n: p.detach().clone() for n, p in build_tiny_model("llama")[0].named_parameters()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_merge_run_tests_the_merged_model_and_names_its_experts(qa, expert_runs, tmp_path, shared_cache):
    math_glob = expert_runs["math"].parent.parent / "sft-*-s0-*" / WEIGHTS
    record, run_dir = merge_run(qa, tmp_path / "merge", shared_cache, "method=layer_swap",
                                f"method.math_expert={math_glob}",
                                f"method.language_expert={expert_runs['language']}", "method.export_pretrained=true")
    assert record["status"] == "complete" and record["method"] == "layer_swap" and record["training"] is None
    assert record["params"]["trainable"] == 0 and sorted(record["per_language"]) == ["en", "fi", "ja"]
    merge = record["merge"]
    for role in ("math", "language"):
        assert merge["experts"][role]["path"] == str(expert_runs[role].resolve())
        assert merge["experts"][role]["sha256"] == sha256(expert_runs[role])
        assert merge["experts"][role]["method"] == "sft"
    assert merge["experts"]["math"]["spec"] == str(math_glob) and merge["uncovered_from"] == "math"
    assert merge["tensors_from"] == {"math": 12, "language": 9, "base": 0}
    assert record["outputs"]["merge"] == "merge.json"

    experts = {role: {k.removeprefix("backbone."): v for k, v in load_file(expert_runs[role]).items()}
               for role in ("math", "language")}
    expected = {n: "language" if layer_of(n) == 0 else "math" for n in tiny_base()}
    assert json.loads((run_dir / "merge.json").read_text())["sources"] == expected
    exported = load_file(run_dir / "model" / "model.safetensors")
    assert exported.keys() == expected.keys()
    for name, tensor in exported.items():
        assert torch.equal(tensor, experts[expected[name]][name]), name
    saved = load_file(run_dir / WEIGHTS)  # the tensors taken from the experts, loadable with init_from
    assert saved.keys() == {f"backbone.{n}" for n in expected}
    assert all(torch.equal(saved[f"backbone.{n}"], exported[n]) for n in exported)
    assert (run_dir / "model" / "merge.json").is_file() and (run_dir / "predictions.jsonl").is_file()
    reloaded = run_cli(qa_args(qa, tmp_path / "reloaded", shared_cache, "method=prompting",
                               f"method.init_from={run_dir / WEIGHTS}"))  # the merge, from its own weights
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    predictions = next((tmp_path / "reloaded").rglob("predictions.jsonl")).read_text(encoding="utf-8")
    assert predictions == (run_dir / "predictions.jsonl").read_text(encoding="utf-8")


def test_a_reset_run_keeps_one_experts_partition_on_the_base(qa, expert_runs, tmp_path, shared_cache):
    record, run_dir = merge_run(qa, tmp_path / "merge", shared_cache, "method=layer_swap_reset",
                                f"method.math_expert={expert_runs['math']}", "method.language_expert=base",
                                "method.export_pretrained=true")
    assert record["method"] == "layer_swap_reset" and record["merge"]["experts"]["language"] == {"spec": "base",
                                                                                                 "kind": "base"}
    assert record["merge"]["tensors_from"] == {"math": 9, "language": 0, "base": 12}
    math = {k.removeprefix("backbone."): v for k, v in load_file(expert_runs["math"]).items()}
    base = tiny_base()
    for name, tensor in load_file(run_dir / "model" / "model.safetensors").items():
        assert torch.equal(tensor, (math if layer_of(name) == 1 else base)[name]), name
    assert load_file(run_dir / WEIGHTS).keys() == {f"backbone.{n}" for n in base if layer_of(n) == 1}


def test_a_merge_run_of_lora_experts_merges_their_adapters_by_layer(qa, expert_runs, tmp_path, shared_cache):
    record, run_dir = merge_run(qa, tmp_path / "merge", shared_cache, "method=layer_swap",
                                f"method.math_expert={expert_runs['lora_math']}",
                                f"method.language_expert={expert_runs['lora_language']}")
    assert record["status"] == "complete" and record["merge"]["kind"] == "lora"
    assert record["merge"]["lora"]["r"] == 8 and record["merge"]["lora"]["alpha"] == 16
    math, language = load_file(expert_runs["lora_math"]), load_file(expert_runs["lora_language"])
    merged = load_file(run_dir / WEIGHTS)
    assert merged.keys() == math.keys() == language.keys() and len(merged) == 8  # A, B of q_proj, v_proj in 2 layers
    for key, tensor in merged.items():
        assert torch.equal(tensor, (language if ".layers.0." in key else math)[key]), key
        assert not torch.equal(math[key], language[key])  # another seed (A's initialisation), both trained


def test_bad_experts_stop_the_sweep_before_any_job(qa, expert_runs, tmp_path, shared_cache, capsys):
    """In the preflight, for every sweep point: a glob matching several files (exit 2, nothing
    run), an expert of another base, LoRA mixed with full weights, an expert not set."""
    from xlt_runner.cli import preflight
    other = tmp_path / "other" / WEIGHTS
    other.parent.mkdir()
    save_file(load_file(expert_runs["math"]), str(other), metadata={"method": "sft", "backbone": "smollm2_135m"})
    several = expert_runs["math"].parent.parent / "*" / WEIGHTS  # the four expert runs
    sweep = ["method=layer_swap,layer_swap_reset", f"method.language_expert={expert_runs['language']}"]
    out = tmp_path / "out"
    result = run_cli(["-m", *qa_args(qa, out, shared_cache, TINY_PARTITIONS, *sweep, f"method.math_expert={several}")])
    assert result.returncode == 2 and f"method.math_expert={several} matches 4 files" in result.stderr, result.stderr
    assert not out.exists() or not list(out.rglob("results.json"))
    for spec, expected in [(other, "was trained from model 'smollm2_135m', but this run's base is model=tiny_llama"),
                           (expert_runs["lora_math"], "not one of each"), ("???", "method.math_expert is not set")]:
        with pytest.raises(SystemExit) as stop:
            preflight(["-m", *qa_args(qa, out, shared_cache, TINY_PARTITIONS, *sweep, f"method.math_expert={spec}")])
        assert stop.value.code == 2 and expected in capsys.readouterr().err, spec
