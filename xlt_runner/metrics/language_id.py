"""Benchmark language codes to ISO 639-1, and the language identifiers that tell which language
a generated answer is written in.

Every code on either side of a comparison (the question's language, the identifier's answer)
goes through :func:`iso639_1`, so both sides fold the same way: Chinese varieties to ``zh``,
Arabic varieties to ``ar``, Bokmål and Nynorsk to ``no`` (identifiers confuse the members of
these macrolanguages, and an answer in any of them is in the question's language for the
output-language rate).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

# ISO 639-3 (and 639-2 macrolanguage) codes -> ISO 639-1 code of the language or its
# macrolanguage. Covers MKQA, MGSM, XOR-TyDi, the largest SIB-200 languages and the three-letter
# labels py3langid emits that have a two-letter code.
_ISO639_3_TO_1 = {
    "afr": "af", "amh": "am", "ara": "ar", "arb": "ar", "ary": "ar", "arz": "ar", "acm": "ar",
    "apc": "ar", "ars": "ar", "ajp": "ar", "aeb": "ar", "acq": "ar", "asm": "as", "aze": "az",
    "azj": "az", "bel": "be", "ben": "bn", "bod": "bo", "bos": "bs", "bul": "bg", "cat": "ca",
    "ces": "cs", "cym": "cy", "dan": "da", "deu": "de", "ell": "el", "eng": "en", "est": "et",
    "ekk": "et", "eus": "eu", "fas": "fa", "pes": "fa", "prs": "fa", "fin": "fi", "fra": "fr",
    "gle": "ga", "glg": "gl", "gug": "gn", "guj": "gu", "hau": "ha", "heb": "he", "hin": "hi",
    "hrv": "hr", "hun": "hu", "hye": "hy", "ibo": "ig", "ind": "id", "isl": "is", "ita": "it",
    "jav": "jv", "jpn": "ja", "kan": "kn", "kat": "ka", "kaz": "kk", "khm": "km", "kik": "ki",
    "kor": "ko", "kur": "ku", "sdh": "ku", "lao": "lo", "lav": "lv", "lvs": "lv", "lit": "lt",
    "mal": "ml", "mar": "mr", "mkd": "mk", "mlt": "mt", "msa": "ms", "zsm": "ms", "mya": "my",
    "nep": "ne", "npi": "ne", "nld": "nl", "nor": "no", "nob": "no", "nno": "no", "ori": "or",
    "ory": "or", "pan": "pa", "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru", "sin": "si",
    "slk": "sk", "slv": "sl", "som": "so", "spa": "es", "sqi": "sq", "als": "sq", "srp": "sr",
    "sun": "su", "swa": "sw", "swh": "sw", "swe": "sv", "tam": "ta", "tel": "te", "tgl": "tl",
    "tha": "th", "tur": "tr", "ukr": "uk", "urd": "ur", "uzb": "uz", "uzn": "uz", "uzs": "uz",
    "vie": "vi", "xho": "xh", "yor": "yo", "zho": "zh", "cmn": "zh", "yue": "zh", "wuu": "zh",
    "zul": "zu",
}
# Two-letter codes of macrolanguage members, folded like their three-letter codes above.
_ISO639_1_FOLD = {"nb": "no", "nn": "no"}


def _lookup(code: str) -> str | None:
    """ISO 639-1 code for ``code``, or None when it is not a known two- or three-letter code."""
    base = code.replace("-", "_").split("_", 1)[0].lower()
    if len(base) == 2 and base.isascii() and base.isalpha():
        return _ISO639_1_FOLD.get(base, base)
    return _ISO639_3_TO_1.get(base)


def iso639_1(code: str) -> str:
    """ISO 639-1 code of a benchmark language code: MKQA style (``en``, ``zh_cn``, ``pt-BR``:
    the part before ``_``/``-``) or SIB-200 style (``eng_Latn``, ``zho_Hans``: ISO 639-3, looked up
    in a fixed table). Members of a macrolanguage give the macrolanguage (``zh_tw``, ``yue_Hant``
    -> ``zh``; ``arb_Arab`` -> ``ar``; ``nob_Latn``, ``nb`` -> ``no``). Raises ValueError for a
    three-letter code missing from the table (add it there)."""
    iso = _lookup(code)
    if iso is None:
        raise ValueError(f"no ISO 639-1 code known for language code {code!r}; "
                         "add its ISO 639-3 code to xlt_runner.metrics.language_id._ISO639_3_TO_1")
    return iso


class LanguageIdentifier(Protocol):
    """Tells the language of a text. ``identify`` returns an ISO 639-1 code (folded as
    :func:`iso639_1` does; an ISO 639-3 code for a language without one), or None when the
    identifier abstains."""
    name: str

    def identify(self, text: str) -> str | None:
        ...


class Py3LangidIdentifier:
    """py3langid's naive Bayes model on byte n-grams (offline, about 0.7 s to load on first use).

    ``restrict_to``: language codes (any form :func:`iso639_1` accepts) the answer may be in;
    None allows all of py3langid's languages. Restricting makes short answers far less often
    misread (unrestricted, "Tokio" is Lithuanian and "The Beatles" Estonian) but forces every
    answer onto one of the listed languages, so an answer in an unlisted language is counted as
    a listed one: list English and any other likely fallback, not only the question languages.
    """
    name = "py3langid"
    _NO_LANGUAGE = frozenset({"und", "zxx"})  # py3langid's labels for "no linguistic content"

    def __init__(self, restrict_to: Sequence[str] | None = None) -> None:
        self.restrict_to = None if restrict_to is None else sorted({iso639_1(c) for c in restrict_to})
        self._model = None

    def _load(self):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier as Py3LangidModel
        model = Py3LangidModel.from_model_file(MODEL_FILE)
        if self.restrict_to is not None:
            labels = [label for label in model.labels if (_lookup(label) or label) in self.restrict_to]
            missing = set(self.restrict_to) - {_lookup(label) or label for label in labels}
            if missing:
                raise ValueError(f"py3langid has no model for {sorted(missing)}")
            model.set_languages(labels)
        return model

    def identify(self, text: str) -> str | None:
        if self._model is None:
            self._model = self._load()
        label, _ = self._model.classify(text)
        if label in self._NO_LANGUAGE:
            return None
        return _lookup(label) or label


#: Identifier name -> constructor taking ``restrict_to``.
IDENTIFIERS: dict[str, Callable[..., LanguageIdentifier]] = {"py3langid": Py3LangidIdentifier}


def build_identifier(name: str, restrict_to: Sequence[str] | None = None) -> LanguageIdentifier:
    """The identifier registered under ``name`` in :data:`IDENTIFIERS`; ValueError for an unknown
    name."""
    if name not in IDENTIFIERS:
        raise ValueError(f"unknown language identifier {name!r}; valid: {', '.join(sorted(IDENTIFIERS))}")
    return IDENTIFIERS[name](restrict_to=restrict_to)
