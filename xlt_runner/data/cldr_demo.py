"""Offline demo benchmark: classify a localized CLDR term into its kind.

The data come from the CLDR tables shipped with ``babel`` (no network). Each example is
one localized term, e.g. ``"Frankreich"`` (territory), ``"Deutsch"`` (language),
``"Euro"`` (currency), ``"kyrillisch"`` (script), ``"Januar"`` (month), ``"Montag"``
(weekday), ``"Kilometer"`` (unit), labelled with its kind (:data:`LABELS`).

How :func:`generate` builds it (deterministic for given arguments and babel version):

* Locales: CLDR locales without a region (``de``, ``zh_Hant``, ``sr_Latn``) mapped to
  SIB-200-style codes, ISO 639-3 + ISO 15924 script (``en`` -> ``eng_Latn``, ``ar`` ->
  ``arb_Arab``, ``fa`` -> ``pes_Arab``, ``zh_Hant`` -> ``zho_Hant``); the script is the
  explicit subtag or babel's likely-subtag script. Only SIB-200 languages (the
  packaged ``languages.tsv``) are used when at least ``min_locales`` of them keep
  ``terms_per_class`` keys in every class; otherwise other CLDR locales are added
  (babel 2.18, defaults: 93 SIB-200 + 12 others, e.g. ``hsb_Latn``, ``srp_Latn``).
  ``languages.tsv`` next to the data holds every chosen code's metadata in the columns
  of the packaged table (for the others: babel's English name, the code's script,
  :data:`FAMILY`, ``xlmr_seen`` of the same ISO 639-3 language, no region or Joshi
  class); :meth:`CldrDemo.language_table` merges it into the SIB-200 table.
* Terms are parallel: every locale has the same term keys (e.g. territory ``FR``,
  month ``1``). A term counts as present only when the locale localizes it (values
  inherited from CLDR root, like ``M01`` or ``Mon``, do not count). Month and weekday
  names are the stand-alone (nominative) wide form, falling back to the format wide
  form; unit names are the long display name (else the short one, if not root's).
  Placeholder keys (unknown region/currency, "Common" script, ...) are skipped.
* Class balance by sampling: each class gets ``min(terms_per_class, eligible keys)``
  keys. Months (12) and weekdays (7) have fewer keys than the other classes, so those
  two classes stay smaller; use macro-F1 alongside accuracy.
* No text has two labels: where terms of a locale share a text (case-insensitive;
  English "Arabic" is a script and a language), only the scarcer class may use it
  (:data:`COLLISION_PRIORITY`) and a key must be usable in every chosen locale.
  Locales are chosen greedily: drop the locale missing most of the best-covered keys
  of classes short of ``terms_per_class`` common keys, then re-add dropped locales
  that keep every class at its count. eng_Latn, arb_Arab and zho_Hans always stay.
* Splits are disjoint by term key: per class, the sampled keys are shuffled (seeded)
  and cut 60/15/25 into train/dev/test (at least one key in dev and test).
  ``index_id`` is a stable integer of the term key (CRC-32 of ``"<class>:<key>"``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import time
import zlib
from collections import Counter
from pathlib import Path
from dataclasses import dataclass

import babel
from babel import Locale, localedata
from babel.core import get_global

from xlt_runner.config import BenchmarkConfig
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, Example
from xlt_runner.data.languages import LanguageTable
from xlt_runner.data.tsv_benchmark import TsvClassificationBenchmark
from xlt_runner.fileio import publish_dir

LABELS = ["territory", "language", "currency", "script", "month", "weekday", "unit"]
SPLIT_FRACTIONS = {"train": 0.60, "dev": 0.15, "test": 0.25}
REQUIRED_LOCALES = ("eng_Latn", "arb_Arab", "zho_Hans")
LANGUAGES_FILE = "languages.tsv"  # metadata of every code, next to the language directories
STATS_FILE = "stats.json"
GENERATOR_VERSION = 1  # bump when the generated content changes for the same arguments

# CLDR language subtag -> ISO 639-3 code as used by SIB-200 (macrolanguages resolved to
# the SIB-200 individual language, e.g. ar -> arb, fa -> pes, ms -> zsm).
ISO639_3 = {
    "af": "afr", "ak": "aka", "am": "amh", "ar": "arb", "as": "asm", "ast": "ast",
    "az": "azj", "ba": "bak", "be": "bel", "bem": "bem", "bg": "bul", "bho": "bho",
    "bm": "bam", "bn": "ben", "bo": "bod", "br": "bre", "bs": "bos", "ca": "cat",
    "ceb": "ceb", "ckb": "ckb", "cs": "ces", "cv": "chv", "cy": "cym", "da": "dan",
    "de": "deu", "dsb": "dsb", "dz": "dzo", "ee": "ewe", "el": "ell", "en": "eng",
    "eo": "epo", "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "ff": "fuv",
    "fi": "fin", "fil": "tgl", "fo": "fao", "fr": "fra", "frr": "frr", "fur": "fur",
    "fy": "fry", "ga": "gle", "gd": "gla", "gl": "glg", "gn": "grn", "gsw": "gsw",
    "gu": "guj", "ha": "hau", "he": "heb", "hi": "hin", "hr": "hrv", "hsb": "hsb",
    "ht": "hat", "hu": "hun", "hy": "hye", "ia": "ina", "id": "ind", "ie": "ile",
    "ig": "ibo", "is": "isl", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat",
    "kab": "kab", "kam": "kam", "kea": "kea", "ki": "kik", "kk": "kaz", "km": "khm",
    "kn": "kan", "ko": "kor", "kok": "gom", "ks": "kas", "ku": "kmr", "ky": "kir",
    "lb": "ltz", "lg": "lug", "lij": "lij", "lmo": "lmo", "ln": "lin", "lo": "lao",
    "lt": "lit", "ltg": "ltg", "luo": "luo", "lv": "lvs", "mai": "mai", "mg": "plt",
    "mi": "mri", "mk": "mkd", "ml": "mal", "mn": "khk", "mni": "mni", "mr": "mar",
    "ms": "zsm", "mt": "mlt", "my": "mya", "nb": "nob", "ne": "npi", "nl": "nld",
    "nn": "nno", "no": "nob", "nqo": "nqo", "nso": "nso", "nus": "nus", "ny": "nya",
    "oc": "oci", "om": "gaz", "or": "ory", "pa": "pan", "pap": "pap", "pcm": "pcm",
    "pl": "pol", "ps": "pbt", "pt": "por", "qu": "quy", "rm": "roh", "rn": "run",
    "ro": "ron", "ru": "rus", "rw": "kin", "sa": "san", "sat": "sat", "sc": "srd",
    "scn": "scn", "sd": "snd", "sg": "sag", "shn": "shn", "si": "sin", "sk": "slk",
    "sl": "slv", "sn": "sna", "so": "som", "sq": "als", "sr": "srp", "ss": "ssw",
    "st": "sot", "su": "sun", "sv": "swe", "sw": "swh", "szl": "szl", "ta": "tam",
    "te": "tel", "tg": "tgk", "th": "tha", "ti": "tir", "tk": "tuk", "tn": "tsn",
    "to": "ton", "tpi": "tpi", "tr": "tur", "ts": "tso", "tt": "tat", "tzm": "tzm",
    "ug": "uig", "uk": "ukr", "ur": "urd", "uz": "uzn", "vec": "vec", "vi": "vie",
    "wo": "wol", "xh": "xho", "yi": "ydd", "yo": "yor", "yue": "yue", "zh": "zho",
    "zu": "zul",
}
# Codes whose language-only CLDR locale maps to a different SIB-200 language.
SPECIAL_CODES = {"azj_Arab": "azb_Arab", "kor_Kore": "kor_Hang"}
# Locales whose terms are copies of another locale's (hi_Latn repeats English).
EXCLUDED_LOCALES = {"hi_Latn", "en_Dsrt", "en_Shaw", "zh_Latn"}

# Language family of the ISO 639-3 codes above (Glottolog top-level family).
FAMILY = {
    **dict.fromkeys(
        "afr als ast bel ben bho bos bre bul cat ces cym dan deu dsb ell eng fao fra frr fry "
        "fur gla gle glg gom gsw guj hat hin hrv hsb hye isl ita kas kea kmr lij lit lmo ltg "
        "ltz lvs mai mar mkd nld nno nob npi oci ory pan pap pbt pcm pes pol por roh ron rus "
        "san scn sin slk slv snd spa srd srp swe tgk ukr urd vec ydd asm".split(), "Indo-European"),
    **dict.fromkeys("amh arb gaz hau heb mlt som tir kab tzm".split(), "Afro-Asiatic"),
    **dict.fromkeys("aka bam bem ewe ibo kam kik kin lin lug nso nya run sag sna sot ssw swh "
                    "tsn tso wol xho yor zul nqo fuv".split(), "Atlantic-Congo"),
    **dict.fromkeys("azj azb bak chv kaz kir tat tuk tur uig uzn".split(), "Turkic"),
    **dict.fromkeys("est fin hun".split(), "Uralic"),
    **dict.fromkeys("ceb ind jav plt mri tgl sun zsm ton".split(), "Austronesian"),
    **dict.fromkeys("bod dzo mni mya zho yue".split(), "Sino-Tibetan"),
    **dict.fromkeys("kan mal tam tel".split(), "Dravidian"),
    **dict.fromkeys("khm vie sat".split(), "Austroasiatic"),
    **dict.fromkeys("lao tha shn".split(), "Tai-Kadai"),
    "eus": "Basque", "kat": "Kartvelian", "jpn": "Japonic", "kor": "Koreanic",
    "khk": "Mongolic", "ckb": "Indo-European", "luo": "Nilotic", "nus": "Nilotic",
    "grn": "Tupian", "quy": "Quechuan", "tpi": "Creole", "epo": "Constructed",
    "ina": "Constructed", "ile": "Constructed",
}


def _locale_code(locale_id: str) -> str | None:
    """SIB-200-style code of a CLDR locale id without region, or None if unmapped."""
    parts = locale_id.split("_")
    if len(parts) > 2 or (len(parts) == 2 and len(parts[1]) != 4):
        return None
    language = ISO639_3.get(parts[0])
    if language is None:
        return None
    if len(parts) == 2:
        script = parts[1]
    else:
        likely = get_global("likely_subtags").get(parts[0], "")
        script = likely.split("_")[1] if likely.count("_") >= 1 else ""
        if len(script) != 4:
            return None
    code = f"{language}_{script}"
    return SPECIAL_CODES.get(code, code)


def _localized(value: str | None, root_value: str | None) -> str | None:
    """``value`` stripped, or None when absent or merely inherited from CLDR root."""
    if not value or value == root_value:
        return None
    return value.strip() or None


def _calendar_names(locale: Locale, root: Locale, attribute: str) -> dict[str, str]:
    """Wide month or weekday names: stand-alone form, else format form."""
    names: dict[str, str] = {}
    table, root_table = getattr(locale, attribute), getattr(root, attribute)
    for context in ("stand-alone", "format"):
        for key, value in table[context]["wide"].items():
            text = _localized(value, root_table[context]["wide"].get(key))
            if text is not None and str(key) not in names:
                names[str(key)] = text
    return names


def _unit_names(locale: Locale, root: Locale) -> dict[str, str]:
    """Unit display names (``length-kilometer`` -> ``kilometers``): the long form, else
    the short form (CLDR's fallback), unless it equals root's (``km``)."""
    data, root_data = locale._data, root._data
    if "unit_display_names" not in data:
        return {}
    root_units = root_data["unit_display_names"] if "unit_display_names" in root_data else {}
    names = {}
    for key, forms in data["unit_display_names"].items():
        root_forms = root_units[key] if key in root_units else {}
        text = (forms.get("long") or forms.get("short") or "").strip()
        if text and text not in (root_forms.get("long"), root_forms.get("short")):
            names[key] = text
    return names


def _locale_terms(locale: Locale, root: Locale) -> dict[str, dict[str, str]]:
    """All localized terms of a locale: ``{label: {term key: text}}``."""
    return {
        "territory": {k: v.strip() for k, v in locale.territories.items() if v and v.strip()},
        "language": {k: v.strip() for k, v in locale.languages.items() if v and v.strip()},
        "currency": {k: v.strip() for k, v in locale.currencies.items() if v and v.strip()},
        "script": {k: v.strip() for k, v in locale.scripts.items() if v and v.strip()},
        "month": _calendar_names(locale, root, "months"),
        "weekday": _calendar_names(locale, root, "days"),
        "unit": _unit_names(locale, root),
    }


def _candidate_locales() -> dict[str, tuple[str, dict[str, dict[str, str]]]]:
    """code -> (CLDR locale id, terms); one locale per code (shortest id wins)."""
    root = Locale.parse("root")
    candidates: dict[str, tuple[str, dict[str, dict[str, str]]]] = {}
    for locale_id in sorted(localedata.locale_identifiers(), key=lambda i: (len(i), i)):
        code = _locale_code(locale_id)
        if code is None or code in candidates or locale_id in EXCLUDED_LOCALES:
            continue
        candidates[code] = (locale_id, _locale_terms(Locale.parse(locale_id), root))
    return candidates


def _split_sizes(n_keys: int) -> dict[str, int]:
    """Keys per split for a class of ``n_keys`` (dev and test get at least one)."""
    n_test = max(1, round(n_keys * SPLIT_FRACTIONS["test"]))
    n_dev = max(1, round(n_keys * SPLIT_FRACTIONS["dev"]))
    return {"train": n_keys - n_dev - n_test, "dev": n_dev, "test": n_test}


# Codes for "unknown", "no", "common" or test values rather than real terms.
PLACEHOLDER_KEYS = {
    "territory": {"ZZ"}, "language": {"und", "zxx", "mul", "mis"}, "currency": {"XXX", "XTS"},
    "script": {"Zyyy", "Zzzz", "Zxxx", "Zinh", "Zmth", "Zsye", "Zsym"},
}
# When two terms of a locale share a text, only a term of the earliest label here stays
# usable (scarce labels first), so a text never carries two labels.
COLLISION_PRIORITY = ["weekday", "month", "script", "unit", "currency", "language", "territory"]


def _usable_keys(terms: dict[str, dict[str, str]]) -> dict[str, set[str]]:
    """Per label, the keys of a locale whose text (case-insensitive) is unambiguous.

    A text shared by terms of different labels (English "Arabic" is a script and a
    language) stays usable only for the label first in :data:`COLLISION_PRIORITY`;
    a text shared by two keys of that label is usable for neither.
    """
    owners: dict[str, list[tuple[int, str, str]]] = {}
    for label, names in terms.items():
        for key, text in names.items():
            owners.setdefault(text.casefold(), []).append((COLLISION_PRIORITY.index(label), label, key))
    usable: dict[str, set[str]] = {label: set() for label in terms}
    for claims in owners.values():
        top = min(priority for priority, _, _ in claims)
        winners = [(label, key) for priority, label, key in claims if priority == top]
        if len(winners) == 1 and winners[0][1] not in PLACEHOLDER_KEYS.get(winners[0][0], ()):
            usable[winners[0][0]].add(winners[0][1])
    return usable


def _select_locales(usable: dict[str, dict[str, set[str]]], targets: dict[str, int],
                    min_locales: int, keep: tuple[str, ...]) -> list[str]:
    """Greedily drop locales until every label has ``targets[label]`` common keys.

    Each round drops the locale (never one in ``keep``) that lacks the most of the
    best-covered keys of the labels still short of their target; stops early when
    only ``min_locales`` are left.
    """
    chosen = sorted(usable)
    pairs = {code: {(label, key) for label in targets for key in usable[code][label]} for code in chosen}
    coverage = {label: Counter(key for code in chosen for key in usable[code][label]) for label in targets}
    while len(chosen) > min_locales:
        short_keys: set[tuple[str, str]] = set()
        for label, target in targets.items():
            best = sorted(coverage[label], key=lambda key: (-coverage[label][key], key))[:target]
            if any(coverage[label][key] < len(chosen) for key in best):
                short_keys.update((label, key) for key in best)
        if not short_keys:
            break
        droppable = [code for code in chosen if code not in keep]
        if not droppable:
            break
        worst = max(droppable, key=lambda code: (len(short_keys - pairs[code]), code))
        chosen.remove(worst)
        for label in targets:
            coverage[label].subtract(usable[worst][label])
    return chosen


def _add_back(chosen: list[str], dropped: list[str], usable: dict[str, dict[str, set[str]]],
              targets: dict[str, int]) -> list[str]:
    """Re-add dropped locales that keep every label at ``targets`` common keys or more.

    Locales that keep the most common keys are tried first.
    """
    common = {label: set.intersection(*(usable[code][label] for code in chosen)) for label in targets}
    needed = {label: min(target, len(common[label])) for label, target in targets.items()}

    def kept(code: str) -> int:
        return sum(len(common[label] & usable[code][label]) for label in targets)

    chosen = list(chosen)
    for code in sorted(dropped, key=lambda code: (-kept(code), code)):
        if all(len(common[label] & usable[code][label]) >= needed[label] for label in targets):
            chosen.append(code)
            for label in targets:
                common[label] &= usable[code][label]
    return sorted(chosen)


def _choose_locales(usable: dict[str, dict[str, set[str]]], targets: dict[str, int],
                    min_locales: int) -> list[str]:
    """Greedy drop (:func:`_select_locales`), then :func:`_add_back` of what fits."""
    chosen = _select_locales(usable, targets, min_locales, REQUIRED_LOCALES)
    dropped = [code for code in usable if code not in chosen]
    return _add_back(chosen, dropped, usable, targets)


def _key_counts(codes: list[str], usable: dict[str, dict[str, set[str]]],
                targets: dict[str, int]) -> dict[str, int]:
    """Per label, how many keys would be sampled: common keys of ``codes``, capped at the target."""
    return {label: min(target, len(set.intersection(*(usable[code][label] for code in codes))))
            for label, target in targets.items()}


def _term_id(label: str, key: str) -> int:
    """Stable integer id of a term key (CRC-32 of ``"<label>:<key>"``)."""
    return zlib.crc32(f"{label}:{key}".encode())


def _language_rows(codes: list[str], locale_ids: dict[str, str]) -> list[dict[str, str]]:
    """``languages.tsv`` rows: the SIB-200 row where there is one, else metadata from
    babel (English name), the code's script, :data:`FAMILY`, and ``xlmr_seen`` copied
    from a SIB-200 code of the same ISO 639-3 language (0 if none)."""
    table = LanguageTable.default()
    rows = []
    for code in codes:
        if code in table:
            lang = table[code]
            rows.append({
                "code": code, "name": lang.name, "script": lang.script, "family": lang.family,
                "region": lang.region, "joshi_class": "" if lang.joshi_class is None else str(lang.joshi_class),
                "xlmr_seen": str(int(lang.xlmr_seen)),
                "sib200_xlmr_large_acc": "" if lang.sib200_xlmr_large_acc is None else str(lang.sib200_xlmr_large_acc),
            })
            continue
        iso, script = code.split("_")
        seen = any(table[other].xlmr_seen for other in table.codes if other.split("_")[0] == iso)
        rows.append({
            "code": code, "name": Locale.parse(locale_ids[code]).english_name, "script": script,
            "family": FAMILY.get(iso, "Unknown"), "region": "", "joshi_class": "",
            "xlmr_seen": str(int(seen)), "sib200_xlmr_large_acc": "",
        })
    return rows


def generate(out_dir: str | Path, min_locales: int = 100, terms_per_class: int = 30, seed: int = 0) -> dict:
    """Write the demo benchmark into ``out_dir`` (upstream SIB-200 layout) and return stats.

    Writes ``<out_dir>/<code>/{train,dev,test}.tsv`` and ``labels.txt`` per locale, plus
    ``<out_dir>/languages.tsv`` (metadata of every code, columns of the packaged
    language table) and ``<out_dir>/stats.json`` (the returned dict). See the module
    docstring for how locales, terms and splits are chosen. Raises BenchmarkDataError
    when fewer than ``min_locales`` locales or fewer than 3 keys of a label remain.
    """
    started = time.perf_counter()
    candidates = _candidate_locales()
    usable = {code: _usable_keys(terms) for code, (_, terms) in candidates.items()}
    targets = {label: terms_per_class for label in LABELS}
    sib_codes = set(LanguageTable.default().codes)
    sib_usable = {code: keys for code, keys in usable.items() if code in sib_codes}
    chosen = _choose_locales(sib_usable, targets, min_locales)
    if len(chosen) < min_locales or _key_counts(chosen, usable, targets) != targets:
        with_others = _choose_locales(usable, targets, min_locales)
        if (len(chosen) < min_locales or sum(_key_counts(with_others, usable, targets).values())
                > sum(_key_counts(chosen, usable, targets).values())):
            chosen = with_others
    missing = [code for code in REQUIRED_LOCALES if code not in chosen]
    if missing:
        raise BenchmarkDataError(f"cldr_demo: babel {babel.__version__} lacks the source locales {missing}; "
                                 f"install babel>=2.18 (pip install -U babel)")
    if len(chosen) < min_locales:
        raise BenchmarkDataError(
            f"cldr_demo: only {len(chosen)} CLDR locales in babel {babel.__version__} have the terms needed; "
            f"lower benchmark.min_locales (at most {len(chosen)}) or benchmark.terms_per_class")

    rng = random.Random(seed)
    split_keys: dict[str, dict[str, list[str]]] = {split: {} for split in SPLIT_FRACTIONS}
    for label in LABELS:
        common = sorted(set.intersection(*(usable[code][label] for code in chosen)))
        if len(common) < 3:
            raise BenchmarkDataError(
                f"cldr_demo: label {label!r} has only {len(common)} terms common to the {len(chosen)} chosen "
                f"locales; need 3 (one per split). Lower benchmark.min_locales")
        keys = rng.sample(common, min(terms_per_class, len(common)))
        sizes = _split_sizes(len(keys))
        split_keys["train"][label] = sorted(keys[:sizes["train"]])
        split_keys["dev"][label] = sorted(keys[sizes["train"]:sizes["train"] + sizes["dev"]])
        split_keys["test"][label] = sorted(keys[sizes["train"] + sizes["dev"]:])

    ids = {(label, key): _term_id(label, key) for keys in split_keys.values()
           for label, label_keys in keys.items() for key in label_keys}
    if len(set(ids.values())) != len(ids):
        raise BenchmarkDataError("cldr_demo: two term keys hash to the same index_id; "
                                 "change benchmark.generator_seed (it picks other terms)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for code in chosen:
        terms = candidates[code][1]
        lang_dir = out_dir / code
        lang_dir.mkdir(exist_ok=True)
        (lang_dir / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
        for split, keys in split_keys.items():
            with open(lang_dir / f"{split}.tsv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["index_id", "category", "text"])
                for label in LABELS:
                    for key in keys[label]:
                        writer.writerow([ids[(label, key)], label, terms[label][key]])

    locale_ids = {code: candidates[code][0] for code in chosen}
    rows = _language_rows(chosen, locale_ids)
    with open(out_dir / LANGUAGES_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    stats = {
        "n_locales": len(chosen),
        "locales": {code: locale_ids[code] for code in chosen},
        "not_in_sib200": [code for code in chosen if code not in sib_codes],
        "keys_per_split": {split: {label: len(keys[label]) for label in LABELS}
                           for split, keys in split_keys.items()},
        "examples_per_locale": {split: sum(len(k) for k in keys.values()) for split, keys in split_keys.items()},
        "babel_version": babel.__version__,
        "params": {"min_locales": min_locales, "terms_per_class": terms_per_class, "seed": seed},
        "seconds": round(time.perf_counter() - started, 2),
    }
    stats["examples_total"] = {split: n * len(chosen) for split, n in stats["examples_per_locale"].items()}
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
    return stats


def dataset_key(min_locales: int, terms_per_class: int, seed: int) -> str:
    """Directory name of a generated dataset: hash of the generator's inputs
    (arguments, generator version, babel version, SIB-200 codes preferred)."""
    inputs = {"min_locales": min_locales, "terms_per_class": terms_per_class, "seed": seed,
              "generator_version": GENERATOR_VERSION, "babel": babel.__version__,
              "sib200_codes": LanguageTable.default().codes}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def ensure_generated(cache_dir: str | Path, min_locales: int = 100, terms_per_class: int = 30,
                     seed: int = 0) -> Path:
    """Directory ``<cache_dir>/cldr_demo/<key>/`` holding the dataset, generated once.

    Generation writes into a temporary sibling directory that is renamed into place
    (:func:`xlt_runner.fileio.publish_dir`), so the directory either is complete or does not
    exist; when two processes race, the first rename wins and the other copy is discarded.
    """
    final_dir = Path(cache_dir).expanduser() / "cldr_demo" / dataset_key(min_locales, terms_per_class, seed)
    if not final_dir.is_dir():
        with publish_dir(final_dir) as tmp_dir:
            generate(tmp_dir, min_locales=min_locales, terms_per_class=terms_per_class, seed=seed)
    return final_dir


@dataclass
class CldrDemoConfig(BenchmarkConfig):
    """The demo benchmark's generation: locales with at least ``min_locales`` of a class's
    terms, ``terms_per_class`` terms per class, drawn with ``generator_seed``."""
    min_locales: int = 100
    terms_per_class: int = 30
    generator_seed: int = 0


@BENCHMARKS.register("cldr_demo", CldrDemoConfig)
class CldrDemo:
    """The demo benchmark (:func:`generate`), generated into the cache on first use.

    Uses ``cfg.min_locales``, ``cfg.terms_per_class`` and ``cfg.generator_seed``; data
    live in ``<cache_dir>/cldr_demo/<key>/`` and are read with
    :class:`~xlt_runner.data.tsv_benchmark.TsvClassificationBenchmark`.
    ``cfg.data_dir``, when set, names an already generated directory to read instead.
    """

    def __init__(self, cfg: CldrDemoConfig, cache_dir: str):
        if cfg.data_dir:
            self.root = Path(cfg.data_dir).expanduser()
        else:
            self.root = ensure_generated(cache_dir, cfg.min_locales, cfg.terms_per_class, cfg.generator_seed)
        self.name = cfg.name
        self.labels = list(LABELS)
        self._reader = TsvClassificationBenchmark(cfg.name, self.root, self.labels)
        self.location = self._reader.location

    def languages(self) -> list[str]:
        return self._reader.languages()

    def load(self, lang: str, split: str) -> list[Example]:
        return self._reader.load(lang, split)

    def fingerprint(self) -> str:
        return self._reader.fingerprint()

    def language_table(self) -> LanguageTable:
        """The packaged SIB-200 table extended with this dataset's ``languages.tsv``
        (adds the locales that are not SIB-200 languages)."""
        extra = LanguageTable.from_tsv(self.root / LANGUAGES_FILE)
        return LanguageTable.default().extended([extra[code] for code in extra.codes])
