"""Benchmarks of the ``rag`` task kind: questions answered from a retrieved passage corpus.

Each gives, per language, :class:`~xlt_runner.data.GenerationExample` (``prompt``: the question;
``references``: every accepted answer, deduplicated, none empty). The passages come from
``benchmark.corpus`` (:class:`~xlt_runner.rag.corpus.CorpusConfig`), which the pipeline loads with
:func:`~xlt_runner.rag.corpus.load_corpus`; a benchmark's :meth:`fingerprint` covers its question
data only, and the pipeline combines it with the corpus's own fingerprint.

* ``mkqa``: MKQA through the same reader as ``mkqa_cbqa`` (:class:`~xlt_runner.data.qa.MkqaCbqa`,
  registered a second time with a schema that adds the corpus), so its splits follow that reader's
  rule (``test_size``, ``dev_size``, ``split_seed``).
* ``xor_tydi``: XOR-TyDi QA (Asai et al., 2021), 7 languages, each with its own questions (not
  parallel).
* ``rag_local``: a query file whose rows name their gold passages, for retrieval recall@k.

``xor_tydi`` and ``rag_local`` are evaluation-only: every question of a language is in split
``test`` (``benchmark.max_eval_examples_per_language`` caps them; ``test_size``, ``dev_size`` and
``split_seed`` are not used), and asking for ``train`` or ``dev`` is a BenchmarkDataError. A
question without a non-empty answer is left out and counted (``dropped_questions``, explained in
``language_note``).
"""
from __future__ import annotations

import difflib
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from xlt_runner.config import ConfigError, GenerationBenchmarkConfig
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, GenerationExample
from xlt_runner.data.languages import LanguageTable
from xlt_runner.data.qa import (MKQA_LANGUAGES, MkqaCbqa, MkqaConfig, _dedupe, _example, _hub_dataset, _json_lines,
                                _local_root, language_table_from_sib200)
from xlt_runner.data.tsv_benchmark import _split_name
from xlt_runner.fileio import file_sha256
from xlt_runner.rag.corpus import Corpus, CorpusConfig

#: XOR-TyDi's codes: (name, script, the SIB-200 code whose metadata it takes).
XOR_TYDI_LANGUAGES = {
    "ar": ("Arabic", "Arab", "arb_Arab"), "bn": ("Bengali", "Beng", "ben_Beng"), "fi": ("Finnish", "Latn", "fin_Latn"),
    "ja": ("Japanese", "Jpan", "jpn_Jpan"), "ko": ("Korean", "Hang", "kor_Hang"), "ru": ("Russian", "Cyrl", "rus_Cyrl"),
    "te": ("Telugu", "Telu", "tel_Telu"),
}
#: ISO 639-1 codes a ``rag_local`` query file may use, with the same metadata (other codes are
#: accepted too, without metadata).
RAG_LOCAL_LANGUAGES = {**MKQA_LANGUAGES, **XOR_TYDI_LANGUAGES, "zh": ("Chinese", "Hans", "zho_Hans")}
XOR_TYDI_FILE = "xor_dev_full_v1_1.jsonl"
XOR_TYDI_LAYOUT = ('XOR-TyDi QA jsonl files (rows {"id", "question", "answers": [...], "lang", "split"}): '
                   f"{XOR_TYDI_FILE} (XOR-Full dev v1.1) or mia_2022_dev_xorqa.jsonl (MIA 2022)")
XOR_TYDI_LOCAL_EXAMPLE = "../shared/data/xor_tydi_qa"
RAG_LOCAL_LAYOUT = ('a jsonl file of queries {"qid", "lang", "question", "answers": [...], "gold_pid": "<pid>" or '
                    '[...], "split" (optional)}')
RAG_LOCAL_EXAMPLE = "../shared/data/wiki_passages/derived/queries.jsonl"


@dataclass
class RagBenchmarkConfig(GenerationBenchmarkConfig):
    """A benchmark of the ``rag`` task kind: the question data and the passage ``corpus``."""
    task: str = "rag"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    max_new_tokens: int = 32


@dataclass
class MkqaRagConfig(RagBenchmarkConfig, MkqaConfig):
    """MKQA for RAG: :class:`~xlt_runner.data.qa.MkqaConfig`'s fields with the corpus; only the
    test split is evaluated, so no dev questions are held out by default."""
    dev_size: int = 0


BENCHMARKS.register("mkqa", MkqaRagConfig)(MkqaCbqa)


@dataclass
class XorTydiConfig(RagBenchmarkConfig):
    """XOR-TyDi QA: ``file`` in ``data_dir``, or (``data_dir`` unset) the Hub dataset ``hub_id``
    (``hub_config``, ``hub_split``, ``hub_revision``) with the same columns."""
    file: str = XOR_TYDI_FILE
    hub_config: Optional[str] = None
    hub_split: str = "validation"
    hub_revision: Optional[str] = None


