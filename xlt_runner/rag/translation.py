"""Translation of retrieved passages into the query language: language codes, chunking, translators.

A passage may be longer than a translator takes: :func:`split_for_translation` cuts it into
chunks of at most ``max_input_tokens`` translator tokens (at sentence ends, then clause ends,
words, characters; nothing dropped: the chunks concatenate to the passage), the translator
translates the chunks, and :func:`rejoin` puts the translations back together.
:func:`translation_plan` and :func:`assemble` do this for many passages at once, so a caller can
translate the chunks of all passages in one length-sorted stream of batches.

Two translators share one interface (``count_tokens``, ``language_code``, ``translate_batch``):
:class:`Seq2seqTranslator` for NLLB-style seq2seq models (the source language code opens the
input, the target code is forced as the first generated token) and :class:`LlmTranslator` for a
decoder LLM prompted to translate. :func:`build_translator` picks one by ``model.kind``.

Language codes: :func:`nllb_code` maps ISO 639-1, benchmark (``zh_tw``, ``pt-BR``) and NLLB-200
codes to NLLB-200 codes (which are FLORES-200 and SIB-200 codes); :func:`language_name` gives the
English name an LLM prompt uses.
"""
from __future__ import annotations

import math
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.metrics.language_id import iso639_1

#: Where the translator's config lives; every error message names keys under it.
CONFIG_KEY = "method.translator"

