"""Passage translation for RAG (xlt_runner.rag.translation): language codes, chunking that never
loses text, and the seq2seq and LLM translators on tiny random models."""
from __future__ import annotations

import random
import re
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.data.qa import MKQA_LANGUAGES
from xlt_runner.generation import GenerationOutput
from xlt_runner.models.tiny import build_tiny_model, build_tiny_tokenizer
from xlt_runner.rag.translation import (NLLB_CODES, LlmTranslator, Seq2seqTranslator, TranslatorConfig, assemble,
                                        build_translator, language_name, nllb_code, rejoin, split_for_translation,
                                        translation_plan)

CODES = ["eng_Latn", "kor_Hang", "fin_Latn", "zho_Hans"]  # the language-code tokens the tiny m2m100 gets
XOR_TYDI = ["ar", "bn", "fi", "ja", "ko", "ru", "te"]
MGSM = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]


# ------------------------------------------------------------------------------ language codes
@pytest.mark.parametrize("lang, code", [
    ("ko", "kor_Hang"), ("fi", "fin_Latn"), ("zh", "zho_Hans"), ("ja", "jpn_Jpan"), ("ar", "arb_Arab"),
    ("en", "eng_Latn"), ("zh_cn", "zho_Hans"), ("zh_tw", "zho_Hant"), ("zh_hk", "zho_Hant"), ("zh-TW", "zho_Hant"),
    ("pt-BR", "por_Latn"), ("no", "nob_Latn"), ("nn", "nno_Latn"), ("kor", "kor_Hang"), (" KO ", "kor_Hang"),
    ("kor_Hang", "kor_Hang"), ("yue_Hant", "yue_Hant"),  # an NLLB code is its own code
])
def test_nllb_code_of_iso_benchmark_and_nllb_codes(lang, code):
    assert nllb_code(lang) == code


def test_every_benchmark_language_has_the_code_its_benchmark_table_names():
    for lang, (_, _, flores) in MKQA_LANGUAGES.items():
        assert nllb_code(lang) == flores, lang
    for lang in XOR_TYDI + MGSM:
        assert nllb_code(lang) in NLLB_CODES.values()


def test_every_table_code_is_an_nllb200_code():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES
    assert set(NLLB_CODES.values()) <= set(FAIRSEQ_LANGUAGE_CODES)


def test_overrides_come_first_by_code_as_given_then_by_iso_code():
    overrides = {"zh": "zho_Hant", "zh_cn": "zho_Hans", "xx": "xxx_Latn"}
    assert nllb_code("zh", overrides) == "zho_Hant"
    assert nllb_code("zh_sg", overrides) == "zho_Hant"  # by its ISO code zh
    assert nllb_code("zh_cn", overrides) == "zho_Hans"  # its own entry wins
    assert nllb_code("xx", overrides) == "xxx_Latn"
    assert nllb_code("ko", overrides) == "kor_Hang"
    assert nllb_code("xx", OmegaConf.create({"xx": "xxx_Latn"})) == "xxx_Latn"  # a config node works too


@pytest.mark.parametrize("lang, iso", [("xx", "xx"), ("qqq", "qqq"), ("tlh_Latn_x", "tlh_latn_x")])
def test_a_language_with_no_code_names_the_override_that_adds_one(lang, iso):
    with pytest.raises(ConfigError, match=rf"{lang!r}.*method\.translator\.language_codes\.{iso}=xxx_Xxxx"):
        nllb_code(lang)
    with pytest.raises(ConfigError, match=rf"method\.rag\.codes\.{iso}="):
        nllb_code(lang, key="method.rag.codes")


@pytest.mark.parametrize("lang, name", [
    ("ko", "Korean"), ("fi", "Finnish"), ("zh", "Chinese"), ("zh_cn", "Chinese"), ("zho_Hans", "Chinese"),
    ("zh_tw", "Traditional Chinese"), ("zho_Hant", "Traditional Chinese"), ("kor_Hang", "Korean"),
    ("en", "English"), ("pt-BR", "Portuguese"), ("xx", "xx"), ("tlh_Latn", "tlh_Latn"),
])
def test_language_names_for_prompts(lang, name):
    assert language_name(lang) == name


