"""SPT, XPE and DUAL on tiny random encoders: wiring, caching, saving, budget, frozen backbone."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from conftest import SIB_LABELS, find_records, run_cli, tiny_run_args
from xlt_runner.composition import compose
from xlt_runner.config import ConfigError, OptimConfig
from xlt_runner.methods import METHODS, ClassificationTask
from xlt_runner.methods.soft_prompt import (FINAL_PROMPT_KEY, CrossPromptEncoder, DualConfig, DualPrompt,
                                            SoftPromptTuning, SptConfig, XpeConfig, usable_positions,
                                            xpe_token_count)
from xlt_runner.models import Backbone, build_tiny_model
from xlt_runner.models.tiny import build_tiny_tokenizer

TASK = ClassificationTask(labels=SIB_LABELS, eval_languages=["eng_Latn", "fra_Latn"], source_languages=["eng_Latn"])
TEXTS = ["hello world", "a much longer sentence with several more words in it", "Deutschland", "中国 日本"]


def tiny_backbone(kind: str = "xlmr") -> Backbone:
    model, tokenizer = build_tiny_model(kind)
    return Backbone(model=model, tokenizer=tokenizer, kind="encoder", name=f"tiny_{kind}", hidden_size=32,
                    source=f"tiny:{kind}")


def make(method_cls, cfg, kind: str = "xlmr", seed: int = 0, total_steps: int = 10):
    torch.manual_seed(seed)
    return method_cls(cfg, tiny_backbone(kind), TASK, total_steps)


def tokenizer_of(kind: str):
    return build_tiny_tokenizer(kind)


def encode_texts(kind: str, texts=TEXTS, labels=None) -> dict[str, torch.Tensor]:
    enc = tokenizer_of(kind)(texts, padding=True, return_tensors="pt")
    n = len(texts)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor(labels if labels is not None else [i % 7 for i in range(n)]),
            "lang": torch.zeros(n, dtype=torch.long)}


ALL = [(SoftPromptTuning, SptConfig), (CrossPromptEncoder, XpeConfig), (DualPrompt, DualConfig)]


# -------------------------------------------------------------------------- structure
def test_methods_are_registered_once_and_presets_name_their_family():
    assert METHODS.get("spt") is SoftPromptTuning and METHODS.get("xpe") is CrossPromptEncoder
    assert METHODS.get("dual") is DualPrompt and SoftPromptTuning.name == "spt"
    assert "dual_xpe30" not in METHODS.names()  # a preset is not a method
    for preset in ("dual_xpe30", "dual_xpe70"):
        cfg = compose([f"method={preset}"])
        assert (cfg.method.name, cfg.method.family) == (preset, "dual")


@pytest.mark.parametrize("ratio,expected", [(0.3, 6), (0.7, 14), (0.0, 1), (0.999, 19), (0.5, 10)])
def test_dual_split_formula(ratio, expected):
    assert xpe_token_count(20, ratio) == expected


def test_dual_puts_spt_tokens_first_then_xpe():
    method = make(DualPrompt, DualConfig(prompt_length=20, xpe_ratio=0.3))
    prompt = method.prompt
    assert prompt.spt.shape == (14, 32) and prompt.pseudo.shape == (6, 32)
    method.eval()
    with torch.no_grad():
        matrix = prompt()
        assert torch.equal(matrix[:14], prompt.spt)
        assert torch.allclose(matrix[14:], prompt.encoder(prompt.pseudo))
    with pytest.raises(ConfigError, match="xpe_ratio"):
        make(DualPrompt, DualConfig(prompt_length=20, xpe_ratio=1.0))


def test_xpe_encoder_default_architecture_and_target_phase():
    mlp = make(CrossPromptEncoder, XpeConfig()).prompt.encoder.mlp
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [(m.in_features, m.out_features) for m in mlp if isinstance(m, torch.nn.Linear)] == [(32, 256), (256, 256), (256, 32)]
    assert all(m.p == 0.1 for m in mlp if isinstance(m, torch.nn.Dropout))
    target = make(CrossPromptEncoder, XpeConfig(target_phase=True)).prompt.encoder.mlp
    assert all(m.p == 0.0 for m in target if isinstance(m, torch.nn.Dropout))
    custom = make(CrossPromptEncoder, XpeConfig(encoder_hidden_size=16, encoder_num_layers=2,
                                                encoder_activation="gelu")).prompt.encoder.mlp
    assert [type(m).__name__ for m in custom] == ["Linear", "GELU", "Dropout", "Linear"]
    with pytest.raises(ConfigError, match="relu"):
        make(CrossPromptEncoder, XpeConfig(encoder_activation="swishy"))


def test_spt_initialisations():
    method = make(SoftPromptTuning, SptConfig(prompt_length=5, init="vocab"))
    weight = method.word_embeddings.weight
    for row in method.prompt.spt:
        assert (weight == row).all(dim=1).any()
    tokenizer = tokenizer_of("xlmr")
    ids = tokenizer("Deutschland", add_special_tokens=False)["input_ids"]
    method = make(SoftPromptTuning, SptConfig(prompt_length=len(ids) + 2, init="text", init_text="Deutschland"))
    expected = weight[torch.tensor([ids[i % len(ids)] for i in range(len(ids) + 2)])]
    assert torch.equal(method.prompt.spt, expected)
    random_rows = make(SoftPromptTuning, SptConfig(prompt_length=50, init_std=0.5)).prompt.spt
    assert 0.4 < random_rows.std().item() < 0.6
    with pytest.raises(ConfigError, match="init_text"):
        make(SoftPromptTuning, SptConfig(init="text"))
    with pytest.raises(ConfigError, match="random"):
        make(SoftPromptTuning, SptConfig(init="zeros"))


# ---------------------------------------------------------------------------- wiring
def test_text_initialised_prompt_equals_the_same_hard_tokens():
    """``<s> P text </s>`` with P = embeddings of some tokens is exactly the backbone on
    ``<s> tokens text </s>``: positions, mask and token types are wired like real tokens."""
    for kind in ("xlmr", "bert"):
        tokenizer = tokenizer_of(kind)
        words = tokenizer("Frankreich", add_special_tokens=False)["input_ids"]
        method = make(SoftPromptTuning, SptConfig(prompt_length=len(words), init="text", init_text="Frankreich"),
                      kind=kind).eval()
        batch = encode_texts(kind, ["hello world"])
        ids = batch["input_ids"][0].tolist()
        hard = torch.tensor([[ids[0], *words, *ids[1:]]])
        with torch.no_grad():
            expected = method.backbone(input_ids=hard, attention_mask=torch.ones_like(hard)).last_hidden_state[:, 0]
            assert torch.allclose(method.encode(batch), expected, atol=1e-5)


@pytest.mark.parametrize("position", ["after_cls", "before_cls"])
@pytest.mark.parametrize("pool", ["cls", "first_virtual", "mean"])
@pytest.mark.parametrize("kind", ["xlmr", "bert"])
def test_padding_does_not_change_a_sequence_representation(kind, position, pool):
    method = make(DualPrompt, DualConfig(prompt_length=6, xpe_ratio=0.5, prompt_position=position, pool=pool),
                  kind=kind).eval()
    with torch.no_grad():
        together = method.encode(encode_texts(kind, TEXTS))
        for i, text in enumerate(TEXTS):
            alone = method.encode(encode_texts(kind, [text]))
            assert torch.allclose(together[i], alone[0], atol=1e-5), (i, text)


def test_pool_positions():
    method = make(SoftPromptTuning, SptConfig(prompt_length=3, prompt_position="before_cls", pool="first_virtual")).eval()
    batch = encode_texts("xlmr", ["hello world"])
    seen = {}
    method.backbone.register_forward_hook(lambda m, a, kw, out: seen.update(h=out.last_hidden_state), with_kwargs=True)
    with torch.no_grad():
        pooled = method.encode(batch)
        assert torch.equal(pooled, seen["h"][:, 0])
        method.pooling = "cls"
        assert torch.equal(method.encode(batch), seen["h"][:, 3])  # <s> comes after the 3 prompt tokens
        method.pooling = "mean"
        n = int(batch["attention_mask"].sum())
        assert torch.allclose(method.encode(batch), seen["h"][:, 3:3 + n].mean(1), atol=1e-6)


def test_usable_positions_from_config():
    from transformers import XLMRobertaConfig, XLMRobertaModel
    assert usable_positions(tiny_backbone("xlmr").model) == 128  # 130 - (pad id 1 + 1)
    assert usable_positions(tiny_backbone("bert").model) == 128
    with torch.device("meta"):
        large = XLMRobertaModel(XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                                                 num_attention_heads=16, intermediate_size=4096,
                                                 max_position_embeddings=514, type_vocab_size=1, pad_token_id=1))
    assert usable_positions(large) == 512


def test_text_is_truncated_never_the_prompt():
    method = make(CrossPromptEncoder, XpeConfig(prompt_length=10)).eval()
    tokenizer = tokenizer_of("xlmr")
    long_text = " ".join(f"Wort{i}" for i in range(400))
    batch = encode_texts("xlmr", [long_text, "short"])
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, :200], batch["attention_mask"][:, :200]
    batch["input_ids"][0, 199] = tokenizer.eos_token_id  # a 200-token row ending in </s>
    ids, mask = method.fit_text(batch["input_ids"], batch["attention_mask"])
    assert ids.shape[1] == 128 - 10
    assert ids[0, -1] == tokenizer.eos_token_id and torch.equal(ids[0, :-1], batch["input_ids"][0, :117])
    assert torch.equal(ids[1], batch["input_ids"][1, :118]) and mask[1].sum() == batch["attention_mask"][1].sum()
    seen = {}
    method.backbone.register_forward_hook(lambda m, a, kw, out: seen.update(n=kw["inputs_embeds"].shape[1]),
                                          with_kwargs=True)
    with torch.no_grad():
        logits = method(batch)
    assert seen["n"] == 128 and torch.isfinite(logits).all()
    with pytest.raises(ConfigError, match="prompt_length"):
        make(SoftPromptTuning, SptConfig(prompt_length=127))


# ------------------------------------------------------------------------ optimiser
@pytest.mark.parametrize("pseudo_prompt_lr", [5e-3, None])
def test_parameter_groups_follow_the_paper(pseudo_prompt_lr):
    """SPT rows at prompt_lr; the pseudo prompt at pseudo_prompt_lr (the authors' code) or, when
    null, with the encoder and head at optim.lr and optim.weight_decay (the paper text's reading)."""
    optim = OptimConfig(name="adafactor", lr=5e-5, weight_decay=0.1)
    method = make(DualPrompt, DualConfig(prompt_length=8, xpe_ratio=0.5, optim=optim, prompt_lr=5e-3,
                                         pseudo_prompt_lr=pseudo_prompt_lr))
    groups = method.parameter_groups()
    assert groups[0]["params"] == [method.prompt.spt] and groups[0]["lr"] == 5e-3 and groups[0]["weight_decay"] == 0.0
    own = pseudo_prompt_lr is not None
    if own:
        assert groups[1] == {"params": [method.prompt.pseudo], "lr": 5e-3, "weight_decay": 0.0}
    rest_groups = groups[1 + own:]
    rest = {id(p): g for g in rest_groups for p in g["params"]}
    assert all("lr" not in g for g in rest_groups)  # optim.lr = 5e-5
    assert (id(method.prompt.pseudo) in rest) is not own
    if not own:
        assert rest[id(method.prompt.pseudo)]["weight_decay"] == 0.1
    assert rest[id(method.head.dense.weight)]["weight_decay"] == 0.1
    assert rest[id(method.prompt.encoder.mlp[0].weight)]["weight_decay"] == 0.1
    assert rest[id(method.head.dense.bias)]["weight_decay"] == 0.0
    trainable = [p for p in method.parameters() if p.requires_grad]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    optimizer = method.configure_optimizers()["optimizer"]
    assert [g["lr"] for g in optimizer.param_groups] == [5e-3] * (1 + own) + [5e-5, 5e-5]


# -------------------------------------------------------------------------- caching
def test_cached_prompt_skips_the_encoder_and_matches_the_uncached_path():
    method = make(DualPrompt, DualConfig(prompt_length=6, xpe_ratio=0.5))
    calls = []
    method.prompt.encoder.register_forward_hook(lambda *args: calls.append(1))
    batch = encode_texts("xlmr")
    method.eval()
    uncached = method(batch).detach()  # grad enabled: the encoder runs every time
    assert len(calls) == 1
    calls.clear()
    with torch.no_grad():
        first = method(batch)
        assert len(calls) == 1  # computed once ...
        for _ in range(3):
            assert torch.allclose(method(batch), first)
        assert len(calls) == 1  # ... and never again
    assert torch.allclose(first, uncached, atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(method(batch), first) and len(calls) == 1
    # any in-place parameter change (an optimiser step, load_state_dict) invalidates the cache
    with torch.no_grad():
        method.prompt.pseudo.add_(0.5)
        changed = method(batch)
    assert len(calls) == 2 and not torch.allclose(changed, first)
    # train mode drops it; dropout is active there, so nothing is cached
    method.train()
    assert method.prompt._cache is None
    with torch.no_grad():
        method(batch)
        method(batch)
    assert len(calls) == 4


def test_evaluation_in_lightning_runs_the_encoder_at_most_once():
    method = make(CrossPromptEncoder, XpeConfig(prompt_length=4))
    calls = []
    method.prompt.encoder.register_forward_hook(lambda *args: calls.append(1))
    loader = DataLoader([encode_texts("xlmr", [t]) for t in TEXTS * 3], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    trainer.test(method, dataloaders=loader, verbose=False)
    assert len(calls) == 1 and method.test_results["eng_Latn"]["n"] == 12


# ------------------------------------------------------------------- training state
def fit(method, steps: int = 3):
    batches = [encode_texts("xlmr", TEXTS, labels=[0, 1, 2, 3])] * steps
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(method, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.parametrize("method_cls,cfg_cls", ALL)
def test_backbone_stays_frozen_and_bitwise_unchanged(method_cls, cfg_cls):
    optim = OptimConfig(name="adafactor", lr=1e-2, weight_decay=0.1, schedule="cosine_restarts", num_cycles=2,
                        warmup_steps=1)
    method = make(method_cls, cfg_cls(prompt_length=6, optim=optim))
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    prompt_before = copy.deepcopy(method.prompt.state_dict())
    trainer = fit(method)
    assert trainer.global_step == 3
    assert not method.backbone.training
    state = trainer.optimizers[0].state
    for name, p in method.backbone.named_parameters():
        assert p.grad is None and not p.requires_grad and p not in state, name
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, prompt_before[k]) for k, v in method.prompt.state_dict().items())
    assert all(p in state for p in method.prompt.parameters())


# -------------------------------------------------------------------- save and load
@pytest.mark.parametrize("method_cls,cfg_cls", [(CrossPromptEncoder, XpeConfig), (DualPrompt, DualConfig)])
def test_saved_prompt_loads_into_a_fresh_backbone(tmp_path, method_cls, cfg_cls):
    from safetensors.torch import load_file
    cfg = cfg_cls(prompt_length=6, optim=OptimConfig(lr=1e-2))
    method = make(method_cls, cfg, seed=1)
    fit(method, steps=2)
    path = str(tmp_path / "w.safetensors")
    method.save_trainable(path)
    saved = load_file(path)
    assert FINAL_PROMPT_KEY in saved and saved[FINAL_PROMPT_KEY].shape == (6, 32)
    assert "prompt.pseudo" in saved and "prompt.encoder.mlp.0.weight" in saved and "head.out_proj.weight" in saved
    assert ("prompt.spt" in saved) == (method_cls is DualPrompt)
    assert not any(k.startswith("backbone.") for k in saved)
    method.eval()
    assert torch.allclose(saved[FINAL_PROMPT_KEY], method.final_prompt())

    fresh = make(method_cls, cfg, seed=2).eval()  # new backbone object, other prompt/head init
    batch = encode_texts("xlmr")
    with torch.no_grad():
        assert not torch.allclose(fresh(batch), method(batch))
        fresh.load_trainable(path)
        assert torch.allclose(fresh(batch), method(batch), atol=1e-6)

    other = make(method_cls, cfg_cls(prompt_length=6, encoder_hidden_size=64))
    with pytest.raises(ConfigError, match="shape"):
        other.load_trainable(path)


# ------------------------------------------------------------------- parameter budget
def test_xpe_trainable_share_on_xlmr_large_is_below_0_3_percent():
    from transformers import XLMRobertaConfig, XLMRobertaModel
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    with torch.device("meta"):
        model = XLMRobertaModel(config)
    backbone = Backbone(model=model, tokenizer=tokenizer_of("xlmr"), kind="encoder", name="xlmr_large",
                        hidden_size=1024, source="meta")
    counts = CrossPromptEncoder(XpeConfig(), backbone, TASK, 10).parameter_counts()
    assert 550e6 < counts["total"] < 570e6
    assert counts["trainable"] / counts["total"] < 0.003, counts


# ------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("method", ["spt", "xpe", "dual_xpe70"])
def test_cli_run(method, synthetic_data, shared_cache, tmp_path):
    from safetensors.torch import load_file
    result = run_cli(tiny_run_args(synthetic_data, tmp_path, shared_cache, f"method={method}",
                                   "method.prompt_length=4", "method.optim.warmup_ratio=0.25"))
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = find_records(tmp_path)
    assert record["status"] == "complete" and record["method"] == method
    assert 0 < record["params"]["trainable"] < record["params"]["total"]
    run_dir = next(tmp_path.rglob("results.json")).parent
    weights = load_file(run_dir / "method_weights.safetensors")
    assert weights[FINAL_PROMPT_KEY].shape == (4, 32)
    if method == "dual_xpe70":
        assert weights["prompt.spt"].shape == (2, 32) and weights["prompt.pseudo"].shape == (2, 32)
        again = run_cli(tiny_run_args(synthetic_data, tmp_path / "again", shared_cache, f"method={method}",
                                      "method.prompt_length=4", "method.target_phase=true",
                                      f"method.init_from={run_dir / 'method_weights.safetensors'}"))
        assert again.returncode == 0, again.stderr[-3000:]