# ISO 639-1 -> (NLLB-200 code, English name). Covers MKQA, XOR-TyDi, MGSM and the languages of
# py3langid that NLLB-200 has. Macrolanguages map to the member NLLB was trained on (ar ->
# Modern Standard Arabic, fa -> Western Persian, ms -> Standard Malay, no -> Bokmål, sw -> Swahili).
_LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("afr_Latn", "Afrikaans"), "ak": ("aka_Latn", "Akan"), "am": ("amh_Ethi", "Amharic"),
    "ar": ("arb_Arab", "Arabic"), "as": ("asm_Beng", "Assamese"), "ay": ("ayr_Latn", "Aymara"),
    "az": ("azj_Latn", "Azerbaijani"), "ba": ("bak_Cyrl", "Bashkir"), "be": ("bel_Cyrl", "Belarusian"),
    "bg": ("bul_Cyrl", "Bulgarian"), "bm": ("bam_Latn", "Bambara"), "bn": ("ben_Beng", "Bengali"),
    "bo": ("bod_Tibt", "Tibetan"), "bs": ("bos_Latn", "Bosnian"), "ca": ("cat_Latn", "Catalan"),
    "cs": ("ces_Latn", "Czech"), "cy": ("cym_Latn", "Welsh"), "da": ("dan_Latn", "Danish"),
    "de": ("deu_Latn", "German"), "dz": ("dzo_Tibt", "Dzongkha"), "ee": ("ewe_Latn", "Ewe"),
    "el": ("ell_Grek", "Greek"), "en": ("eng_Latn", "English"), "eo": ("epo_Latn", "Esperanto"),
    "es": ("spa_Latn", "Spanish"), "et": ("est_Latn", "Estonian"), "eu": ("eus_Latn", "Basque"),
    "fa": ("pes_Arab", "Persian"), "fi": ("fin_Latn", "Finnish"), "fj": ("fij_Latn", "Fijian"),
    "fo": ("fao_Latn", "Faroese"), "fr": ("fra_Latn", "French"), "ga": ("gle_Latn", "Irish"),
    "gd": ("gla_Latn", "Scottish Gaelic"), "gl": ("glg_Latn", "Galician"), "gn": ("grn_Latn", "Guarani"),
    "gu": ("guj_Gujr", "Gujarati"), "ha": ("hau_Latn", "Hausa"), "he": ("heb_Hebr", "Hebrew"),
    "hi": ("hin_Deva", "Hindi"), "hr": ("hrv_Latn", "Croatian"), "ht": ("hat_Latn", "Haitian Creole"),
    "hu": ("hun_Latn", "Hungarian"), "hy": ("hye_Armn", "Armenian"), "id": ("ind_Latn", "Indonesian"),
    "ig": ("ibo_Latn", "Igbo"), "is": ("isl_Latn", "Icelandic"), "it": ("ita_Latn", "Italian"),
    "ja": ("jpn_Jpan", "Japanese"), "jv": ("jav_Latn", "Javanese"), "ka": ("kat_Geor", "Georgian"),
    "ki": ("kik_Latn", "Kikuyu"), "kk": ("kaz_Cyrl", "Kazakh"), "km": ("khm_Khmr", "Khmer"),
    "kn": ("kan_Knda", "Kannada"), "ko": ("kor_Hang", "Korean"), "ku": ("kmr_Latn", "Kurdish"),
    "ky": ("kir_Cyrl", "Kyrgyz"), "lb": ("ltz_Latn", "Luxembourgish"), "lg": ("lug_Latn", "Ganda"),
    "li": ("lim_Latn", "Limburgish"), "ln": ("lin_Latn", "Lingala"), "lo": ("lao_Laoo", "Lao"),
    "lt": ("lit_Latn", "Lithuanian"), "lv": ("lvs_Latn", "Latvian"), "mg": ("plt_Latn", "Malagasy"),
    "mi": ("mri_Latn", "Maori"), "mk": ("mkd_Cyrl", "Macedonian"), "ml": ("mal_Mlym", "Malayalam"),
    "mn": ("khk_Cyrl", "Mongolian"), "mr": ("mar_Deva", "Marathi"), "ms": ("zsm_Latn", "Malay"),
    "mt": ("mlt_Latn", "Maltese"), "my": ("mya_Mymr", "Burmese"), "nb": ("nob_Latn", "Norwegian Bokmål"),
    "ne": ("npi_Deva", "Nepali"), "nl": ("nld_Latn", "Dutch"), "nn": ("nno_Latn", "Norwegian Nynorsk"),
    "no": ("nob_Latn", "Norwegian"), "ny": ("nya_Latn", "Chichewa"), "oc": ("oci_Latn", "Occitan"),
    "om": ("gaz_Latn", "Oromo"), "or": ("ory_Orya", "Odia"), "pa": ("pan_Guru", "Punjabi"),
    "pl": ("pol_Latn", "Polish"), "ps": ("pbt_Arab", "Pashto"), "pt": ("por_Latn", "Portuguese"),
    "qu": ("quy_Latn", "Quechua"), "rn": ("run_Latn", "Rundi"), "ro": ("ron_Latn", "Romanian"),
    "ru": ("rus_Cyrl", "Russian"), "rw": ("kin_Latn", "Kinyarwanda"), "sa": ("san_Deva", "Sanskrit"),
    "sc": ("srd_Latn", "Sardinian"), "sd": ("snd_Arab", "Sindhi"), "sg": ("sag_Latn", "Sango"),
    "si": ("sin_Sinh", "Sinhala"), "sk": ("slk_Latn", "Slovak"), "sl": ("slv_Latn", "Slovenian"),
    "sm": ("smo_Latn", "Samoan"), "sn": ("sna_Latn", "Shona"), "so": ("som_Latn", "Somali"),
    "sq": ("als_Latn", "Albanian"), "sr": ("srp_Cyrl", "Serbian"), "ss": ("ssw_Latn", "Swati"),
    "st": ("sot_Latn", "Southern Sotho"), "su": ("sun_Latn", "Sundanese"), "sv": ("swe_Latn", "Swedish"),
    "sw": ("swh_Latn", "Swahili"), "ta": ("tam_Taml", "Tamil"), "te": ("tel_Telu", "Telugu"),
    "tg": ("tgk_Cyrl", "Tajik"), "th": ("tha_Thai", "Thai"), "ti": ("tir_Ethi", "Tigrinya"),
    "tk": ("tuk_Latn", "Turkmen"), "tl": ("tgl_Latn", "Tagalog"), "tn": ("tsn_Latn", "Tswana"),
    "tr": ("tur_Latn", "Turkish"), "ts": ("tso_Latn", "Tsonga"), "tt": ("tat_Cyrl", "Tatar"),
    "tw": ("twi_Latn", "Twi"), "ug": ("uig_Arab", "Uyghur"), "uk": ("ukr_Cyrl", "Ukrainian"),
    "ur": ("urd_Arab", "Urdu"), "uz": ("uzn_Latn", "Uzbek"), "vi": ("vie_Latn", "Vietnamese"),
    "wo": ("wol_Latn", "Wolof"), "xh": ("xho_Latn", "Xhosa"), "yi": ("ydd_Hebr", "Yiddish"),
    "yo": ("yor_Latn", "Yoruba"), "zh": ("zho_Hans", "Chinese"), "zu": ("zul_Latn", "Zulu"),
}
#: ISO 639-1 -> NLLB-200 code.
NLLB_CODES: dict[str, str] = {iso: code for iso, (code, _) in _LANGUAGES.items()}
# Benchmark codes whose region or script decides the NLLB code (after lower-casing, "-" -> "_").
_REGIONAL_CODES = {"zh_cn": "zho_Hans", "zh_sg": "zho_Hans", "zh_hans": "zho_Hans", "zh_tw": "zho_Hant",
                   "zh_hk": "zho_Hant", "zh_mo": "zho_Hant", "zh_hant": "zho_Hant"}
