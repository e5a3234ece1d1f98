"""Closed-book QA benchmarks for generation: MKQA (``mkqa_cbqa``) and Mintaka (``mintaka``).

Each gives, per language code and split, :class:`~xlt_runner.data.GenerationExample` whose
``prompt`` is the question and ``references`` every accepted answer; ``completion`` (the
training target) is the first reference.

Neither benchmark ships splits suited to cross-lingual transfer (MKQA is one evaluation set;
the local Mintaka copy is its dev split), so splits are made here from the question ids, the
same in every language (:func:`split_question_ids`): order the ids by the sha256 of
``f"{split_seed}:{id}"``; the first ``test_size`` are test, the next ``dev_size`` dev, the
rest train. A split's examples come in that order. The data must be parallel: every question
is asked in every language the benchmark offers (a reader raises BenchmarkDataError
otherwise), so a question never sits in different splits in different languages.
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional

from xlt_runner.config import ConfigError, GenerationBenchmarkConfig
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, GenerationExample
from xlt_runner.data.languages import Language, LanguageTable
from xlt_runner.data.tsv_benchmark import _not_utf8_error, _split_name
from xlt_runner.fileio import file_sha256

# ---------------------------------------------------------------------------- languages
# code -> (name, script, the SIB-200 code whose family, region, Joshi class and XLM-R flag it takes)
MKQA_LANGUAGES = {
    "ar": ("Arabic", "Arab", "arb_Arab"), "da": ("Danish", "Latn", "dan_Latn"),
    "de": ("German", "Latn", "deu_Latn"), "en": ("English", "Latn", "eng_Latn"),
    "es": ("Spanish", "Latn", "spa_Latn"), "fi": ("Finnish", "Latn", "fin_Latn"),
    "fr": ("French", "Latn", "fra_Latn"), "he": ("Hebrew", "Hebr", "heb_Hebr"),
    "hu": ("Hungarian", "Latn", "hun_Latn"), "it": ("Italian", "Latn", "ita_Latn"),
    "ja": ("Japanese", "Jpan", "jpn_Jpan"), "km": ("Khmer", "Khmr", "khm_Khmr"),
    "ko": ("Korean", "Hang", "kor_Hang"), "ms": ("Malay", "Latn", "zsm_Latn"),
    "nl": ("Dutch", "Latn", "nld_Latn"), "no": ("Norwegian", "Latn", "nob_Latn"),
    "pl": ("Polish", "Latn", "pol_Latn"), "pt": ("Portuguese", "Latn", "por_Latn"),
    "ru": ("Russian", "Cyrl", "rus_Cyrl"), "sv": ("Swedish", "Latn", "swe_Latn"),
    "th": ("Thai", "Thai", "tha_Thai"), "tr": ("Turkish", "Latn", "tur_Latn"),
    "vi": ("Vietnamese", "Latn", "vie_Latn"), "zh_cn": ("Chinese (Simplified, Mainland)", "Hans", "zho_Hans"),
    "zh_hk": ("Chinese (Traditional, Hong Kong)", "Hant", "zho_Hant"),
    "zh_tw": ("Chinese (Traditional, Taiwan)", "Hant", "zho_Hant"),
}
MINTAKA_LANGUAGES = {code: MKQA_LANGUAGES[code] for code in ("ar", "de", "en", "es", "fr", "it", "ja", "pt")}
MINTAKA_LANGUAGES["hi"] = ("Hindi", "Deva", "hin_Deva")


def language_table_from_sib200(codes: dict[str, tuple[str, str, str]]) -> LanguageTable:
    """The table of a benchmark's own codes (code -> name, script, SIB-200 code). Metadata other
    than name and script come from the matching SIB-200 row, so the named sets ``all``, ``joshi5``
    and ``seen`` work; the SIB-200 accuracy is left out (it is not about these benchmarks)."""
    sib = LanguageTable.default()
    return LanguageTable([
        Language(code=code, name=name, script=script, family=sib[ref].family, region=sib[ref].region,
                 joshi_class=sib[ref].joshi_class, xlmr_seen=sib[ref].xlmr_seen, sib200_xlmr_large_acc=None)
        for code, (name, script, ref) in codes.items()])


@lru_cache(maxsize=None)
def _language_table(benchmark: str) -> LanguageTable:
    """The table of a QA benchmark's two-letter codes (:func:`language_table_from_sib200`)."""
    return language_table_from_sib200(MKQA_LANGUAGES if benchmark == "mkqa_cbqa" else MINTAKA_LANGUAGES)


