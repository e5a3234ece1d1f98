"""Benchmarks: the example type, the benchmark protocol and the registry.

A classification benchmark gives, per language code and split, a list of
:class:`Example` whose ``label`` indexes the benchmark's ``labels`` (official order).
Splits are named ``train``, ``dev`` and ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from xlt_runner.registry import Registry

if TYPE_CHECKING:
    from xlt_runner.config import BenchmarkConfig

#: ``benchmark.name`` -> reader class ``(cfg, cache_dir)``; each registers itself beside its
#: schema (``@BENCHMARKS.register("sib200", BenchmarkConfig)``), which its yaml names first.
BENCHMARKS: Registry = Registry("benchmark", "benchmark.name", ("xlt_runner.data",), group="benchmark")


class BenchmarkDataError(RuntimeError):
    """Benchmark data are missing or malformed; the message names the path and the fix."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into benchmark.labels
    lang: str  # language code, e.g. eng_Latn
    id: str  # stable within (lang, split), e.g. the upstream index_id


@dataclass(frozen=True)
class GenerationExample:
    """One question of a generation benchmark. ``id`` is the question's id, the same for its
    parallel versions in every language (splits are made on it, so no question leaks between
    splits in any language); ``prompt`` is the question text (what fills ``{q}`` of a template);
    ``references`` are every accepted answer in ``lang`` (at least one, none empty);
    ``completion`` is the training target (by default the first reference)."""
    id: str
    lang: str
    prompt: str
    references: tuple[str, ...]
    completion: str | None = None


class GenerationBenchmark(Protocol):
    name: str
    task: str  # "generation"
    location: str

    def languages(self) -> list[str]:
        """Codes available, sorted."""

    def load(self, lang: str, split: str) -> list[GenerationExample]:
        """Examples of one language and split, in a fixed order; raises BenchmarkDataError."""

    def fingerprint(self) -> str:
        """As :meth:`ClassificationBenchmark.fingerprint`."""


class ClassificationBenchmark(Protocol):
    name: str
    labels: list[str]  # official order
    location: str  # where the data are, for messages: "data directory '/x'" or "Hub dataset 'Davlan/sib200'"

    def languages(self) -> list[str]:
        """Codes available, sorted."""

    def load(self, lang: str, split: str) -> list[Example]:
        """Examples of one language and split in file order; raises BenchmarkDataError."""

    def fingerprint(self) -> str:
        """A hex digest of the data's content: equal for an identical copy elsewhere, different
        when any byte of any data file changes (keys tokenisation caches and result reuse). For
        a Hub dataset, what the ``datasets`` library fingerprints (see the benchmark's own docstring)."""


def data_location(benchmark) -> str:
    """Where ``benchmark``'s data are, for messages, with its ``language_note`` (why some
    languages are not offered) when it has one."""
    note = getattr(benchmark, "language_note", None)
    return f"{benchmark.location}; {note}" if note else benchmark.location


def build_benchmark(cfg: BenchmarkConfig, cache_dir: str):
    """The benchmark named ``cfg.name``; ``cache_dir`` is where generated data may be written."""
    return BENCHMARKS.get(cfg.name)(cfg, cache_dir)