_NLLB_NAMES = {code: name for code, name in _LANGUAGES.values()} | {
    "zho_Hant": "Traditional Chinese", "yue_Hant": "Cantonese", "nob_Latn": "Norwegian"}
_NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
#: ISO 639-1 codes of languages written without spaces between words: :func:`rejoin` joins their
#: chunks with nothing between them.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})

#: Default ``prompt`` of an LLM translator.
DEFAULT_PROMPT = ("Translate the following {source_language} text into {target_language}. "
                  "Reply with the translation only.\n\n{text}")
#: What follows the prompt for a decoder used without a chat template.
PLAIN_SUFFIX = "\n\nTranslation:"
_TRANSLATION_ECHO = re.compile(r"^\s*translation\s*:\s*", re.IGNORECASE)


def _normalized(lang: str) -> str:
    return lang.strip().replace("-", "_").lower()


def _iso(lang: str) -> str | None:
    """ISO 639-1 code of ``lang``: a two-letter code or prefix as it is (``nn`` stays Nynorsk),
    else :func:`iso639_1` of it (``kor``, ``zho_Hant``); None when unknown."""
    base = _normalized(lang).split("_", 1)[0]
    if len(base) == 2 and base.isascii() and base.isalpha():
        return base
    try:
        return iso639_1(lang.strip())
    except ValueError:
        return None


def nllb_code(lang: str, overrides: Mapping[str, str] = {},
              key: str = f"{CONFIG_KEY}.language_codes") -> str:
    """NLLB-200 code (``kor_Hang``) of ``lang``: an ISO 639-1 code (``ko``), a benchmark code
    (``zh_cn`` -> ``zho_Hans``; ``zh_tw``/``zh_hk`` -> ``zho_Hant``; ``pt-BR`` -> ``por_Latn``), an
    ISO 639-3 code (``kor``) or an NLLB code, returned as it is.

    ``overrides`` (the config at ``key``) are looked up first, by ``lang`` as given, normalized
    (lower case, ``-`` -> ``_``) and by its ISO 639-1 code. Raises :class:`ConfigError` naming
    the language and the override that adds it when no code is known."""
    iso = _iso(lang)
    for candidate in dict.fromkeys(c for c in (lang, _normalized(lang), iso) if c):
        if candidate in overrides:
            return str(overrides[candidate])
    if _NLLB_CODE.match(lang.strip()):
        return lang.strip()
    code = _REGIONAL_CODES.get(_normalized(lang)) or NLLB_CODES.get(iso or "")
    if code is None:
        name = iso or _normalized(lang)
        raise ConfigError(f"no NLLB-200 language code is known for language {lang!r}; add one with "
                          f"{key}.{name}=xxx_Xxxx (its FLORES-200 code: language, underscore, script, e.g. "
                          f"{key}.ko=kor_Hang)")
    return code


def language_name(lang: str) -> str:
    """English name of ``lang`` (ISO 639-1, benchmark or NLLB code) for LLM prompts:
    ``ko``/``kor_Hang`` -> ``Korean``; ``zh_tw``/``zho_Hant`` -> ``Traditional Chinese``;
    the code itself when the language is unknown."""
    stripped = lang.strip()
    if stripped in _NLLB_NAMES:
        return _NLLB_NAMES[stripped]
    if _REGIONAL_CODES.get(_normalized(lang)) == "zho_Hant":
        return _NLLB_NAMES["zho_Hant"]
    iso = _iso(lang)
    return _LANGUAGES[iso][1] if iso in _LANGUAGES else stripped