# ------------------------------------------------------------------------------ splits
def split_question_ids(question_ids: list[str], test_size: int, dev_size: int, seed: int,
                       where: str = "the data") -> dict[str, list[str]]:
    """``{"train", "dev", "test"}`` -> question ids: ids ordered by sha256 of ``f"{seed}:{id}"``
    (ties, impossible in practice, by id); the first ``test_size`` are test, the next ``dev_size``
    dev, the rest train, each in that order. Independent of the order of ``question_ids``.
    Raises BenchmarkDataError naming ``where`` when the two sizes exceed the questions."""
    if test_size + dev_size > len(question_ids):
        raise BenchmarkDataError(
            f"benchmark.test_size={test_size} + benchmark.dev_size={dev_size} = {test_size + dev_size} "
            f"questions, but {where} has only {len(question_ids):,}; lower them "
            f"(e.g. benchmark.test_size={len(question_ids) // 4} benchmark.dev_size={len(question_ids) // 10})")
    ordered = sorted(set(question_ids), key=lambda qid: (hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest(), qid))
    return {"test": ordered[:test_size], "dev": ordered[test_size:test_size + dev_size],
            "train": ordered[test_size + dev_size:]}


def _dedupe(texts: list[Any]) -> tuple[str, ...]:
    """The non-empty strings of ``texts``, stripped, in order, without repeats."""
    return tuple(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))


def _example(qid: str, lang: str, question: str, references: tuple[str, ...]) -> GenerationExample:
    return GenerationExample(id=qid, lang=lang, prompt=question.strip(), references=references,
                             completion=references[0])


