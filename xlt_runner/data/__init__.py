"""Benchmarks: the example type, the benchmark protocol and the registry.

A classification benchmark gives, per language code and split, a list of
:class:`Example` whose ``label`` indexes the benchmark's ``labels`` (official order).
Splits are named ``train``, ``dev`` and ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from xlt_runner.config import ConfigError

if TYPE_CHECKING:
    from xlt_runner.config import BenchmarkConfig

BENCHMARK_NAMES: tuple[str, ...] = ("sib200", "cldr_demo")


class BenchmarkDataError(RuntimeError):
    """Benchmark data are missing or malformed; the message names the path and the fix."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into benchmark.labels
    lang: str  # language code, e.g. eng_Latn
    id: str  # stable within (lang, split), e.g. the upstream index_id


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


def build_benchmark(cfg: BenchmarkConfig, cache_dir: str) -> ClassificationBenchmark:
    """The benchmark named ``cfg.name``; ``cache_dir`` is where generated data may be written."""
    if cfg.name == "sib200":
        from xlt_runner.data.tsv_benchmark import Sib200
        return Sib200(cfg, cache_dir)
    if cfg.name == "cldr_demo":
        from xlt_runner.data.cldr_demo import CldrDemo
        return CldrDemo(cfg, cache_dir)
    raise ConfigError(f"unknown benchmark {cfg.name!r}; choose one of {', '.join(BENCHMARK_NAMES)} "
                      f"(override: benchmark=sib200)")