# ------------------------------------------------------------------------------ chunking
@pytest.fixture(scope="module")
def count_tokens():
    tokenizer = build_tiny_tokenizer("m2m100")
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _random_text(rng: random.Random) -> str:
    """Mixed Korean, Finnish, Chinese and English, with and without spaces and punctuation."""
    def word():
        kind = rng.choice("kfzez")
        if kind == "k":
            return "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 5)))
        if kind == "f":
            return "".join(rng.choice("aeiouyäöhjklmnprstv") for _ in range(rng.randint(1, 14)))
        if kind == "z":
            return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 40)))
        return rng.choice(["the", "Helsinki", "capital", "of", "Finland", "is", "a", "city", "2024", "e.g."])
    separators = [" ", " ", " ", "", ". ", "! ", "? ", "。", "，", ", ", "\n", "\n\n", "  ", "다. ", "\t", "…"]
    return "".join(word() + rng.choice(separators) for _ in range(rng.randint(0, 60)))


def test_chunks_concatenate_to_the_text_and_each_fits_the_limit(count_tokens):
    rng = random.Random(0)
    for _ in range(100):
        text = _random_text(rng)
        limit = rng.choice([4, 8, 16, 40])  # a character is at most 3 byte tokens
        chunks = split_for_translation(text, count_tokens, limit)
        assert "".join(chunks) == text
        assert all(chunk and count_tokens(chunk) <= limit for chunk in chunks)
        assert (len(chunks) == 1) == (bool(text) and count_tokens(text) <= limit)