# ------------------------------------------------------------------------------ chunking
_CLOSERS = "\"'”’»)\\]」』"
# Boundaries after which a piece ends (the match stays with the piece before it).
_SENTENCE_END = re.compile(rf"[.!?…]+[{_CLOSERS}]*\s+|[。！？]+[{_CLOSERS}]*\s*|\n\s*")
_CLAUSE_END = re.compile(r"[,;:]\s+|[，、；：]\s*")
_WORD = re.compile(r"\s+|\S+\s*")


def _split_after(pattern: re.Pattern, text: str) -> list[str]:
    """``text`` cut after every match of ``pattern`` (pieces concatenate to ``text``)."""
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if match.end() > start:
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _characters(text: str) -> list[str]:
    """``text`` as characters, each with the combining marks and joiners that follow it."""
    pieces: list[str] = []
    for char in text:
        if pieces and (unicodedata.category(char) in ("Mn", "Mc", "Me") or char in "\u200c\u200d"):
            pieces[-1] += char
        else:
            pieces.append(char)
    return pieces


_SPLITTERS: tuple[Callable[[str], list[str]], ...] = (
    lambda text: _split_after(_SENTENCE_END, text),
    lambda text: _split_after(_CLAUSE_END, text),
    _WORD.findall,
    _characters,
)