@dataclass
class RagLocalConfig(RagBenchmarkConfig):
    """Queries with gold passage ids from ``queries_path``; ``query_split``: keep only the rows whose
    ``split`` equals it (null: every row)."""
    queries_path: Optional[str] = None
    query_split: Optional[str] = None


class _EvaluationQuestions:
    """Per-language questions served as split ``test`` only. A subclass sets ``location`` and
    implements ``_rows() -> ((where, row), ...)``, ``_row_language(where, row) -> str``,
    ``_row_example(where, row, lang) -> (question id, GenerationExample | None)`` (None: no
    answer, dropped) and ``_digest(digest)``."""

    def __init__(self, cfg: RagBenchmarkConfig, location: str):
        self.name, self.task, self.location = cfg.name, cfg.task, location
        self.dropped_questions = 0  # questions left out for want of a non-empty answer
        self._dropped_by_lang: Counter = Counter()
        self._by_lang: dict[str, dict[str, GenerationExample]] | None = None
        self._fingerprint: str | None = None

    @property
    def language_note(self) -> str | None:
        """How many questions were left out, per language (None when none), for messages."""
        if not self.dropped_questions:
            return None
        per_lang = ", ".join(f"{lang} {n:,}" for lang, n in sorted(self._dropped_by_lang.items()))
        return f"{self.dropped_questions:,} questions without a non-empty answer left out ({per_lang})"

    def languages(self) -> list[str]:
        """The languages of the questions, sorted (reads the data)."""
        return sorted(self._questions())

    def load(self, lang: str, split: str) -> list[GenerationExample]:
        """Every question of ``lang`` in source order, for split ``test``; ``train`` and ``dev``
        raise BenchmarkDataError (evaluation-only)."""
        split = _split_name(split)
        if split != "test":
            raise BenchmarkDataError(
                f"{self.name}: rag benchmarks are evaluation-only: {self.location} serves every question of a "
                f"language as split 'test' and has no {split!r} split to train or validate on. Evaluate a rag "
                f"method on it (benchmark.max_eval_examples_per_language caps the questions)")
        questions = self._questions()
        if lang not in questions:
            available = sorted(questions)
            close = difflib.get_close_matches(lang, available, n=5, cutoff=0.5)
            raise BenchmarkDataError(f"{self.name}: no language {lang!r} in {self.location} (it has "
                                     f"{', '.join(available)}; closest: {close or 'none'}); check the languages "
                                     f"config")
        return list(questions[lang].values())

    def fingerprint(self) -> str:
        """sha256 (hex) over the name and the question data (see ``_digest``); not the corpus."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.name}\n".encode())
            self._digest(digest)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _questions(self) -> dict[str, dict[str, GenerationExample]]:
        """language -> question id -> example, read once; ids unique across languages."""
        if self._by_lang is None:
            by_lang: dict[str, dict[str, GenerationExample]] = {}
            seen: dict[str, str] = {}
            for where, row in self._rows():
                lang = self._row_language(where, row)
                qid, example = self._row_example(where, row, lang)
                if qid in seen:
                    raise BenchmarkDataError(f"{where} repeats question id {qid!r} (first at {seen[qid]}); ids must "
                                             f"be unique")
                seen[qid] = where
                if example is None:
                    self._dropped_by_lang[lang] += 1
                    continue
                by_lang.setdefault(lang, {})[qid] = example
            self.dropped_questions = sum(self._dropped_by_lang.values())
            if not by_lang:
                raise BenchmarkDataError(f"{self.name}: {self.location} holds no question with an answer"
                                         + (f" ({self.language_note})" if self.dropped_questions else ""))
            self._by_lang = by_lang
        return self._by_lang

    def _rows(self) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError

    def _row_language(self, where: str, row: Any) -> str:
        raise NotImplementedError

    def _row_example(self, where: str, row: Any, lang: str) -> tuple[str, GenerationExample | None]:
        raise NotImplementedError

    def _digest(self, digest) -> None:
        raise NotImplementedError


def _question_example(where: str, row: Any, id_key: str, lang: str) -> tuple[str, GenerationExample | None]:
    """``(question id, example)`` of a row ``{id_key, "question", "answers": [...]}``; the example
    is None when no answer is non-empty. BenchmarkDataError (naming ``where``) for a missing id,
    question or answer list."""
    qid = row.get(id_key)
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise BenchmarkDataError(f"{where}: no question id {id_key!r} (got {qid!r})")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkDataError(f"{where}: question {qid!r} has no question text")
    answers = row.get("answers")
    if not isinstance(answers, list):
        raise BenchmarkDataError(f"{where}: answers of {qid!r} must be a list of strings; got {answers!r}")
    references = _dedupe(answers)
    return str(qid), _example(str(qid), lang, question, references) if references else None


def _row_lang(where: str, row: Any, layout: str) -> str:
    if not isinstance(row, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object; the layout is {layout}")
    lang = row.get("lang")
    if not isinstance(lang, str) or not lang.strip():
        raise BenchmarkDataError(f"{where}: no \"lang\" (got {lang!r}); every row names its language")
    return lang


# ----------------------------------------------------------------------------- XOR-TyDi
@lru_cache(maxsize=None)
def _xor_tydi_table() -> LanguageTable:
    return language_table_from_sib200(XOR_TYDI_LANGUAGES)


@BENCHMARKS.register("xor_tydi", XorTydiConfig)
class XorTydi(_EvaluationQuestions):
    """XOR-TyDi QA: information-seeking questions in ar, bn, fi, ja, ko, ru, te with short answers
    in the question's language; each language has its own questions.

    Sources, by ``cfg.data_dir``: ``cfg.file`` in that directory (``xor_dev_full_v1_1.jsonl``: the
    XOR-Full dev set, 3,473 questions; ``mia_2022_dev_xorqa.jsonl``: MIA 2022's re-split, 5,599),
    or, unset, the Hub dataset ``cfg.hub_id`` with the same columns. Question ids are the rows'
    ``id`` (unique across languages); a question whose answers are all empty is dropped and
    counted."""

    def __init__(self, cfg: XorTydiConfig, cache_dir: str):
        self.path: Path | None = None
        if cfg.data_dir:
            root = _local_root(cfg.name, cfg.data_dir, XOR_TYDI_LAYOUT, XOR_TYDI_LOCAL_EXAMPLE)
            self.path = root / cfg.file
            if not self.path.is_file():
                present = sorted(p.name for p in root.glob("*.jsonl"))
                raise BenchmarkDataError(f"{cfg.name}: no {cfg.file} in data directory {str(root)!r} (it has "
                                         f"{present or 'no jsonl file'}); set benchmark.file to one of them or point "
                                         f"benchmark.data_dir at {XOR_TYDI_LAYOUT}")
            location = f"file {str(self.path)!r}"
        elif cfg.hub_id:
            location = f"Hub dataset {cfg.hub_id!r} split {cfg.hub_split!r}"
        else:
            raise ConfigError(f"{cfg.name} needs benchmark.data_dir (a directory of {XOR_TYDI_LAYOUT}; e.g. "
                              f"benchmark.data_dir={XOR_TYDI_LOCAL_EXAMPLE}) or benchmark.hub_id")
        super().__init__(cfg, location)
        self.hub_id, self.hub_config, self.hub_split, self.hub_revision = (
            cfg.hub_id, cfg.hub_config, cfg.hub_split, cfg.hub_revision)
        self._hub_fingerprint: str | None = None

    @staticmethod
    def language_table() -> LanguageTable:
        """XOR-TyDi's 7 codes with SIB-200 metadata."""
        return _xor_tydi_table()

    def _rows(self) -> Iterator[tuple[str, Any]]:
        if self.path is not None:
            for line, row in _json_lines(self.name, self.path):
                yield f"{self.name}: {str(self.path)!r} line {line}", row
            return
        dataset = _hub_dataset(self.name, self.hub_id, self.hub_config, self.hub_split, self.hub_revision,
                               f"benchmark.data_dir={XOR_TYDI_LOCAL_EXAMPLE}")
        self._hub_fingerprint = getattr(dataset, "_fingerprint", None)
        for i, row in enumerate(dataset):
            yield f"{self.name}: {self.hub_id} row {i}", row

    def _row_language(self, where: str, row: Any) -> str:
        return _row_lang(where, row, XOR_TYDI_LAYOUT)

    def _row_example(self, where: str, row: Any, lang: str) -> tuple[str, GenerationExample | None]:
        return _question_example(where, row, "id", lang)

    def _digest(self, digest) -> None:
        """Local: the file's name and content sha256. Hub: id, config, split, revision and the
        ``datasets`` fingerprint of the split."""
        if self.path is not None:
            digest.update(f"{self.path.name}\t{file_sha256(self.path)}\n".encode())
        else:
            self._questions()
            digest.update(f"{self.hub_id}\n{self.hub_config}\n{self.hub_split}\n{self.hub_revision}\n"
                          f"{self._hub_fingerprint}\n".encode())


# ---------------------------------------------------------------------------- rag_local
@BENCHMARKS.register("rag_local", RagLocalConfig)
class RagLocal(_EvaluationQuestions):
    """Queries with gold passage ids from a local jsonl file (``cfg.queries_path``; the copy here:
    ``../shared/data/wiki_passages/derived/queries.jsonl``, matching the corpus ``passages.jsonl``
    beside it). Rows ``{"qid", "lang", "question", "answers", "gold_pid" (or "gold_pids"): a pid or a
    list, "split"?}``; ``cfg.query_split`` keeps the rows of one ``split``. Languages are the rows'
    ``lang``; :meth:`gold_passages` gives the gold pids for retrieval recall@k."""

    def __init__(self, cfg: RagLocalConfig, cache_dir: str):
        for key in ("data_dir", "hub_id"):
            if getattr(cfg, key):
                raise ConfigError(f"{cfg.name} reads benchmark.queries_path, not benchmark.{key}; set "
                                  f"benchmark.{key}=null and benchmark.queries_path=<{RAG_LOCAL_LAYOUT}>")
        if not cfg.queries_path:
            raise ConfigError(f"{cfg.name} needs benchmark.queries_path: {RAG_LOCAL_LAYOUT} (e.g. "
                              f"benchmark.queries_path={RAG_LOCAL_EXAMPLE})")
        self.path = Path(cfg.queries_path).expanduser()
        if not self.path.is_file():
            raise BenchmarkDataError(f"{cfg.name}: benchmark.queries_path={cfg.queries_path!r}: no such file; "
                                     f"expected {RAG_LOCAL_LAYOUT} (e.g. benchmark.queries_path={RAG_LOCAL_EXAMPLE})")
        self.query_split = cfg.query_split
        split_note = f" (rows of split {cfg.query_split!r})" if cfg.query_split is not None else ""
        super().__init__(cfg, f"query file {str(self.path)!r}{split_note}")
        self._gold: dict[str, tuple[str, ...]] = {}

    def language_table(self) -> LanguageTable:
        """The data's codes that :data:`RAG_LOCAL_LANGUAGES` knows, with SIB-200 metadata (others
        are still accepted as the data's own codes)."""
        known = {code: RAG_LOCAL_LANGUAGES[code] for code in self.languages() if code in RAG_LOCAL_LANGUAGES}
        return language_table_from_sib200(known)

    def gold_passages(self, question_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """question id -> its gold pids (in the row's order); BenchmarkDataError for an unknown id."""
        self._questions()
        wanted = list(question_ids)
        unknown = [qid for qid in wanted if qid not in self._gold]
        if unknown:
            raise BenchmarkDataError(f"{self.name}: {len(unknown):,} question ids are not in {self.location}, "
                                     f"e.g. {unknown[:3]}")
        return {qid: self._gold[qid] for qid in wanted}

    def check_gold_in_corpus(self, corpus: Corpus, languages: Optional[Iterable[str]] = None) -> list[str]:
        """The gold pids (of the questions of ``languages``; None: all) that ``corpus`` lacks,
        sorted; empty when every one is there."""
        questions = self._questions()
        langs = list(languages) if languages is not None else list(questions)
        wanted = {pid for lang in langs for qid in questions.get(lang, {}) for pid in self._gold[qid]}
        return sorted(wanted - corpus.by_pid.keys())

    def _rows(self) -> Iterator[tuple[str, Any]]:
        splits: Counter = Counter()
        for line, row in _json_lines(self.name, self.path):
            if self.query_split is not None:
                split = row.get("split") if isinstance(row, dict) else None
                splits[split] += 1
                if split != self.query_split:
                    continue
            yield f"{self.name}: {str(self.path)!r} line {line}", row
        if self.query_split is not None and self.query_split not in splits:
            raise BenchmarkDataError(f"{self.name}: benchmark.query_split={self.query_split!r} keeps no row of "
                                     f"{str(self.path)!r}, whose splits are {dict(splits.most_common())}; set it to "
                                     f"one of them or to null (every row)")

    def _row_language(self, where: str, row: Any) -> str:
        return _row_lang(where, row, RAG_LOCAL_LAYOUT)

    def _row_example(self, where: str, row: Any, lang: str) -> tuple[str, GenerationExample | None]:
        qid, example = _question_example(where, row, "qid", lang)
        gold = row.get("gold_pids", row.get("gold_pid"))
        gold_pids = (gold,) if isinstance(gold, str) else tuple(gold) if isinstance(gold, list) else ()
        if not gold_pids or any(not isinstance(pid, str) or not pid for pid in gold_pids):
            raise BenchmarkDataError(f"{where}: query {qid!r} has gold pids {gold!r}; each query needs "
                                     f"\"gold_pid\" (a passage id) or \"gold_pids\" (a non-empty list of them)")
        if example is not None:
            self._gold[qid] = tuple(dict.fromkeys(gold_pids))
        return qid, example

    def _digest(self, digest) -> None:
        """The query file's name and content sha256 and ``query_split``."""
        digest.update(f"{self.path.name}\t{file_sha256(self.path)}\nquery_split={self.query_split}\n".encode())
