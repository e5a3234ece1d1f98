"""The passage corpus of a RAG benchmark: read from a jsonl file or a Hub dataset, filtered, fingerprinted.

A record is ``{"pid", "text", "title"?, "lang"?}`` (a Hub dataset may name the id column ``id``):
``pid`` unique within the corpus, ``text`` non-empty; ``title`` defaults to "" and ``lang`` (the
language the corpus declares, e.g. ``en``) to None. ``languages`` keeps the passages whose
declared ``lang`` is listed; ``max_passages`` keeps the first N of those in source order (reading
stops there). The fingerprint is the sha256 of the kept passages' ``(pid, lang, title, text)`` in
order: the same for a copy elsewhere or on the Hub with the same content, different when a filter,
the cap or any kept passage changes (it keys the index cache).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Optional

from xlt_runner.config import ConfigError
from xlt_runner.data import BenchmarkDataError
from xlt_runner.data.qa import _json_lines
from xlt_runner.rag import Passage

LOCAL_CORPUS_EXAMPLE = "../shared/data/wiki_passages/derived/passages.jsonl"
RECORD_LAYOUT = '{"pid", "text", "title" (optional), "lang" (optional)}'


@dataclass
class CorpusConfig:
    """Where the passages are and which to keep. ``path``: a jsonl file (one record per line,
    ``.gz`` allowed; wins over ``hub_id``); else ``hub_id`` (``hub_config``, ``hub_split``,
    ``hub_revision``) through ``datasets.load_dataset``. ``languages``: keep only passages whose
    declared ``lang`` is listed (null: all). ``max_passages``: keep the first N after that filter."""
    path: Optional[str] = None
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    hub_revision: Optional[str] = None
    languages: Optional[list[str]] = None
    max_passages: Optional[int] = None


@dataclass(frozen=True)
class Corpus:
    """The kept passages in source order, the sha256 (hex) of their content, and where they came
    from (for messages and records)."""
    passages: list[Passage]
    fingerprint: str
    location: str

    @cached_property
    def by_pid(self) -> dict[str, Passage]:
        """pid -> passage."""
        return {p.pid: p for p in self.passages}

    @cached_property
    def language_counts(self) -> dict[Optional[str], int]:
        """Declared language (None: undeclared) -> number of passages, most frequent first."""
        return dict(Counter(p.lang for p in self.passages).most_common())


#: Corpora read in this process, by what they were read from (a run fingerprints its data and
#: then retrieves from the same corpus: one read).
_READ: dict[tuple, Corpus] = {}


def load_corpus(cfg: CorpusConfig, key: str = "benchmark.corpus") -> Corpus:
    """The corpus ``cfg`` describes (read once per process while its file is unchanged: the key
    holds the file's size and modification time); see :func:`read_corpus`."""
    sources = (cfg.path, cfg.hub_id, cfg.hub_config, cfg.hub_split, cfg.hub_revision,
               None if cfg.languages is None else tuple(cfg.languages), cfg.max_passages)
    path = Path(cfg.path).expanduser() if cfg.path else None
    stat = path.stat() if path is not None and path.is_file() else None
    memo = (sources, (stat.st_size, stat.st_mtime_ns) if stat else None)
    if memo not in _READ:
        _READ[memo] = read_corpus(cfg, key)
    return _READ[memo]


def read_corpus(cfg: CorpusConfig, key: str = "benchmark.corpus") -> Corpus:
    """The corpus ``cfg`` describes; ``key`` is its place in the run config, for messages.

    Raises ConfigError when no source is set or a filter is empty, and BenchmarkDataError for a
    missing file, a line that is not JSON, a record without ``pid`` or ``text``, a repeated
    ``pid``, and an empty result (an empty source, or a language filter that keeps nothing: the
    message lists the languages the corpus has)."""
    if cfg.max_passages is not None and cfg.max_passages < 1:
        raise ConfigError(f"{key}.max_passages={cfg.max_passages} must be at least 1 (null: every passage)")
    if cfg.languages is not None and not list(cfg.languages):
        raise ConfigError(f"{key}.languages is empty; list the passage languages to keep (e.g. [en, ko]) "
                          f"or set it to null to keep every passage")
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise BenchmarkDataError(f"{key}.path={cfg.path!r}: no such file; point it at a jsonl file of "
                                     f"{RECORD_LAYOUT} (e.g. {key}.path={LOCAL_CORPUS_EXAMPLE})")
        location = f"corpus file {str(path)!r}"
        records = _file_records(key, path)
    elif cfg.hub_id:
        location = (f"Hub dataset {cfg.hub_id!r}{f' config {cfg.hub_config!r}' if cfg.hub_config else ''} "
                    f"split {cfg.hub_split!r}")
        records = _hub_records(cfg, key, location)
    else:
        raise ConfigError(f"{key} has no source: set {key}.path (a jsonl file of {RECORD_LAYOUT}, e.g. "
                          f"{key}.path={LOCAL_CORPUS_EXAMPLE}) or {key}.hub_id (a Hub dataset)")

    wanted = set(cfg.languages) if cfg.languages is not None else None
    kept: list[Passage] = []
    seen: dict[str, str] = {}  # pid -> where it was read
    declared: Counter = Counter()
    for where, record in records:
        passage = _passage(where, record)
        if passage.pid in seen:
            raise BenchmarkDataError(f"{where} repeats pid {passage.pid!r} (first at {seen[passage.pid]}); pids must "
                                     f"be unique within the corpus: remove or rename the duplicate")
        seen[passage.pid] = where
        declared[passage.lang] += 1
        if wanted is None or passage.lang in wanted:
            kept.append(passage)
            if cfg.max_passages is not None and len(kept) == cfg.max_passages:
                break
    if not seen:
        raise BenchmarkDataError(f"{key}: {location} holds no passages; expected one {RECORD_LAYOUT} per line")
    if not kept:
        has = ", ".join(f"{lang if lang is not None else 'undeclared'} ({n:,})" for lang, n in declared.most_common())
        raise BenchmarkDataError(f"{key}.languages={list(cfg.languages)} keeps none of the {len(seen):,} passages "
                                 f"of {location}, whose declared languages are: {has}; list some of those or set "
                                 f"{key}.languages=null")
    return Corpus(passages=kept, fingerprint=corpus_fingerprint(kept), location=location)


def corpus_fingerprint(passages: list[Passage]) -> str:
    """sha256 (hex) over each passage's ``[pid, lang, title, text]`` as one JSON line, in order."""
    digest = hashlib.sha256()
    for p in passages:
        digest.update((json.dumps([p.pid, p.lang, p.title, p.text], ensure_ascii=False) + "\n").encode())
    return digest.hexdigest()


def _passage(where: str, record: Any) -> Passage:
    """One record as a Passage; BenchmarkDataError naming ``where`` when it lacks pid or text."""
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object {RECORD_LAYOUT}; got {type(record).__name__}")
    pid = record.get("pid", record.get("id"))
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise BenchmarkDataError(f"{where}: no pid (got {pid!r}); each passage needs a unique string \"pid\"")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BenchmarkDataError(f"{where}: passage {pid!r} has no text (got {text!r}); give it a non-empty "
                                 f"\"text\" or remove the record")
    title, lang = record.get("title"), record.get("lang")
    if title is not None and not isinstance(title, str):
        raise BenchmarkDataError(f"{where}: passage {pid!r} has title {title!r}; a title is a string or absent")
    if lang is not None and (not isinstance(lang, str) or not lang.strip()):
        raise BenchmarkDataError(f"{where}: passage {pid!r} has lang {lang!r}; a lang is a code (e.g. \"en\") "
                                 f"or absent")
    return Passage(pid=str(pid), title=title or "", text=text, lang=lang)


def _file_records(key: str, path: Path) -> Iterator[tuple[str, Any]]:
    for line, record in _json_lines(key, path):
        yield f"{key}: {str(path)!r} line {line}", record


def _hub_records(cfg: CorpusConfig, key: str, location: str) -> Iterator[tuple[str, Any]]:
    """The rows of the Hub dataset; a failure to load it (offline, not cached) names the local way."""
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.hub_split, revision=cfg.hub_revision)
    except (OSError, RuntimeError, ValueError) as err:  # ConnectionError, DatasetNotFoundError, offline
        raise BenchmarkDataError(
            f"{key}: could not load the {location} ({type(err).__name__}: {err}). Use a local jsonl copy instead "
            f"({key}.path=<file of {RECORD_LAYOUT}>, e.g. {key}.path={LOCAL_CORPUS_EXAMPLE}), or run once online to "
            f"fill the datasets cache and then set HF_HUB_OFFLINE=1") from err
    for i, row in enumerate(dataset):
        yield f"{key}: {location} row {i}", row