def test_a_passage_ten_times_the_limit_splits_into_ten_chunks_or_more(count_tokens):
    limit = 16
    sentence = "Helsinki on Suomen pääkaupunki ja suurin kaupunki. "
    english = sentence * (10 * limit // count_tokens(sentence) + 2)
    chinese = "北京是中华人民共和国的首都也是全国政治文化中心" * 12  # no spaces, no punctuation: characters
    for text in (english, chinese):
        assert count_tokens(text) >= 10 * limit
        chunks = split_for_translation(text, count_tokens, limit)
        assert len(chunks) >= 10 and "".join(chunks) == text
        assert max(count_tokens(c) for c in chunks) <= limit


def test_sentence_ends_come_before_words(count_tokens):
    first, second = "Seoul is the capital of Korea. ", "Helsinki is the capital of Finland."
    limit = max(count_tokens(first), count_tokens(second))
    assert count_tokens(first + second) > limit
    assert split_for_translation(first + second, count_tokens, limit) == [first, second]
    korean = "서울은 한국의 수도입니다. 헬싱키는 핀란드의 수도입니다."
    chunks = split_for_translation(korean, count_tokens, count_tokens(korean) - 1)
    assert chunks == ["서울은 한국의 수도입니다. ", "헬싱키는 핀란드의 수도입니다."]


def test_empty_text_and_impossible_limits(count_tokens):
    assert split_for_translation("", count_tokens, 8) == []
    with pytest.raises(ValueError, match="at least 1"):
        split_for_translation("abc", count_tokens, 0)
    with pytest.raises(ValueError, match="character"):
        split_for_translation("한국", count_tokens, 1)  # a Hangul syllable is 3 byte tokens


def test_rejoin_spacing_depends_on_the_target_language():
    chunks = ["서울은 수도입니다. ", "\n헬싱키도 ", "", "  "]
    assert rejoin(chunks, "ko") == "서울은 수도입니다. 헬싱키도"
    assert rejoin(["北京是首都。", " 上海很大。"], "zh") == "北京是首都。上海很大。"
    for lang in ("zh_tw", "zho_Hant", "ja", "jpn_Jpan", "th"):
        assert rejoin(["a ", "b"], lang) == "ab"
    assert rejoin([], "en") == ""


def test_plan_and_assemble_give_back_the_texts_for_an_identity_translation(count_tokens):
    limit = 20  # over every word's count: chunks end at sentence ends and spaces
    texts = [
        "Seoul is the capital of Korea. It has ten million people. The Han river runs through it.",
        "",
        "Lyhyt.",
        "서울은 한국의 수도입니다. 인구는 천만 명입니다. 한강이 서울을 가로질러 흐릅니다.",
        "北京是中国的首都。上海是最大的城市。广州在南方。深圳很年轻。",
    ]
    chunks, owners = translation_plan(texts, count_tokens, limit)
    assert len(chunks) > len(texts) and owners == sorted(owners) and set(owners) == {0, 2, 3, 4}
    assert ["".join(c for c, o in zip(chunks, owners) if o == i) for i in range(len(texts))] == texts
    # The rule: rejoin strips each chunk and joins with one space (nothing for zh/ja/th...), so an
    # identity translation gives the text back exactly when its whitespace is single spaces at chunk
    # boundaries (spaced targets), or when it has no whitespace at all (unspaced targets).
    spaced = assemble(owners, chunks, len(texts), "en")
    assert spaced[:4] == texts[:4]
    assert spaced[4] != texts[4] and spaced[4].replace(" ", "") == texts[4]
    unspaced = assemble(owners, chunks, len(texts), "zh")
    assert unspaced[4] == texts[4] and unspaced[1:3] == texts[1:3]
    assert unspaced[0] != texts[0] and unspaced[0] == "".join(c.strip() for c, o in zip(chunks, owners) if o == 0)
    per_text = assemble(owners, chunks, len(texts), ["zh", "en", "en", "ko", "ja"])  # one target per text
    assert per_text == unspaced[:1] + spaced[1:4] + unspaced[4:]
    with pytest.raises(ValueError, match="4 target languages for 5 texts"):
        assemble(owners, chunks, len(texts), ["en"] * 4)
    with pytest.raises(ValueError, match="chunk translations"):
        assemble(owners, chunks[:-1], len(texts), "en")
    with pytest.raises(ValueError, match="owner"):
        assemble([0, 5], ["a", "b"], 5, "en")


# ------------------------------------------------------------------------------ seq2seq translator
def _seq2seq_config(**overrides) -> TranslatorConfig:
    model = ModelConfig(name="tiny_m2m100", kind="seq2seq", tiny="m2m100", max_length=64)
    settings = dict(max_input_tokens=32, max_new_tokens_ratio=0.5, max_new_tokens_extra=4, batch_size=8)
    return TranslatorConfig(model=model, **(settings | overrides))


@pytest.fixture(scope="module")
def tiny_m2m100():
    """The tiny m2m100 with NLLB language codes added as special tokens (its own tokenizer has none)."""
    model, tokenizer = build_tiny_model("m2m100")
    tokenizer.add_tokens(CODES, special_tokens=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model, tokenizer


# different lengths (so budgets differ and rows are regenerated) and sources, two targets
ITEMS = [("Seoul is the capital of Korea.", "eng_Latn", "kor_Hang"),
         ("헬싱키는 수도.", "kor_Hang", "eng_Latn"),
         ("Suomi", "fin_Latn", "kor_Hang"),
         ("北京是首都。", "zho_Hans", "fin_Latn"),
         ("   ", "eng_Latn", "kor_Hang"),
         ("Han river runs through Seoul, the capital.", "eng_Latn", "kor_Hang")]


def _record_generate(monkeypatch, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record (input_ids, output sequences) of every ``model.generate`` call."""
    calls, generate = [], model.generate

    def recording(**kwargs):
        sequences = generate(**kwargs)
        calls.append((kwargs["input_ids"], sequences))
        return sequences
    monkeypatch.setattr(model, "generate", recording)
    return calls


def test_seq2seq_batch_equals_one_at_a_time_in_input_order(tiny_m2m100, monkeypatch):
    model, tokenizer = tiny_m2m100
    translator = Seq2seqTranslator(model, tokenizer, _seq2seq_config())
    calls = _record_generate(monkeypatch, model)
    batched = translator.translate_batch(ITEMS)
    assert len(calls) > 3, "rows past their own budget (3 targets: 3 batches) must be regenerated"
    assert batched == [translator.translate_batch([item])[0] for item in ITEMS]
    assert batched[4] == "" and all(batched[:4]) and len(set(batched)) > 1


def test_seq2seq_forces_the_target_code_and_opens_each_input_with_its_source_code(tiny_m2m100, monkeypatch):
    model, tokenizer = tiny_m2m100
    calls = _record_generate(monkeypatch, model)
    Seq2seqTranslator(model, tokenizer, _seq2seq_config(max_new_tokens_extra=8)).translate_batch(ITEMS)
    code_id = tokenizer.convert_tokens_to_ids
    first_call_inputs, first_call_outputs = calls[0]
    # the first batch: rows with target kor_Hang, sources eng_Latn and fin_Latn mixed
    assert first_call_inputs[:, 0].tolist() == [code_id(c) for c in ("eng_Latn", "fin_Latn", "eng_Latn")]
    assert first_call_outputs[:, 1].tolist() == [code_id("kor_Hang")] * 3
    targets = {int(sequences[0, 1]) for _, sequences in calls}
    assert targets == {code_id(c) for c in ("kor_Hang", "eng_Latn", "fin_Latn")}
    for inputs, sequences in calls:
        assert len(set(sequences[:, 1].tolist())) == 1  # one target per generate call


def test_seq2seq_unknown_code_fails_before_generating(tiny_m2m100, monkeypatch):
    model, tokenizer = tiny_m2m100
    calls = _record_generate(monkeypatch, model)
    translator = Seq2seqTranslator(model, tokenizer, _seq2seq_config())
    for bad, code in [(("text", "eng_Latn", "swh_Latn"), "swh_Latn"), (("text", "swh_Latn", "eng_Latn"), "swh_Latn"),
                      (("text", "ko", "eng_Latn"), "ko")]:
        with pytest.raises(ConfigError, match=rf"'tiny_m2m100' has no token for language code '{code}'"):
            translator.translate_batch(ITEMS[:2] + [bad])
    assert calls == []
    assert translator.language_code("ko") == "kor_Hang" and translator.language_code("zh_cn") == "zho_Hans"
    with pytest.raises(ConfigError, match="swh_Latn.*language_codes"):
        translator.language_code("sw")


def test_seq2seq_rejects_a_text_over_the_limit_and_a_limit_over_max_length(tiny_m2m100):
    model, tokenizer = tiny_m2m100
    translator = Seq2seqTranslator(model, tokenizer, _seq2seq_config(max_input_tokens=8))
    with pytest.raises(ValueError, match="max_input_tokens=8"):
        translator.translate_batch([("Seoul is the capital of Korea and its largest city.", "eng_Latn", "kor_Hang")])
    with pytest.raises(ConfigError, match="max_input_tokens=63.*max_length=64"):
        Seq2seqTranslator(model, tokenizer, _seq2seq_config(max_input_tokens=63))


@pytest.fixture(scope="module")
def nllb_style():
    """A real NllbTokenizer (source code set through ``src_lang``) on a character vocabulary, and a
    tiny m2m100 of its size."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in "▁abcdefghijklmnopqrstuvwxyzäö.,서울헬싱키北京":
        vocab.setdefault(char, len(vocab))
    tokenizer = NllbTokenizer(vocab=vocab, merges=[])
    config = M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0,
                          eos_token_id=2, decoder_start_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = M2M100ForConditionalGeneration(config).eval()
    return model, tokenizer


def test_nllb_tokenizer_source_template_with_mixed_sources(nllb_style, monkeypatch):
    model, tokenizer = nllb_style
    calls = _record_generate(monkeypatch, model)
    items = [("seoul", "kor_Hang", "eng_Latn"), ("helsinki", "fin_Latn", "eng_Latn"), ("ab", "kor_Hang", "eng_Latn")]
    translator = Seq2seqTranslator(model, tokenizer, _seq2seq_config())
    batched = translator.translate_batch(items)
    inputs = calls[0][0]
    code_id = tokenizer.convert_tokens_to_ids
    assert inputs[:, 0].tolist() == [code_id("kor_Hang"), code_id("fin_Latn"), code_id("kor_Hang")]
    assert inputs[2, :5].tolist() == [code_id(t) for t in ("kor_Hang", "▁", "a", "b", "</s>")]
    assert tokenizer.src_lang == "eng_Latn"  # restored
    assert batched == [translator.translate_batch([item])[0] for item in items]
    with pytest.raises(ConfigError, match="xxx_Yyyy"):
        translator.translate_batch([("ab", "xxx_Yyyy", "eng_Latn")])


# ------------------------------------------------------------------------------ LLM translator
def _llm_config(**overrides) -> TranslatorConfig:
    model = ModelConfig(name="tiny_llama", kind="decoder", tiny="llama", max_length=128,
                        format=overrides.pop("format", "plain"))
    settings = dict(max_input_tokens=24, max_new_tokens_ratio=0.5, max_new_tokens_extra=4, batch_size=8)
    return TranslatorConfig(model=model, **(settings | overrides))


@pytest.fixture(scope="module")
def tiny_llama():
    return build_tiny_model("llama")


LLM_ITEMS = [("Seoul is the capital of Korea.", "en", "ko"), ("헬싱키는 수도.", "kor_Hang", "fi"),
             ("Suomi", "fin_Latn", "zh_tw"), ("", "en", "fi"), ("北京是首都。", "zh", "en")]


def _record_prompts(monkeypatch, tokenizer) -> list[str]:
    import xlt_runner.generation as generation
    prompts, generate_greedy = [], generation.generate_greedy

    def recording(model, tok, input_ids, attention_mask, **kwargs):
        # (the byte-level decoder puts a space after a special token that the prompt does not have)
        prompts.extend(tokenizer.decode(row[mask.bool()]).replace("<s> ", "<s>")
                       for row, mask in zip(input_ids, attention_mask))
        return generate_greedy(model, tok, input_ids, attention_mask, **kwargs)
    monkeypatch.setattr(generation, "generate_greedy", recording)
    return prompts


def test_llm_batch_equals_one_at_a_time_and_prompts_name_the_languages(tiny_llama, monkeypatch):
    model, tokenizer = tiny_llama
    prompts = _record_prompts(monkeypatch, tokenizer)
    translator = LlmTranslator(model, tokenizer, _llm_config())
    batched = translator.translate_batch(LLM_ITEMS)
    assert batched == [translator.translate_batch([item])[0] for item in LLM_ITEMS]
    assert batched[3] == "" and all(batched[:3])
    assert prompts[0] == ("<s>Translate the following English text into Korean. Reply with the translation only."
                          "\n\nSeoul is the capital of Korea.\n\nTranslation:")  # plain: no chat template
    assert "Korean text into Finnish" in prompts[1] and "Finnish text into Traditional Chinese" in prompts[2]


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def test_llm_uses_the_chat_template_user_turn(tiny_llama, monkeypatch):
    model, _ = tiny_llama
    tokenizer = build_tiny_tokenizer("llama")
    tokenizer.chat_template = CHAT_TEMPLATE
    prompts = _record_prompts(monkeypatch, tokenizer)
    cfg = _llm_config(format="chat", prompt="{source_language} -> {target_language}: {text}")
    cfg.model.system_prompt = "Be exact."
    translator = LlmTranslator(model, tokenizer, cfg)
    batched = translator.translate_batch(LLM_ITEMS[:2])
    assert prompts[0] == ("<s>system: Be exact.</s><s>user: English -> Korean: Seoul is the capital of Korea.</s>"
                          "<s>assistant:")
    assert batched == [translator.translate_batch([item])[0] for item in LLM_ITEMS[:2]]
    assert tokenizer.eos_token_id in translator.prompt_format.stop_token_ids


def test_llm_chat_format_without_template_falls_back_to_plain(tiny_llama, monkeypatch):
    model, tokenizer = tiny_llama
    prompts = _record_prompts(monkeypatch, tokenizer)
    with pytest.warns(UserWarning, match="no chat template"):
        translator = LlmTranslator(model, tokenizer, _llm_config(format="chat"))
    translator.translate_batch(LLM_ITEMS[:1])
    assert not translator.chat and prompts[0].endswith("\n\nTranslation:")


def test_llm_removes_an_echoed_translation_label(tiny_llama, monkeypatch):
    import xlt_runner.generation as generation
    model, tokenizer = tiny_llama
    monkeypatch.setattr(generation, "generate_greedy",
                        lambda *args, **kwargs: [GenerationOutput(" Translation:  Hei maailma", 5, "eos")])
    translator = LlmTranslator(model, tokenizer, _llm_config())
    assert translator.translate_batch([("Hello world", "en", "fi")]) == ["Hei maailma"]


@pytest.mark.parametrize("overrides, message", [
    (dict(num_beams=2), "num_beams=2"),
    (dict(prompt="Translate {text} into {language}"), "not a valid template"),
    (dict(prompt="Translate into {target_language}"), "has no {text}"),
    (dict(max_input_tokens=60), "max_input_tokens=60.*model.max_length=128"),
    (dict(batch_size=0), "batch_size=0"),
])
def test_llm_config_mistakes_are_named(tiny_llama, overrides, message):
    model, tokenizer = tiny_llama
    with pytest.raises(ConfigError, match=message):
        LlmTranslator(model, tokenizer, _llm_config(**overrides))


# ------------------------------------------------------------------------------ config
def test_translator_config_is_a_structured_config_and_picks_the_translator_by_kind(tiny_llama, tiny_m2m100):
    cfg = OmegaConf.structured(TranslatorConfig)
    assert cfg.model.name == "nllb_600m" and cfg.model.kind == "seq2seq" and cfg.model.max_length == 256
    merged = OmegaConf.merge(cfg, {"language_codes": {"xx": "xxx_Latn"}, "stop_strings": ["\n\n"]})
    assert nllb_code("xx", merged.language_codes) == "xxx_Latn"
    node = OmegaConf.structured(_seq2seq_config(language_codes={"ko": "zho_Hans"}))  # as the pipeline passes it
    seq2seq = build_translator(*tiny_m2m100, node)
    assert isinstance(seq2seq, Seq2seqTranslator) and seq2seq.language_code("ko") == "zho_Hans"
    assert seq2seq.translate_batch([("Suomi", "fin_Latn", "zho_Hans")]) == \
        Seq2seqTranslator(*tiny_m2m100, _seq2seq_config()).translate_batch([("Suomi", "fin_Latn", "zho_Hans")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(build_translator(*tiny_llama, OmegaConf.structured(_llm_config())), LlmTranslator)
    encoder = _seq2seq_config()
    encoder.model.kind = "encoder"
    with pytest.raises(ConfigError, match="cannot translate"):
        build_translator(*tiny_llama, encoder)
    with pytest.raises(ConfigError, match="takes a seq2seq model"):
        Seq2seqTranslator(*tiny_llama, _llm_config())


def test_no_whitespace_is_invented_or_lost_inside_chunks(count_tokens):
    rng = random.Random(1)
    for _ in range(30):
        text = _random_text(rng)
        chunks, owners = translation_plan([text], count_tokens, 8)
        for lang in ("en", "zh"):
            joined = assemble(owners, chunks, 1, lang)[0]
            assert re.sub(r"\s+", "", joined) == re.sub(r"\s+", "", text)
