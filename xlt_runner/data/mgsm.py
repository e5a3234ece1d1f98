"""MGSM (Shi et al., 2022): 250 grade-school math problems, parallel in 11 languages, test only.

A prompt is ``benchmark.shots`` (0-8, default 2) of the official per-language exemplars, then the
problem, each as the exemplars write it (en: ``Question: ...`` then ``Step-by-Step Answer: ...``;
zh: ``问题：...`` then ``逐步解答：...``), ending with the answer prefix for the model to continue.
With ``chain_of_thought: false`` an exemplar's answer is the prefix and the answer sentence only
(en ``Step-by-Step Answer: The answer is 11.``). Exemplars are the first ``shots`` by their id, the
same in every language. The model's number is read by
:func:`xlt_runner.metrics.math_answers.extract_answer` (task kind ``math``); the reference is the
gold number (thousands separators allowed). Use a template that passes the prompt through
unchanged (``model.format=plain model.template='{q} {a}'``, as ``experiment=mgsm_cpu`` does); a chat
format puts the whole prompt in the user turn.

Sources, by ``benchmark.data_dir``: a directory of ``mgsm_<lang>.tsv`` (no header, ``question<TAB>
answer``, 250 rows each, read with ``QUOTE_NONE``: google-research/url-nlp ``mgsm/``) and
``mgsm_exemplars.jsonl`` (``{"lang", "exemplar_id", "q", "a", "number_answer"}``, derived from its
``exemplars.py``; the copy in ``../shared/data/mgsm``); or unset: the Hub dataset ``hub_id``
(``juletxara/mgsm``, one config per language: ``test`` rows ``{question, answer_number}``, ``train``
rows the 8 exemplars ``{question, answer, answer_number}`` with their prefixes).
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from xlt_runner.config import ConfigError, GenerationBenchmarkConfig
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, GenerationExample
from xlt_runner.data.languages import LanguageTable
from xlt_runner.data.qa import _hub_dataset, _json_lines, _local_root, language_table_from_sib200
from xlt_runner.data.tsv_benchmark import _split_name
from xlt_runner.fileio import file_sha256
from xlt_runner.metrics.math_answers import answer_phrases, parse_number

#: MGSM's codes: (name, script, the SIB-200 code whose family, region and Joshi class it takes).
MGSM_LANGUAGES = {
    "bn": ("Bengali", "Beng", "ben_Beng"), "de": ("German", "Latn", "deu_Latn"), "en": ("English", "Latn", "eng_Latn"),
    "es": ("Spanish", "Latn", "spa_Latn"), "fr": ("French", "Latn", "fra_Latn"), "ja": ("Japanese", "Jpan", "jpn_Jpan"),
    "ru": ("Russian", "Cyrl", "rus_Cyrl"), "sw": ("Swahili", "Latn", "swh_Latn"), "te": ("Telugu", "Telu", "tel_Telu"),
    "th": ("Thai", "Thai", "tha_Thai"), "zh": ("Chinese", "Hans", "zho_Hans"),
}
MGSM_QUESTIONS = 250
MAX_SHOTS = 8
EXEMPLARS_FILE = "mgsm_exemplars.jsonl"
LOCAL_LAYOUT = ("MGSM files mgsm_<lang>.tsv (question<TAB>answer, google-research/url-nlp mgsm/) and "
                "mgsm_exemplars.jsonl ({lang, exemplar_id, q, a, number_answer})")
LOCAL_EXAMPLE = "../shared/data/mgsm"
_PREFIX = re.compile(r"^(.*?[:：]\s*)")


@dataclass(frozen=True)
class Exemplar:
    question: str  # with the language's question prefix ("Question: ...")
    answer: str  # with the answer prefix ("Step-by-Step Answer: ...")
    number: int


def prefix_of(text: str, where: str) -> str:
    """The prefix up to and including the first colon (ASCII or full-width) and the space after it."""
    found = _PREFIX.match(text)
    if not found:
        raise BenchmarkDataError(f"{where}: {text[:40]!r} has no 'Prefix:' to take the language's wording from")
    return found.group(1)


def build_prompt(shown: list[Exemplar], wording: Exemplar, question: str, lang: str, chain_of_thought: bool) -> str:
    """The few-shot prompt: each ``shown`` exemplar's question and answer, a blank line between,
    then ``question`` under the question prefix of ``wording`` (an exemplar of the language) and
    its answer prefix to continue from."""
    where = f"mgsm {lang} exemplar"
    q_prefix, a_prefix = prefix_of(wording.question, where), prefix_of(wording.answer, where)
    blocks = [f"{e.question}\n{e.answer if chain_of_thought else prefix_of(e.answer, where) + _answer_sentence(e, lang)}"
              for e in shown]
    return "\n\n".join([*blocks, f"{q_prefix}{question.strip()}\n{a_prefix.rstrip()}"])


def _answer_sentence(exemplar: Exemplar, lang: str) -> str:
    """The exemplar's closing answer sentence as it words it (en ``The answer is 11.``): from the
    last answer phrase of ``lang`` to the end; the bare number if it has none."""
    lowered = exemplar.answer.lower()
    for phrase in answer_phrases(lang):
        at = lowered.rfind(phrase)
        if at >= 0:
            return exemplar.answer[at:].strip()
    return str(exemplar.number)


def _check_shots(shots: int) -> None:
    if not 0 <= shots <= MAX_SHOTS:
        raise ConfigError(f"benchmark.shots={shots}: MGSM has {MAX_SHOTS} exemplars per language (0-{MAX_SHOTS})")


@lru_cache(maxsize=None)
def _mgsm_table() -> LanguageTable:
    return language_table_from_sib200(MGSM_LANGUAGES)


@dataclass
class MgsmConfig(GenerationBenchmarkConfig):
    """MGSM; ``shots``: exemplars per prompt (0-8); ``chain_of_thought``: exemplars with their
    step-by-step answers (else the answer sentence only); ``hub_revision``: of ``hub_id``."""
    task: str = "math"
    shots: int = 2
    chain_of_thought: bool = True
    hub_revision: Optional[str] = None


@BENCHMARKS.register("mgsm", MgsmConfig)
class Mgsm:
    """MGSM as a ``math`` benchmark: split ``test`` only (the 250 problems); ids are the row
    numbers, the same problem in every language."""

    def __init__(self, cfg: MgsmConfig, cache_dir: str):
        _check_shots(cfg.shots)
        self.name, self.task = cfg.name, cfg.task
        self.shots, self.chain_of_thought = cfg.shots, cfg.chain_of_thought
        self.hub_id, self.hub_revision = cfg.hub_id, cfg.hub_revision
        self.root = _local_root(cfg.name, cfg.data_dir, LOCAL_LAYOUT, LOCAL_EXAMPLE) if cfg.data_dir else None
        if self.root is None and not cfg.hub_id:
            raise ConfigError(f"{cfg.name} needs benchmark.data_dir ({LOCAL_LAYOUT}) or benchmark.hub_id "
                              "(juletxara/mgsm)")
        self.location = f"data directory {str(self.root)!r}" if self.root else f"Hub dataset {cfg.hub_id!r}"
        self._cache: dict[str, list[GenerationExample]] = {}
        self._exemplars: dict[str, list[Exemplar]] | None = None

    @staticmethod
    def check_config(cfg) -> None:
        """Before any model loads: the shot count, and no training on MGSM (it has only a test split)."""
        from xlt_runner.methods import method_class
        _check_shots(cfg.benchmark.shots)
        trains = method_class(cfg.method.family, "generation").trains and "fit" in cfg.regime.stages
        if trains and cfg.get("train_data") is None:
            raise ConfigError(f"method={cfg.method.name} trains, but MGSM has only a test split (its {MGSM_QUESTIONS} "
                              "problems): train on other data (train_data=..., e.g. GSM8K) or evaluate with "
                              "method=prompting (method.init_from=<weights> for a tuned model)")

    @staticmethod
    def language_table() -> LanguageTable:
        return _mgsm_table()

    def languages(self) -> list[str]:
        if self.root is None:
            return sorted(MGSM_LANGUAGES)
        return sorted(p.name[len("mgsm_"):-len(".tsv")] for p in self.root.glob("mgsm_*.tsv"))

    def fingerprint(self) -> str:
        """sha256 over the prompt settings and every data file's content (Hub: id and revision)."""
        digest = hashlib.sha256(f"{self.name}\nshots={self.shots}\ncot={self.chain_of_thought}\n".encode())
        if self.root is None:
            digest.update(f"{self.hub_id}@{self.hub_revision}".encode())
        else:
            for path in sorted(self.root.glob("mgsm_*")):
                digest.update(f"{path.name}\t{file_sha256(path)}\n".encode())
        return digest.hexdigest()

    def load(self, lang: str, split: str) -> list[GenerationExample]:
        split = _split_name(split)
        if split != "test":
            raise BenchmarkDataError(f"{self.name}: MGSM has only a test split (its {MGSM_QUESTIONS} problems); "
                                     f"no {split} split to train or validate on. Evaluate with method=prompting, or "
                                     "train on other math data (GSM8K train) first and test here")
        if lang not in self._cache:
            if lang not in self.languages():
                raise BenchmarkDataError(f"{self.name}: no language {lang!r} in {self.location} (it has "
                                         f"{', '.join(self.languages())})")
            exemplars = self.exemplars(lang)
            self._cache[lang] = [
                GenerationExample(id=str(i), lang=lang, references=(answer,), completion=answer,
                                  prompt=build_prompt(exemplars[:self.shots], exemplars[0], question, lang,
                                                      self.chain_of_thought))
                for i, (question, answer) in enumerate(self._problems(lang))]
        return self._cache[lang]

    def exemplars(self, lang: str) -> list[Exemplar]:
        """The language's 8 exemplars in id order; BenchmarkDataError if the language has none."""
        if self._exemplars is None:
            self._exemplars = self._read_exemplars() if self.root is not None else {}
        if self.root is None and lang not in self._exemplars:  # the Hub: one config per language, read when needed
            rows = _hub_dataset(self.name, self.hub_id, lang, "train", self.hub_revision, LOCAL_EXAMPLE)
            self._exemplars[lang] = [Exemplar(r["question"], r["answer"], int(r["answer_number"])) for r in rows]
        found = self._exemplars.get(lang, [])
        if len(found) < max(self.shots, 1):
            raise BenchmarkDataError(f"{self.name}: {len(found)} exemplars for {lang!r} in {self.location}; "
                                     f"benchmark.shots={self.shots} needs {max(self.shots, 1)}")
        return found

    def _read_exemplars(self) -> dict[str, list[Exemplar]]:
        """Every language's exemplars from the local ``mgsm_exemplars.jsonl``, in id order."""
        out: dict[str, list[tuple[int, Exemplar]]] = {}
        path = self.root / EXEMPLARS_FILE
        if not path.is_file():
            raise BenchmarkDataError(f"{self.name}: no {EXEMPLARS_FILE} in {self.location}; expected {LOCAL_LAYOUT}")
        for number, row in _json_lines(self.name, path):
            try:
                out.setdefault(row["lang"], []).append(
                    (int(row["exemplar_id"]), Exemplar(row["q"], row["a"], int(row["number_answer"]))))
            except (KeyError, TypeError, ValueError):
                raise BenchmarkDataError(f"{self.name}: {path} line {number}: expected {{lang, exemplar_id, q, a, "
                                         "number_answer}") from None
        return {lang: [e for _, e in sorted(items, key=lambda item: item[0])] for lang, items in out.items()}

    def _problems(self, lang: str) -> list[tuple[str, str]]:
        if self.root is None:
            rows = _hub_dataset(self.name, self.hub_id, lang, "test", self.hub_revision, LOCAL_EXAMPLE)
            problems = [(r["question"], str(r["answer_number"])) for r in rows]
        else:
            path = self.root / f"mgsm_{lang}.tsv"
            with open(path, encoding="utf-8", newline="") as f:
                problems = [tuple(row) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
            bad = [i + 1 for i, row in enumerate(problems) if len(row) != 2 or parse_number(row[1]) is None]
            if bad:
                raise BenchmarkDataError(f"{self.name}: {path} row(s) {bad[:5]} are not question<TAB>number")
        if len(problems) != MGSM_QUESTIONS:
            raise BenchmarkDataError(f"{self.name}: {len(problems)} problems for {lang!r} in {self.location}, "
                                     f"expected {MGSM_QUESTIONS} (the languages are parallel)")
        return problems