def split_for_translation(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[str]:
    """``text`` cut into chunks of at most ``max_tokens`` tokens each (as ``count_tokens``
    counts them), such that ``"".join(chunks) == text``: nothing dropped or reordered, the
    whitespace between pieces kept inside the chunks. An empty ``text`` gives ``[]``.

    Pieces are sentences (ending at ``.``, ``!``, ``?``, ``…`` followed by whitespace, at
    ``。``, ``！``, ``？`` or at a newline); a sentence over the limit is cut into clauses (after
    ``,``, ``;``, ``:`` followed by whitespace, or ``，``, ``、``, ``；``, ``：``), a clause over it
    into words (at whitespace), a word over it (Chinese, Japanese, Thai run on without spaces)
    into characters (a character keeps its combining marks). Pieces are then packed greedily in
    order, as many per chunk as fit. Raises ValueError when ``max_tokens < 1`` or one character
    alone takes more than ``max_tokens`` tokens."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be at least 1")
    if not text:
        return []
    pieces = _pieces(text, count_tokens, max_tokens, 0)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and count_tokens(current + piece) > max_tokens:
            chunks.append(current)
            current = piece
        else:
            current += piece
    chunks.append(current)
    return chunks


def _pieces(text: str, count_tokens: Callable[[str], int], max_tokens: int, level: int) -> list[str]:
    """``text`` as pieces that each fit ``max_tokens``, cut by ``_SPLITTERS[level:]``."""
    if count_tokens(text) <= max_tokens:
        return [text]
    if level == len(_SPLITTERS):
        raise ValueError(f"the character {text!r} alone takes {count_tokens(text)} tokens, more than the "
                         f"{max_tokens} a chunk may have; raise the limit")
    return [piece for part in _SPLITTERS[level](text) for piece in _pieces(part, count_tokens, max_tokens, level + 1)]


def _joins_without_space(lang: str) -> bool:
    return _iso(lang) in NO_SPACE_LANGUAGES


def rejoin(translations: Sequence[str], target_lang: str) -> str:
    """The translations of one text's chunks as one text: each stripped, empty ones left out,
    joined with one space, or with nothing for a language written without spaces between words
    (:data:`NO_SPACE_LANGUAGES`: zh, ja, th, lo, km, my; ``target_lang`` in any form
    :func:`language_name` takes).

    On chunks themselves (an identity translation) this gives the text with the whitespace at
    each chunk boundary and at both ends replaced by one space (removed, for those languages);
    newlines at a boundary become a space too, and a chunk boundary inside a word (a word over the
    limit) gains a space."""
    separator = "" if _joins_without_space(target_lang) else " "
    return separator.join(t.strip() for t in translations if t.strip())


def translation_plan(texts: Sequence[str], count_tokens: Callable[[str], int],
                     max_tokens: int) -> tuple[list[str], list[int]]:
    """The chunks of all ``texts`` (:func:`split_for_translation`), in order, and for each chunk
    the index of the text it belongs to. An empty text has no chunks."""
    chunks: list[str] = []
    owners: list[int] = []
    for index, text in enumerate(texts):
        pieces = split_for_translation(text, count_tokens, max_tokens)
        chunks += pieces
        owners += [index] * len(pieces)
    return chunks, owners


def assemble(owners: Sequence[int], chunk_translations: Sequence[str], n_texts: int,
             target_lang: str | Sequence[str]) -> list[str]:
    """One translation per text: each text's chunk translations, in the order given, through
    :func:`rejoin` (a text without chunks gives ``""``). ``owners[i]`` is the text of
    ``chunk_translations[i]`` (as :func:`translation_plan` returns). ``target_lang``: one language
    for all texts, or one per text. Raises ValueError when the lengths disagree or an owner is not
    in ``range(n_texts)``."""
    if len(owners) != len(chunk_translations):
        raise ValueError(f"{len(chunk_translations)} chunk translations for {len(owners)} chunks")
    targets = [target_lang] * n_texts if isinstance(target_lang, str) else list(target_lang)
    if len(targets) != n_texts:
        raise ValueError(f"{len(targets)} target languages for {n_texts} texts")
    per_text: list[list[str]] = [[] for _ in range(n_texts)]
    for owner, translation in zip(owners, chunk_translations):
        if not 0 <= owner < n_texts:
            raise ValueError(f"chunk owner {owner} is not one of the {n_texts} texts")
        per_text[owner].append(translation)
    return [rejoin(translations, target) for translations, target in zip(per_text, targets)]


# ------------------------------------------------------------------------------ translators
def _default_translation_model() -> ModelConfig:
    return ModelConfig(name="nllb_600m", kind="seq2seq", pretrained="facebook/nllb-200-distilled-600M",
                       max_length=256)


@dataclass
class TranslatorConfig:
    """How passages are translated (at ``method.translator``).

    ``model``: the translation model; ``kind: seq2seq`` is an NLLB-style translator
    (:class:`Seq2seqTranslator`), ``kind: decoder`` an LLM prompted to translate
    (:class:`LlmTranslator`). A chunk has at most ``max_input_tokens`` tokens of text and gets
    at most ``floor(max_new_tokens_ratio * n) + max_new_tokens_extra`` new tokens for ``n`` text
    tokens. ``language_codes``: ISO 639-1 (or benchmark) code -> NLLB-200 code, before the
    built-in table (:func:`nllb_code`). ``prompt`` (LLM translators): with ``{source_language}``,
    ``{target_language}`` (English names) and ``{text}``. ``stop_strings`` (LLM translators): a
    translation ends at the first of these after some text, besides at EOS."""
    model: ModelConfig = field(default_factory=_default_translation_model)
    batch_size: int = 16
    max_input_tokens: int = 200
    max_new_tokens_ratio: float = 2.0
    max_new_tokens_extra: int = 16
    num_beams: int = 1
    language_codes: dict[str, str] = field(default_factory=dict)
    prompt: str = DEFAULT_PROMPT
    stop_strings: list[str] = field(default_factory=list)


def _check_config(cfg: TranslatorConfig, key: str, kind: str) -> None:
    if cfg.model.kind != kind:
        raise ConfigError(f"{key}.model.kind={cfg.model.kind!r}, but this translator takes a {kind} model")
    for name, value, least in (("batch_size", cfg.batch_size, 1), ("max_input_tokens", cfg.max_input_tokens, 1),
                               ("max_new_tokens_extra", cfg.max_new_tokens_extra, 0),
                               ("num_beams", cfg.num_beams, 1)):
        if value < least:
            raise ConfigError(f"{key}.{name}={value} must be at least {least}")
    if not cfg.max_new_tokens_ratio > 0:
        raise ConfigError(f"{key}.max_new_tokens_ratio={cfg.max_new_tokens_ratio} must be positive")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


class _Translator:
    """What both translators share: token counting, the per-chunk token budget, batching and
    the regeneration of rows that ran past their own budget."""

    def __init__(self, model, tokenizer, cfg: TranslatorConfig, config_key: str) -> None:
        self.model, self.tokenizer, self.cfg, self.config_key = model, tokenizer, cfg, config_key

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (stripped, as it is translated) without special tokens: what
        ``max_input_tokens`` limits."""
        return len(self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"])

    def max_new_tokens(self, num_tokens: int) -> int:
        """New tokens a chunk of ``num_tokens`` text tokens may get."""
        return max(1, math.floor(self.cfg.max_new_tokens_ratio * num_tokens) + self.cfg.max_new_tokens_extra)

    def translate_batch(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """Translations of ``items``, each ``(text, source code, target code)``, in their order;
        a blank text gives ``""`` without running the model. Runs ``batch_size`` rows at a time;
        every row gets at most :meth:`max_new_tokens` of its own length, so a row's translation
        does not depend on the rest of the batch (rows that run past their own budget in a batch
        of longer rows are regenerated with it). Raises ConfigError for a language code the
        translator cannot take (before any generation) and ValueError for a text over
        ``max_input_tokens`` (chunk it with :func:`split_for_translation`)."""
        items = [(text.strip(), source, target) for text, source, target in items]
        self._check_codes({code for _, source, target in items for code in (source, target)})
        counts = [self.count_tokens(text) for text, _, _ in items]
        for index, count in enumerate(counts):
            if count > self.cfg.max_input_tokens:
                raise ValueError(f"text {index} of the batch has {count} tokens, more than "
                                 f"{self.config_key}.max_input_tokens={self.cfg.max_input_tokens}; split it first "
                                 f"(split_for_translation)")
        budgets = [self.max_new_tokens(count) for count in counts]
        results = [""] * len(items)
        rows = [i for i, (text, _, _) in enumerate(items) if text]
        for start in range(0, len(rows), self.cfg.batch_size):
            batch = rows[start:start + self.cfg.batch_size]
            over_budget = self._generate_rows(items, batch, budgets, max(budgets[i] for i in batch), results)
            for budget in sorted({budgets[i] for i in over_budget}):
                self._generate_rows(items, [i for i in over_budget if budgets[i] == budget], budgets, budget, results)
        return results

    def _generate_rows(self, items, rows: list[int], budgets: list[int], max_new_tokens: int,
                       results: list[str]) -> list[int]:
        """Translate ``items[rows]`` with at most ``max_new_tokens`` new tokens into ``results``;
        returns the rows that used more than their own budget (left unset)."""
        raise NotImplementedError

    def _check_codes(self, codes: set[str]) -> None:
        raise NotImplementedError


class Seq2seqTranslator(_Translator):
    """An NLLB-style seq2seq translator. Codes are NLLB-200 codes (``kor_Hang``) that the
    tokenizer has as added tokens; :meth:`language_code` maps a language to one.

    Input: the tokenizer's own source template when it has ``src_lang`` (NLLB: ``[src] text
    </s>``), else ``[src] text </s>`` built here. The target code is forced as the first new
    token (``forced_bos_token_id``); decoding is greedy (beam search with ``num_beams > 1``).
    Rows with different source languages share a batch; rows are grouped by target language."""

    def __init__(self, model, tokenizer, cfg: TranslatorConfig, config_key: str = CONFIG_KEY) -> None:
        _check_config(cfg, config_key, "seq2seq")
        super().__init__(model, tokenizer, cfg, config_key)
        self._own_template = hasattr(tokenizer, "src_lang")
        if self._own_template:
            probe = tokenizer("a")["input_ids"]
            overhead = len(probe) - len(tokenizer("a", add_special_tokens=False)["input_ids"])
        else:
            overhead = 1 + (tokenizer.eos_token_id is not None)
        if cfg.max_input_tokens + overhead > cfg.model.max_length:
            raise ConfigError(f"{config_key}.max_input_tokens={cfg.max_input_tokens} plus the {overhead} special "
                              f"tokens of each input exceed {config_key}.model.max_length={cfg.model.max_length}; "
                              f"lower {config_key}.max_input_tokens")

    def language_code(self, lang: str) -> str:
        """The NLLB code of ``lang`` (:func:`nllb_code` with ``language_codes``), checked against
        the tokenizer: ConfigError when either fails."""
        code = nllb_code(lang, self.cfg.language_codes, f"{self.config_key}.language_codes")
        self._code_id(code)
        return code

    def _code_id(self, code: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(code)
        if token_id is None or token_id not in self.tokenizer.added_tokens_decoder \
                or token_id == self.tokenizer.unk_token_id:
            raise ConfigError(f"the tokenizer of translation model {self.cfg.model.name!r} has no token for language "
                              f"code {code!r}; map the language to a code it has with "
                              f"{self.config_key}.language_codes.<iso code>=<code> (NLLB-200 codes look like "
                              f"kor_Hang), or use a translation model that covers it")
        return token_id

    def _check_codes(self, codes: set[str]) -> None:
        for code in sorted(codes):
            self._code_id(code)

    def _encode(self, items, rows: list[int]) -> list[list[int]]:
        """Input ids of ``items[rows]`` with their source codes."""
        tokenizer = self.tokenizer
        if not self._own_template:
            return [[self._code_id(items[i][1])] + tokenizer(items[i][0], add_special_tokens=False)["input_ids"]
                    + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []) for i in rows]
        encoded: dict[int, list[int]] = {}
        original = tokenizer.src_lang
        try:
            for source in dict.fromkeys(items[i][1] for i in rows):
                same = [i for i in rows if items[i][1] == source]
                tokenizer.src_lang = source
                encoded |= dict(zip(same, tokenizer([items[i][0] for i in same])["input_ids"]))
        finally:
            tokenizer.src_lang = original
        return [encoded[i] for i in rows]

    @torch.inference_mode()
    def _generate_rows(self, items, rows, budgets, max_new_tokens, results):
        over_budget = []
        for target in dict.fromkeys(items[i][2] for i in rows):
            group = [i for i in rows if items[i][2] == target]
            encoded = self._encode(items, group)
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(group), width), self.tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention_mask[row, :len(ids)] = 1
            device = _model_device(self.model)
            sequences = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                            forced_bos_token_id=self._code_id(target), max_new_tokens=max_new_tokens,
                                            num_beams=self.cfg.num_beams, do_sample=False)
            eos = self.tokenizer.eos_token_id
            for i, generated in zip(group, sequences[:, 1:].tolist()):  # [0]: the decoder start token
                used = generated.index(eos) + 1 if eos in generated else len(generated)
                if used > budgets[i]:
                    over_budget.append(i)
                else:
                    results[i] = self.tokenizer.decode(generated[:used], skip_special_tokens=True).strip()
        return over_budget


class LlmTranslator(_Translator):
    """A decoder LLM prompted to translate (``prompt`` with English language names: codes in any
    form :func:`language_name` takes).

    With ``model.format: chat`` the prompt is the user turn of the tokenizer's chat template
    (after ``model.system_prompt`` when set); otherwise, and as a documented fallback (with a
    warning) when ``format: chat`` meets a tokenizer without a chat template, the prompt is plain
    text followed by ``"\\n\\nTranslation:"`` (after ``system_prompt`` and a blank line when set).
    Greedy decoding (:func:`~xlt_runner.generation.generate_greedy`) stops at EOS (and the chat
    template's end-of-turn token) or one of ``stop_strings``; a leading ``Translation:`` that the
    model echoes is removed. ``model.max_length`` bounds the prompt (measured with English as both
    language names: longer names add a few tokens) plus ``max_input_tokens`` and their new tokens."""

    def __init__(self, model, tokenizer, cfg: TranslatorConfig, config_key: str = CONFIG_KEY) -> None:
        from xlt_runner.data.generation import PromptFormat

        _check_config(cfg, config_key, "decoder")
        if cfg.num_beams != 1:
            raise ConfigError(f"{config_key}.num_beams={cfg.num_beams}: LLM translators decode greedily; "
                              f"set {config_key}.num_beams=1")
        try:
            probe = cfg.prompt.format(source_language="English", target_language="English", text="")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"{config_key}.prompt={cfg.prompt!r} is not a valid template ({error!r}); it may use "
                              f"{{source_language}}, {{target_language}} and {{text}}, and must escape other braces "
                              f"as {{{{ }}}}") from error
        if "{text}" not in cfg.prompt:
            raise ConfigError(f"{config_key}.prompt={cfg.prompt!r} has no {{text}} (where the passage goes)")
        super().__init__(model, tokenizer, cfg, config_key)
        chat = cfg.model.format == "chat"
        if chat and not getattr(tokenizer, "chat_template", None):
            warnings.warn(f"{config_key}.model.format=chat, but the tokenizer of {cfg.model.name!r} has no chat "
                          f"template: translation prompts are plain text ending in {PLAIN_SUFFIX!r}", stacklevel=2)
            chat = False
        self.chat = chat
        self._plain_system = None if chat else cfg.model.system_prompt
        prompt_model = ModelConfig(name=cfg.model.name, kind="decoder", format="chat" if chat else "plain",
                                   template="{q}" + PLAIN_SUFFIX, system_prompt=cfg.model.system_prompt if chat else None)
        self.prompt_format = PromptFormat(prompt_model, tokenizer, training=False)
        overhead = len(self.prompt_format.prompt_ids(self._instruction(probe)))
        longest = overhead + cfg.max_input_tokens + self.max_new_tokens(cfg.max_input_tokens)
        if longest > cfg.model.max_length:
            raise ConfigError(f"a translation prompt ({overhead} tokens of template) with {config_key}."
                              f"max_input_tokens={cfg.max_input_tokens} and its new tokens takes up to {longest} "
                              f"tokens, more than {config_key}.model.max_length={cfg.model.max_length}; lower "
                              f"{config_key}.max_input_tokens or raise {config_key}.model.max_length")

    def language_code(self, lang: str) -> str:
        """``lang`` unchanged: the prompt names languages (:func:`language_name`; an unknown
        code is named by itself), so every code is accepted."""
        return lang

    def _check_codes(self, codes: set[str]) -> None:
        pass

    def _instruction(self, prompt: str) -> str:
        return prompt if self._plain_system is None else f"{self._plain_system}\n\n{prompt}"

    def prompt_text(self, text: str, source: str, target: str) -> str:
        """The instruction for one chunk (before the chat template or plain suffix)."""
        return self._instruction(self.cfg.prompt.format(source_language=language_name(source),
                                                        target_language=language_name(target), text=text))

    def _generate_rows(self, items, rows, budgets, max_new_tokens, results):
        from xlt_runner.generation import generate_greedy, left_pad

        prompts = [self.prompt_format.prompt_ids(self.prompt_text(*items[i])) for i in rows]
        input_ids, attention_mask = left_pad(prompts, self.tokenizer.pad_token_id, _model_device(self.model))
        # each row stops at its own budget, as it would alone: no row runs past it (no regeneration)
        outputs = generate_greedy(self.model, self.tokenizer, input_ids, attention_mask,
                                  max_new_tokens=[budgets[i] for i in rows], stop_strings=list(self.cfg.stop_strings),
                                  eos_token_ids=self.prompt_format.stop_token_ids)
        over_budget = []
        for i, output in zip(rows, outputs):
            if output.num_new_tokens > budgets[i]:
                over_budget.append(i)
            else:
                results[i] = _TRANSLATION_ECHO.sub("", output.text).strip()
        return over_budget


def build_translator(model, tokenizer, cfg: TranslatorConfig,
                     config_key: str = CONFIG_KEY) -> Seq2seqTranslator | LlmTranslator:
    """The translator for ``cfg.model.kind``: seq2seq -> :class:`Seq2seqTranslator`, decoder ->
    :class:`LlmTranslator`; ConfigError for an encoder."""
    if cfg.model.kind == "seq2seq":
        return Seq2seqTranslator(model, tokenizer, cfg, config_key)
    if cfg.model.kind == "decoder":
        return LlmTranslator(model, tokenizer, cfg, config_key)
    raise ConfigError(f"{config_key}.model.kind={cfg.model.kind!r} cannot translate; use a seq2seq model "
                      f"(NLLB) or a decoder LLM")