class _ParallelQA:
    """Splits and loading shared by the QA benchmarks. A subclass sets ``location``, implements
    :meth:`languages` and ``_read_language(lang) -> {question id: GenerationExample}`` and adds
    its data's content to :meth:`_digest`."""

    def __init__(self, cfg: GenerationBenchmarkConfig, location: str):
        for key in ("test_size", "dev_size"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"benchmark.{key}={getattr(cfg, key)} must be at least 0")
        self.name = cfg.name
        self.task = cfg.task
        self.location = location
        self._sizes = {"test_size": cfg.test_size, "dev_size": cfg.dev_size, "split_seed": cfg.split_seed}
        self._by_lang: dict[str, dict[str, GenerationExample]] = {}
        self._splits: dict[str, list[str]] | None = None
        self._fingerprint: str | None = None
        self.dropped_questions = 0  # questions a reader left out for want of a short answer in every language

    def languages(self) -> list[str]:
        raise NotImplementedError

    def _read_language(self, lang: str) -> dict[str, GenerationExample]:
        raise NotImplementedError

    def _digest(self, digest) -> None:
        """Add the data's content (file digests, or the Hub's fingerprints) to ``digest``."""
        raise NotImplementedError

    def load(self, lang: str, split: str) -> list[GenerationExample]:
        """The examples of ``lang`` in ``split`` (train, dev or test; validation = dev), in the
        split's hash order; the question ids of a split are the same in every language."""
        split = _split_name(split)
        questions = self._questions(lang)
        ids = self._split_ids()[split]
        if not ids:
            raise BenchmarkDataError(
                f"{self.name}: split {lang}/{split} is empty: benchmark.test_size={self._sizes['test_size']} and "
                f"benchmark.dev_size={self._sizes['dev_size']} leave no question of {self.location} for it "
                f"({len(questions):,} questions); change those sizes")
        return [questions[qid] for qid in ids]

    def fingerprint(self) -> str:
        """sha256 (hex) over the benchmark name, the split parameters (test_size, dev_size,
        split_seed: they decide what :meth:`load` returns) and the data's content (see the
        subclass): equal for an identical copy elsewhere, different when a byte of a data file
        or a split parameter changes."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.name}\n{json.dumps(self._sizes, sort_keys=True)}\n".encode())
            self._digest(digest)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def parallel_references(self, question_ids: list[str]) -> dict[str, dict[str, list[str]]]:
        """Every language's gold answers to ``question_ids``: language -> question id -> answers
        (the same question in every language; what CoCo-CoLa's ratios compare a prediction with)."""
        wanted = set(question_ids)
        return {lang: {qid: list(ex.references) for qid, ex in self._questions(lang).items() if qid in wanted}
                for lang in self.languages()}

    def _reference_language(self) -> str:
        """The language whose question ids define the splits (all languages have the same)."""
        available = self.languages()
        return "en" if "en" in available else available[0]

    def _questions(self, lang: str) -> dict[str, GenerationExample]:
        if lang not in self._by_lang:
            if lang not in self.languages():
                raise self._unknown_language(lang)
            questions = self._read_language(lang)
            reference = self._reference_language()
            if lang != reference and set(questions) != set(self._questions(reference)):
                missing = sorted(set(self._questions(reference)) - set(questions))
                extra = sorted(set(questions) - set(self._questions(reference)))
                raise BenchmarkDataError(
                    f"{self.name}: the questions of {lang!r} in {self.location} are not those of {reference!r} "
                    f"({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} extra, e.g. {extra[:3]}); "
                    f"the languages must be parallel")
            self._by_lang[lang] = questions
        return self._by_lang[lang]

    def _unknown_language(self, lang: str) -> BenchmarkDataError:
        available = self.languages()
        close = difflib.get_close_matches(lang, available, n=5, cutoff=0.5)
        return BenchmarkDataError(f"{self.name}: no language {lang!r} in {self.location} (it has "
                                  f"{', '.join(available)}; closest: {close or 'none'}). Check the languages config "
                                  f"or benchmark.data_dir.")

    def _split_ids(self) -> dict[str, list[str]]:
        if self._splits is None:
            questions = list(self._questions(self._reference_language()))
            dropped = (f", after dropping {self.dropped_questions:,} questions without a short answer in every "
                       f"language" if self.dropped_questions else "")
            where = f"{self.name} ({self.location}{dropped})"
            self._splits = split_question_ids(questions, self._sizes["test_size"], self._sizes["dev_size"],
                                              self._sizes["split_seed"], where=where)
        return self._splits


def _json_lines(name: str, path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of each non-blank line of ``path`` (gzip when it ends in
    ``.gz``), UTF-8; a bad line becomes a BenchmarkDataError naming the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BenchmarkDataError(f"{name}: {str(path)!r} line {number} is not valid JSON ({err.msg}, "
                                             f"column {err.colno}); expected one JSON object per line") from None
                yield number, row
    except UnicodeDecodeError:
        if opener is open:
            raise _not_utf8_error(name, path) from None
        raise BenchmarkDataError(f"{name}: {str(path)!r} does not decompress to UTF-8 text; "
                                 f"download it again") from None
    except (EOFError, gzip.BadGzipFile) as err:
        raise BenchmarkDataError(f"{name}: {str(path)!r} is not a valid, complete gzip file ({err}); "
                                 f"download it again") from None


def _read_json(name: str, path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise BenchmarkDataError(f"{name}: {str(path)!r} is not valid UTF-8; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{name}: {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno}, "
                                 f"column {err.colno})") from None


def _local_root(name: str, data_dir: str, layout: str, example: str) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise BenchmarkDataError(f"{name}: data directory {str(root)!r} does not exist or is not a directory; "
                                 f"expected {layout}. Point benchmark.data_dir at one (e.g. benchmark.data_dir="
                                 f"{example}) or set benchmark.data_dir=null to read the Hub dataset")
    return root


def _hub_dataset(name: str, hub_id: str, config: str | None, split: str, revision: str | None, local_hint: str):
    """``datasets.load_dataset(hub_id, config, split=split, revision=revision)``; a failure
    (offline, not cached, a dataset script this ``datasets`` no longer runs) becomes a
    BenchmarkDataError with the ways out."""
    import datasets

    try:
        return datasets.load_dataset(hub_id, config, split=split, revision=revision)
    except (OSError, RuntimeError, ValueError) as err:  # ConnectionError, DatasetNotFoundError, scripts refused
        raise BenchmarkDataError(
            f"{name}: could not load the Hub dataset {hub_id!r}{f' config {config!r}' if config else ''} split "
            f"{split!r} ({type(err).__name__}: {err}). Use a local copy ({local_hint}); or run once online to fill "
            f"the cache and then set HF_HUB_OFFLINE=1; if this datasets version refuses the dataset's loading "
            f"script, try its Parquet conversion: benchmark.hub_revision=refs/convert/parquet") from err


# -------------------------------------------------------------------------------- MKQA
#: MKQA's answer types, in the order of the Hub dataset's ClassLabel (its rows give the index).
MKQA_ANSWER_TYPES = ("entity", "long_answer", "unanswerable", "date", "number", "number_with_unit",
                     "short_phrase", "binary")
#: Answer types without a short gold text: closed-book QA cannot score them.
MKQA_NO_SHORT_ANSWER = frozenset({"unanswerable", "long_answer"})
MKQA_ORIGINAL_FILES = ("mkqa.jsonl.gz", "mkqa.jsonl")
MIA_PREFIX, MIA_SUFFIX = "mkqa-", ".jsonl"
MKQA_LAYOUTS = ("the original MKQA file mkqa.jsonl.gz or mkqa.jsonl (https://github.com/apple/ml-mkqa, dataset/) "
                "or the MIA-2022 files mkqa-<lang>.jsonl (rows {\"id\": \"<qid>_<lang>\", \"lang\", \"question\", "
                "\"answers\": [...]})")
MKQA_LOCAL_EXAMPLE = "../shared/data/mkqa/mia2022_dev"


def mkqa_references(answers: list[dict], where: str) -> tuple[str, ...]:
    """The accepted answers of one language of an MKQA record (original or Hub schema): each
    answer's ``text`` and then its ``aliases``, in order, without repeats or blanks; answers of
    type unanswerable or long_answer are skipped. ``type`` is a name (original file) or an index
    into :data:`MKQA_ANSWER_TYPES` (the Hub's ClassLabel). Empty when there is no short answer."""
    texts: list[Any] = []
    for answer in answers:
        if not isinstance(answer, dict):
            raise BenchmarkDataError(f"{where}: answer {answer!r} is not an object {{type, text, aliases}}")
        kind = answer.get("type")
        if isinstance(kind, int) and 0 <= kind < len(MKQA_ANSWER_TYPES):
            kind = MKQA_ANSWER_TYPES[kind]
        if kind not in MKQA_ANSWER_TYPES:
            raise BenchmarkDataError(f"{where}: answer type {kind!r} is not one of MKQA's {list(MKQA_ANSWER_TYPES)}")
        if kind not in MKQA_NO_SHORT_ANSWER:
            texts += [answer.get("text"), *(answer.get("aliases") or [])]
    return _dedupe(texts)


def mkqa_record_examples(record: dict, where: str) -> tuple[str, dict[str, GenerationExample] | None]:
    """``(question id, {lang: example})`` of one record of the original MKQA schema (``example_id``,
    ``queries: {lang: text}``, ``answers: {lang: [{type, text, aliases, entity}]}``; the Hub's rows
    are the same with a string id and ClassLabel types). The examples are None when the question is
    dropped: some language has an empty query or no short answer (:func:`mkqa_references`), so
    every kept question has all the record's languages. Raises BenchmarkDataError (naming
    ``where``) for a record of another shape."""
    if not isinstance(record, dict) or not {"example_id", "queries", "answers"} <= set(record):
        raise BenchmarkDataError(f"{where}: expected an MKQA record with example_id, queries and answers; got "
                                 f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")
    qid, queries, answers = str(record["example_id"]), record["queries"], record["answers"]
    if not isinstance(queries, dict) or not isinstance(answers, dict) or set(queries) != set(answers):
        raise BenchmarkDataError(f"{where}: question {qid} has queries in {sorted(queries)} but answers in "
                                 f"{sorted(answers)}; each language needs both")
    examples = {}
    for lang in sorted(queries):
        references = mkqa_references(answers[lang] or [], f"{where} ({lang})")
        if not references or not isinstance(queries[lang], str) or not queries[lang].strip():
            return qid, None
        examples[lang] = _example(qid, lang, queries[lang], references)
    return qid, examples


@dataclass
class MkqaConfig(GenerationBenchmarkConfig):
    """MKQA closed-book QA; ``hub_revision``: a revision of ``hub_id`` (e.g. refs/convert/parquet)."""
    hub_revision: Optional[str] = None


@BENCHMARKS.register("mkqa_cbqa", MkqaConfig)
class MkqaCbqa(_ParallelQA):
    """MKQA (Longpre et al., 2020) as closed-book QA: a question in each of 26 languages, answers in each.

    Sources, by ``cfg.data_dir``:

    * a directory with the original ``mkqa.jsonl.gz`` (or ``mkqa.jsonl``) of
      https://github.com/apple/ml-mkqa: 10,000 questions, all 26 languages in every record (a record
      lacking a language the others have is an error, not dropped). A question is kept only if every
      language has a non-empty query and a short answer: answers of type ``unanswerable`` or
      ``long_answer`` (no short gold text) and blank texts do not count
      (:func:`mkqa_record_examples`); it is dropped from all languages otherwise, so the languages
      stay parallel. References: each answer's text, then its aliases (:func:`mkqa_references`).
    * a directory of MIA-2022 files ``mkqa-<lang>.jsonl`` (its re-split MKQA dev set, answers
      normalized, no types): rows ``{"id": "<qid>_<lang>", "lang", "question", "answers": [str]}``;
      the question id is ``id`` without the ``_<lang>`` suffix. The files must be aligned row by row
      (same ids, same order) and every row needs a question and non-empty answers: anything else is
      an error, as MIA's files are parallel by construction. References: ``answers`` in order.
    * unset: the Hub dataset ``cfg.hub_id`` (``apple/mkqa``, one split ``train`` in the original
      schema) through ``datasets.load_dataset`` and its cache; as the original file.

    ``completion`` is the first reference. Splits: see the module docstring.
    """

    def __init__(self, cfg: MkqaConfig, cache_dir: str):
        self._files: list[Path] = []
        self._mia = False
        if cfg.data_dir:
            root = _local_root(cfg.name, cfg.data_dir, MKQA_LAYOUTS, MKQA_LOCAL_EXAMPLE)
            original = [root / n for n in MKQA_ORIGINAL_FILES if (root / n).is_file()]
            mia = sorted(root.glob(f"{MIA_PREFIX}*{MIA_SUFFIX}"))
            if len(original) > 1 or (original and mia):
                raise BenchmarkDataError(f"{cfg.name}: data directory {str(root)!r} holds "
                                         f"{[p.name for p in original + mia][:4]}: more than one MKQA copy; "
                                         f"keep one (the original file or the MIA files) per directory")
            if not original and not mia:
                raise BenchmarkDataError(f"{cfg.name}: data directory {str(root)!r} holds no MKQA data; expected "
                                         f"{MKQA_LAYOUTS}. E.g. benchmark.data_dir={MKQA_LOCAL_EXAMPLE}")
            self._files, self._mia = original or mia, bool(mia)
            location = f"data directory {str(root)!r}"
        elif cfg.hub_id:
            location = f"Hub dataset {cfg.hub_id!r}"
        else:
            raise ConfigError(f"{cfg.name} needs benchmark.data_dir (a local copy: {MKQA_LAYOUTS}) or "
                              f"benchmark.hub_id (e.g. benchmark.hub_id=apple/mkqa)")
        super().__init__(cfg, location)
        self.hub_id, self.hub_revision = cfg.hub_id, cfg.hub_revision
        self._all: dict[str, dict[str, GenerationExample]] | None = None

    @staticmethod
    def language_table() -> LanguageTable:
        """MKQA's 26 codes (``en``, ``zh_cn``, ...) with SIB-200 metadata (see :func:`_language_table`)."""
        return _language_table("mkqa_cbqa")

    def languages(self) -> list[str]:
        """MIA files: the ``<lang>`` of each file. Original schema (file or Hub): the languages of
        its records (MKQA's 26), which reads the data."""
        if self._mia:
            return [p.name[len(MIA_PREFIX):-len(MIA_SUFFIX)] for p in self._files]
        return sorted(self._read_all())

    def _read_language(self, lang: str) -> dict[str, GenerationExample]:
        return self._read_all()[lang]

    def _digest(self, digest) -> None:
        """Local: each data file's name and content sha256. Hub: hub id, revision and the
        ``datasets`` fingerprint of its train split (changes when the Hub data change)."""
        if self._files:
            for path in self._files:
                digest.update(f"{path.name}\t{file_sha256(path)}\n".encode())
        else:
            dataset = _hub_dataset(self.name, self.hub_id, None, "train", self.hub_revision,
                                   f"benchmark.data_dir={MKQA_LOCAL_EXAMPLE}")
            digest.update(f"{self.hub_id}\n{self.hub_revision}\n{dataset._fingerprint}\n".encode())

    def _read_all(self) -> dict[str, dict[str, GenerationExample]]:
        if self._all is None:
            self._all = self._read_mia() if self._mia else self._read_original()
        return self._all

    def _read_original(self) -> dict[str, dict[str, GenerationExample]]:
        """Questions of the original schema (local file or Hub), after the drop rule."""
        if self._files:
            path = self._files[0]
            records = ((f"{self.name}: {str(path)!r} line {line}", row) for line, row in _json_lines(self.name, path))
        else:
            dataset = _hub_dataset(self.name, self.hub_id, None, "train", self.hub_revision,
                                   f"benchmark.data_dir={MKQA_LOCAL_EXAMPLE}")
            records = ((f"{self.name}: {self.hub_id} row {i}", row) for i, row in enumerate(dataset))
        by_lang: dict[str, dict[str, GenerationExample]] | None = None
        seen: set[str] = set()
        for where, record in records:
            qid, examples = mkqa_record_examples(record, where)
            if qid in seen:
                raise BenchmarkDataError(f"{where} repeats example_id {qid}; ids must be unique")
            seen.add(qid)
            langs = sorted(record["queries"])
            if by_lang is None:
                by_lang = {lang: {} for lang in langs}
            elif langs != sorted(by_lang):
                raise BenchmarkDataError(f"{where}: question {qid} has the languages {langs}, the records before it "
                                         f"{sorted(by_lang)}; every record needs the same languages")
            if examples is None:
                self.dropped_questions += 1
                continue
            for lang, example in examples.items():
                by_lang[lang][qid] = example
        if by_lang is None:
            raise BenchmarkDataError(f"{self.name}: {self.location} holds no MKQA record")
        return by_lang

    def _read_mia(self) -> dict[str, dict[str, GenerationExample]]:
        """Questions of the MIA files, checked to be aligned row by row."""
        rows: dict[str, list[tuple[int, GenerationExample]]] = {}
        for path, lang in zip(self._files, self.languages()):
            rows[lang] = [(line, self._mia_example(path, line, row, lang))
                          for line, row in _json_lines(self.name, path)]
            if not rows[lang]:
                raise BenchmarkDataError(f"{self.name}: {str(path)!r} has no rows")
            seen: set[str] = set()
            for line, example in rows[lang]:
                if example.id in seen:
                    raise BenchmarkDataError(f"{self.name}: {str(path)!r} line {line} repeats question id "
                                             f"{example.id!r}; each question must appear once")
                seen.add(example.id)
        reference = self._reference_language()
        reference_file = f"{MIA_PREFIX}{reference}{MIA_SUFFIX}"
        for lang, lang_rows in rows.items():
            for (line, example), (ref_line, ref_example) in zip(lang_rows, rows[reference]):
                if example.id != ref_example.id:
                    raise BenchmarkDataError(
                        f"{self.name}: {MIA_PREFIX}{lang}{MIA_SUFFIX} line {line} has question {example.id!r} where "
                        f"{reference_file} line {ref_line} has {ref_example.id!r} (in {self.location}); the files "
                        f"must be aligned row by row: the same questions in the same order")
            if len(lang_rows) != len(rows[reference]):
                raise BenchmarkDataError(
                    f"{self.name}: {MIA_PREFIX}{lang}{MIA_SUFFIX} has {len(lang_rows):,} rows, {reference_file} "
                    f"{len(rows[reference]):,} (in {self.location}); the files must hold the same questions")
        return {lang: {example.id: example for _, example in lang_rows} for lang, lang_rows in rows.items()}

    def _mia_example(self, path: Path, line: int, row: Any, lang: str) -> GenerationExample:
        where = f"{self.name}: {str(path)!r} line {line}"
        if not isinstance(row, dict) or not {"id", "question", "answers"} <= set(row):
            raise BenchmarkDataError(f"{where}: expected {{\"id\": \"<qid>_{lang}\", \"lang\", \"question\", "
                                     f"\"answers\": [...]}}; got {row if not isinstance(row, dict) else sorted(row)}")
        suffix = f"_{lang}"
        if not isinstance(row["id"], str) or not row["id"].endswith(suffix) or row.get("lang", lang) != lang:
            raise BenchmarkDataError(f"{where}: id {row['id']!r} (lang {row.get('lang')!r}) is not of language "
                                     f"{lang!r}, which the file name says; expected ids like '<qid>{suffix}'")
        answers = row["answers"]
        if (not isinstance(answers, list) or not answers
                or any(not isinstance(a, str) or not a.strip() for a in answers)):
            raise BenchmarkDataError(f"{where}: answers {answers!r} of {row['id']!r} must be a non-empty list of "
                                     f"non-empty strings; closed-book QA needs a gold answer in every row")
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise BenchmarkDataError(f"{where}: {row['id']!r} has no question text")
        return _example(row["id"][:-len(suffix)], lang, row["question"], _dedupe(answers))


# ----------------------------------------------------------------------------- Mintaka
MINTAKA_GLOB = "mintaka_*.json"
MINTAKA_LAYOUT = ("upstream Mintaka files mintaka_*.json (a JSON list of {id, question, translations, answer, "
                  "complexityType, ...}; https://github.com/amazon-science/mintaka, data/)")
MINTAKA_LOCAL_EXAMPLE = "../shared/data/mintaka"
MINTAKA_HUB_SPLITS = ("train", "validation", "test")
MINTAKA_MULTILINGUAL_ANSWERS = (
    "For answers in every language use Mintaka v1.1, whose entity answer labels are per language: "
    "data/mintaka_{train,dev,test}.json at the head of https://github.com/amazon-science/mintaka "
    "(benchmark.data_dir=<a directory with them>), or the Hub dataset (benchmark.data_dir=null "
    "benchmark.hub_id=AmazonScience/mintaka)")


def _mintaka_value_text(value: Any) -> str:
    """A non-entity answer value as text: booleans Yes/No, whole floats without '.0', others str()."""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def mintaka_references(answer: dict, complexity_type: str, lang: str) -> tuple[str, ...]:
    """The accepted answers in ``lang`` of one upstream Mintaka ``answer`` object (v1.0: an
    entity's ``label`` is an English string; v1.1: ``{lang: label}``), first the completion:

    * count questions with ``answerNum``: that number ("How many ...?" asks for it; the listed
      entities are its support);
    * entities: the labels in ``lang`` joined by ", " (v1.1 falls back to the English label where
      ``lang``'s is empty, as upstream's evaluate.py does), then, in English, the annotator's
      ``mention``; an entity answer without linked entities has only its ``mention`` (English in
      every language, as upstream's evaluation uses it);
    * boolean: "Yes"/"No" (English in every language); numerical, date (ISO, e.g. 1956-10-20),
      string: the values as text joined by ", ", then, in English, the ``mention``.

    Empty strings are left out; the result may be empty (the caller refuses that)."""
    kind, values, mention = answer.get("answerType"), answer.get("answer") or [], answer.get("mention")
    texts: list[Any] = []
    if complexity_type == "count" and answer.get("answerNum") is not None:
        return _dedupe([_mintaka_value_text(answer["answerNum"])])
    if kind == "entity":
        labels = [_mintaka_label(entity, lang) for entity in values]
        texts.append(", ".join(label.strip() for label in labels if label and label.strip()))
        if lang == "en" or not texts[0]:
            texts.append(mention)
    elif kind == "boolean":
        texts.append(_mintaka_value_text(bool(values[0])) if values else mention)
    else:
        texts.append(", ".join(_mintaka_value_text(v) for v in values))
        if lang == "en":
            texts.append(mention)
    return _dedupe(texts)


def _mintaka_label(entity: Any, lang: str) -> str | None:
    """An answer entity's label in ``lang``: v1.0's English string, or v1.1's ``label[lang]``
    falling back to ``label["en"]``."""
    label = entity.get("label") if isinstance(entity, dict) else None
    return label.get(lang) or label.get("en") if isinstance(label, dict) else label


def _mintaka_answer_version(record: dict) -> str | None:
    """"v1.0" when the record's entity answer labels are strings, "v1.1" when per-language dicts,
    None when the record has no entity label."""
    for entity in record["answer"].get("answer") or []:
        if isinstance(entity, dict) and "label" in entity:
            return "v1.0" if isinstance(entity["label"], str) else "v1.1"
    return None


@dataclass
class MintakaConfig(GenerationBenchmarkConfig):
    """Mintaka; ``hub_revision``: a revision of ``hub_id`` (e.g. refs/convert/parquet)."""
    max_new_tokens: int = 64  # list answers (all the films of ...) are long
    hub_revision: Optional[str] = None


@BENCHMARKS.register("mintaka", MintakaConfig)
class Mintaka(_ParallelQA):
    """Mintaka (Sen et al., 2022): complex questions written in English, translated into ar, de,
    es, fr, hi, it, ja, pt; answers linked to Wikidata.

    **Answer languages.** In Mintaka v1.0 (the copy here: ``mintaka_dev_v1.0.json``) an entity
    answer's ``label`` is one English string, so answers exist in English only: :meth:`languages`
    is then ``["en"]`` and :attr:`language_note` says why (the questions' 8 translations cannot be
    scored without answers in their language), so ``languages.targets=[ja]`` fails when the run's
    languages are checked, before any model loads; :meth:`load` refuses those languages too.
    v1.1 files (labels ``{lang: label}``) and the Hub give all 9 languages; there, boolean answers
    (Yes/No) and entity answers without linked entities stay English in every language, as the
    data have no translation of them (upstream's evaluate.py scores them so too).

    Sources, by ``cfg.data_dir``: a directory of upstream files ``mintaka_*.json`` (all are read
    and their questions pooled; ids must be unique), or, unset, the Hub dataset ``cfg.hub_id``
    (``AmazonScience/mintaka``: a config per language, splits train/validation/test pooled, rows
    with ``answerText`` and ``answerEntity``; it drops answer types and ``answerNum``, so its
    references are the joined entity labels, then ``answerText``).

    References: :func:`mintaka_references` (count questions: the number; entities: labels and the
    annotator's mention; booleans Yes/No; numbers, dates and strings as text). Splits are by
    Mintaka's question ``id`` (module docstring), re-made over the pooled questions.
    """

    def __init__(self, cfg: MintakaConfig, cache_dir: str):
        self._files: list[Path] = []
        if cfg.data_dir:
            root = _local_root(cfg.name, cfg.data_dir, MINTAKA_LAYOUT, MINTAKA_LOCAL_EXAMPLE)
            self._files = sorted(root.glob(MINTAKA_GLOB))
            if not self._files:
                raise BenchmarkDataError(f"{cfg.name}: data directory {str(root)!r} holds no {MINTAKA_GLOB}; expected "
                                         f"{MINTAKA_LAYOUT}. E.g. benchmark.data_dir={MINTAKA_LOCAL_EXAMPLE}")
            location = f"data directory {str(root)!r}"
        elif cfg.hub_id:
            location = f"Hub dataset {cfg.hub_id!r}"
        else:
            raise ConfigError(f"{cfg.name} needs benchmark.data_dir (a directory of {MINTAKA_GLOB}) or "
                              f"benchmark.hub_id (e.g. benchmark.hub_id=AmazonScience/mintaka)")
        super().__init__(cfg, location)
        self.hub_id, self.hub_revision = cfg.hub_id, cfg.hub_revision
        self._local: dict[str, dict[str, GenerationExample]] | None = None
        self._hub_fingerprints: list[str] = []
        #: Why some question languages are not offered (v1.0 files), else None; for messages.
        self.language_note: str | None = None

    @staticmethod
    def language_table() -> LanguageTable:
        """Mintaka's 9 codes with SIB-200 metadata (see :func:`_language_table`)."""
        return _language_table("mintaka")

    def languages(self) -> list[str]:
        """Languages with answers: ``["en"]`` for v1.0 files (see :attr:`language_note`), all
        question languages for v1.1 files and the Hub."""
        if self._files:
            return sorted(self._read_local())
        return sorted(MINTAKA_LANGUAGES)

    def _unknown_language(self, lang: str) -> BenchmarkDataError:
        if self.language_note and lang in MINTAKA_LANGUAGES:
            return BenchmarkDataError(f"{self.name}: no answers in language {lang!r}: {self.language_note}")
        return super()._unknown_language(lang)

    def _read_language(self, lang: str) -> dict[str, GenerationExample]:
        if self._files:
            return self._read_local()[lang]
        questions: dict[str, GenerationExample] = {}
        for split in MINTAKA_HUB_SPLITS:
            dataset = _hub_dataset(self.name, self.hub_id, lang, split, self.hub_revision,
                                   f"benchmark.data_dir={MINTAKA_LOCAL_EXAMPLE}")
            if lang == self._reference_language():
                self._hub_fingerprints.append(dataset._fingerprint)
            for i, row in enumerate(dataset):
                example = mintaka_hub_example(row, lang, f"{self.name}: {self.hub_id} {lang}/{split} row {i}")
                if example.id in questions:
                    raise BenchmarkDataError(f"{self.name}: {self.hub_id} {lang}/{split} row {i} repeats id "
                                             f"{example.id!r}; ids must be unique across splits")
                questions[example.id] = example
        return questions

    def _digest(self, digest) -> None:
        """Local: each file's name and content sha256. Hub: hub id, revision and the ``datasets``
        fingerprints of the English config's three splits."""
        if self._files:
            for path in self._files:
                digest.update(f"{path.name}\t{file_sha256(path)}\n".encode())
        else:
            self._questions(self._reference_language())
            digest.update(f"{self.hub_id}\n{self.hub_revision}\n{self._hub_fingerprints}\n".encode())

    def _read_local(self) -> dict[str, dict[str, GenerationExample]]:
        """Every file's questions pooled, per answer language; sets :attr:`language_note`."""
        if self._local is not None:
            return self._local
        records: list[tuple[str, dict]] = []
        versions: dict[str, str] = {}  # version -> first file that has it
        for path in self._files:
            data = _read_json(self.name, path)
            if not isinstance(data, list):
                raise BenchmarkDataError(f"{self.name}: {str(path)!r} holds a JSON {type(data).__name__}; expected "
                                         f"{MINTAKA_LAYOUT}")
            for i, record in enumerate(data):
                where = f"{self.name}: {str(path)!r} record {i}"
                if (not isinstance(record, dict) or not {"id", "question", "translations", "answer"} <= set(record)
                        or not isinstance(record["answer"], dict)):
                    raise BenchmarkDataError(f"{where}: expected a Mintaka record with id, question, translations "
                                             f"and answer")
                version = _mintaka_answer_version(record)
                if version is not None:
                    versions.setdefault(version, path.name)
                records.append((where, record))
        if len(versions) > 1:
            raise BenchmarkDataError(f"{self.name}: {self.location} mixes Mintaka v1.0 ({versions['v1.0']}: English "
                                     f"answer labels) and v1.1 ({versions['v1.1']}: per-language labels); keep one "
                                     f"version in the directory")
        question_langs = sorted(MINTAKA_LANGUAGES)
        if versions.get("v1.1"):
            answer_langs = question_langs
        else:
            answer_langs = ["en"]
            self.language_note = (
                f"the Mintaka v1.0 data in {self.location} ({', '.join(p.name for p in self._files)}) have English "
                f"answers only (an entity answer's label is one English string); their questions are translated "
                f"into {', '.join(c for c in question_langs if c != 'en')}, but without answers in those languages "
                f"they cannot be scored, so only 'en' is offered. {MINTAKA_MULTILINGUAL_ANSWERS}")
        by_lang: dict[str, dict[str, GenerationExample]] = {lang: {} for lang in answer_langs}
        for where, record in records:
            qid = str(record["id"])
            if qid in by_lang["en"]:
                raise BenchmarkDataError(f"{where} repeats question id {qid!r} (ids must be unique across the "
                                         f"{MINTAKA_GLOB} files of {self.location}: is one file there twice?)")
            for lang in answer_langs:
                question = record["question"] if lang == "en" else (record["translations"] or {}).get(lang)
                if not isinstance(question, str) or not question.strip():
                    raise BenchmarkDataError(f"{where}: question {qid!r} has no {lang!r} text; the languages "
                                             f"must be parallel")
                references = mintaka_references(record["answer"], record.get("complexityType", ""), lang)
                if not references:
                    raise BenchmarkDataError(f"{where}: question {qid!r} has no answer text in {lang!r} "
                                             f"(answer {record['answer']!r})")
                by_lang[lang][qid] = _example(qid, lang, question, references)
        self._local = by_lang
        return by_lang


def mintaka_hub_example(row: dict, lang: str, where: str) -> GenerationExample:
    """One row of the Hub dataset ``AmazonScience/mintaka`` (``id``, ``question``, ``answerText``,
    ``answerEntity: [{name, label}]``) as an example of ``lang``: references are the entity labels
    joined by ", " (when any), then ``answerText``."""
    labels = [e.get("label") for e in row.get("answerEntity") or []]
    references = _dedupe([", ".join(label.strip() for label in labels if label and label.strip()),
                          row.get("answerText")])
    if not references or not isinstance(row.get("question"), str) or not row["question"].strip():
        raise BenchmarkDataError(f"{where}: question {row.get('id')!r} lacks a question or an answer text")
    return _example(str(row["id"]), lang, row["question"], references)

