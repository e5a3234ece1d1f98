"""Tiny randomly initialised models for tests and smoke runs, built fully offline.

Every model has hidden size 32, 2 layers, 2 attention heads and an intermediate
(feed-forward) size of 64; it handles sequences of up to 128 tokens. The tokenizer is a
byte-level BPE (vocabulary of 1000) trained in-process on CLDR territory and language
names of 30 locales from ``babel``. Byte-level means any script is encoded (unseen
characters become byte tokens), never ``<unk>``. Training is deterministic and takes a
fraction of a second; it is done once per process and per special-token layout.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from xlt_runner.config import ConfigError

TINY_KINDS: dict[str, str] = {"xlmr": "encoder", "bert": "encoder", "llama": "decoder", "m2m100": "seq2seq"}
"""Tiny model kind -> backbone kind (``encoder`` | ``decoder`` | ``seq2seq``)."""

HIDDEN_SIZE = 32
NUM_LAYERS = 2
NUM_HEADS = 2
INTERMEDIATE_SIZE = 64
MAX_TOKENS = 128
LLAMA_MAX_TOKENS = 2048
VOCAB_SIZE = 1000

# Fixed corpus: locales of many scripts, so frequent pieces of each script get merged.
_CORPUS_LOCALES = ("en", "de", "fr", "es", "ru", "ar", "zh_Hans", "ja", "ko", "hi", "bn", "ta", "th", "el", "he",
                   "ka", "hy", "am", "sw", "tr", "vi", "fa", "ur", "my", "km", "te", "ml", "si", "bo", "mn")

# Special tokens in id order. XLM-R layout: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4 (pad id 1 is what
# XLM-R's position-id offset assumes); BERT layout: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
_XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _corpus() -> list[str]:
    from babel import Locale

    texts: list[str] = []
    for code in _CORPUS_LOCALES:
        locale = Locale.parse(code)
        texts += [locale.territories[key] for key in sorted(locale.territories)]
        texts += [locale.languages[key] for key in sorted(locale.languages)]
    return texts


@lru_cache(maxsize=None)
def _trained_tokenizer_json(special_tokens: tuple[str, ...]) -> str:
    """The serialised ``tokenizers`` BPE model with ``special_tokens`` as ids 0..n-1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A fresh fast tokenizer with the special tokens and template of ``kind``'s family.

    xlmr / m2m100: ``<s> text </s>``; bert: ``[CLS] text [SEP]``; llama: ``<s> text``
    (pad = ``<pad>``, ``padding_side="left"`` for generation).
    """
    from tokenizers import Tokenizer, processors

    _check_kind(kind)
    specials = _BERT_SPECIALS if kind == "bert" else _XLMR_SPECIALS
    tokenizer = Tokenizer.from_str(_trained_tokenizer_json(specials))
    if kind == "bert":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    elif kind == "llama":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
        names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
        names = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                     unk_token="<unk>", mask_token="<mask>")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names,
                                      model_max_length=LLAMA_MAX_TOKENS if kind == "llama" else MAX_TOKENS)
    if kind == "llama":
        wrapped.padding_side = "left"
    return wrapped


def build_tiny_model(kind: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised ``kind`` model (weights depend only on ``seed``) and its tokenizer.

    Kinds: ``xlmr`` (XLMRobertaModel), ``bert`` (BertModel), ``llama`` (LlamaForCausalLM),
    ``m2m100`` (M2M100ForConditionalGeneration). The global torch RNG is left untouched.
    The model is returned in eval mode, like ``from_pretrained`` returns it.
    """
    from transformers import (BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, M2M100Config,
                              M2M100ForConditionalGeneration, XLMRobertaConfig, XLMRobertaModel)

    tokenizer = build_tiny_tokenizer(kind)
    vocab_size = len(tokenizer)
    common = dict(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id)
    encoder_shape = dict(hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS, num_attention_heads=NUM_HEADS,
                         intermediate_size=INTERMEDIATE_SIZE)
    if kind == "xlmr":
        # XLM-R position ids start at pad_token_id + 1, hence 2 extra positions.
        config = XLMRobertaConfig(**common, **encoder_shape, max_position_embeddings=MAX_TOKENS + 2,
                                  type_vocab_size=1, bos_token_id=0, eos_token_id=2)
        model_class = XLMRobertaModel
    elif kind == "bert":
        config = BertConfig(**common, **encoder_shape, max_position_embeddings=MAX_TOKENS, type_vocab_size=2)
        model_class = BertModel
    elif kind == "llama":
        # rotary positions have no weights: room for RAG prompts (passages, tags) costs nothing
        config = LlamaConfig(**common, **encoder_shape, num_key_value_heads=NUM_HEADS,
                             max_position_embeddings=LLAMA_MAX_TOKENS, bos_token_id=0, eos_token_id=2)
        model_class = LlamaForCausalLM
    else:
        config = M2M100Config(**common, d_model=HIDDEN_SIZE, encoder_layers=NUM_LAYERS, decoder_layers=NUM_LAYERS,
                              encoder_attention_heads=NUM_HEADS, decoder_attention_heads=NUM_HEADS,
                              encoder_ffn_dim=INTERMEDIATE_SIZE, decoder_ffn_dim=INTERMEDIATE_SIZE,
                              max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=2,
                              decoder_start_token_id=2)
        model_class = M2M100ForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval(), tokenizer


def _check_kind(kind: str) -> None:
    if kind not in TINY_KINDS:
        raise ConfigError(f"unknown tiny model {kind!r}; valid: {', '.join(TINY_KINDS)} (override model.tiny=xlmr)")
