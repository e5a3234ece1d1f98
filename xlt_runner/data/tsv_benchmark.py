"""Reader of the upstream SIB-200 file layout, and the SIB-200 benchmark.

Layout (``root``)::

    <root>/<lang_code>/{train,dev,test}.tsv   header: index_id<TAB>category<TAB>text
    <root>/<lang_code>/labels.txt             one label per line, official order (optional)

The TSV files use CSV-style quoting (a field containing ``"`` is quoted and its inner
quotes doubled), so they are read with ``csv.reader(f, delimiter="\\t")``, in UTF-8.
"""
from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
from pathlib import Path
from typing import Iterator

from xlt_runner.config import BenchmarkConfig, ConfigError
from xlt_runner.data import BENCHMARKS, BenchmarkDataError, Example
from xlt_runner.fileio import file_sha256

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"validation": "dev"}  # Hub split name -> file split name
HEADER = ("index_id", "category", "text")
LABELS_FILE = "labels.txt"
DATA_FILES = (LABELS_FILE, *(f"{split}.tsv" for split in SPLITS))  # per language: what the reader reads
# Longest field read, in characters. csv's default (131,072) is raised: a long text is legitimate
# data. A field over this is almost always an unclosed double quote swallowing the lines after it.
FIELD_SIZE_LIMIT = 1 << 20
LAYOUT = "<dir>/<lang_code>/{train,dev,test}.tsv (header index_id<TAB>category<TAB>text) and labels.txt"
SIB200_LABELS = ["science/technology", "travel", "politics", "sports", "health", "entertainment", "geography"]


@contextlib.contextmanager
def _csv_field_size_limit(limit: int) -> Iterator[None]:
    """csv's limit is process-wide: set it for one read and restore it after."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _not_utf8_error(name: str, path: Path) -> BenchmarkDataError:
    """The error for a file that does not decode as UTF-8, naming its first bad line."""
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):  # UTF-8 never has b"\\n" inside a character
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return BenchmarkDataError(
                    f"{name}: {str(path)!r} line {line_number} is not valid UTF-8 (byte "
                    f"{line[err.start:err.start + 1]!r} at byte {err.start + 1} of the line); the reader needs "
                    f"UTF-8: re-encode the file, e.g. iconv -f <its encoding> -t UTF-8")
    return BenchmarkDataError(f"{name}: {str(path)!r} is not valid UTF-8; re-encode the file as UTF-8")


def _numbered_rows(name: str, path: Path, reader) -> Iterator[tuple[int, list[str]]]:
    """``(line where the row starts, row)`` of a ``csv.reader`` over ``path``; a csv error
    becomes a BenchmarkDataError naming that line."""
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field larger than field limit" in str(err):
                raise BenchmarkDataError(
                    f"{name}: {str(path)!r} line {line}: a field is longer than {FIELD_SIZE_LIMIT:,} characters. "
                    f"Usually a double quote opens a field that never closes, so the lines after it read as "
                    f"one field: quote a field that contains \" and double the quotes inside it (\"\"); "
                    f"a text really that long must be shortened") from None
            raise BenchmarkDataError(f"{name}: {str(path)!r} line {line} is not valid TSV ({err}); "
                                     f"expected {LAYOUT}") from None
        yield line, row


def _split_name(split: str) -> str:
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise BenchmarkDataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)} "
                                 f"(set benchmark.train_split/dev_split/test_split to one of them)")
    return name


class TsvClassificationBenchmark:
    """A classification benchmark stored in the upstream SIB-200 layout under ``root``.

    Parsed splits are kept in memory, so each file is read at most once per instance.
    Examples keep file order; ``Example.id`` is the row's ``index_id``.
    """

    def __init__(self, name: str, root: str | Path, labels: list[str]):
        self.name = name
        self.root = Path(root).expanduser()
        self.labels = list(labels)
        self._label_index = {label: i for i, label in enumerate(self.labels)}
        self._examples: dict[tuple[str, str], list[Example]] = {}
        self._languages: list[str] | None = None
        self._fingerprint: str | None = None
        self.location = f"data directory {str(self.root)!r}"
        if not self.root.is_dir():
            raise BenchmarkDataError(
                f"{name}: data directory {str(self.root)!r} does not exist or is not a directory; "
                f"expected the layout {LAYOUT}. Point benchmark.data_dir at such a directory, "
                f"e.g. benchmark.data_dir=/path/to/sib-200/data/annotated")

    def languages(self) -> list[str]:
        """Subdirectories of ``root`` that hold at least one ``.tsv`` file, sorted."""
        if self._languages is None:
            self._languages = sorted(d.name for d in self.root.iterdir()
                                     if d.is_dir() and any(d.glob("*.tsv")))
        return list(self._languages)

    def load(self, lang: str, split: str) -> list[Example]:
        split = _split_name(split)
        key = (lang, split)
        if key not in self._examples:
            self._examples[key] = self._read(lang, split)
        return list(self._examples[key])

    def fingerprint(self) -> str:
        """sha256 over name, labels and, per language, the relative path and content sha256 of
        each file the reader reads (``DATA_FILES``): a copy elsewhere has the same fingerprint,
        a changed byte a different one. All of SIB-200 (205 languages, 820 files, 44 MB) hashes
        in 0.06-0.15 s from the page cache (0.4 s cold) here, so no memo; computed once per instance."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.name}\n{self.labels}\n".encode())
            for lang in self.languages():
                for file_name in DATA_FILES:
                    path = self.root / lang / file_name
                    if path.is_file():
                        digest.update(f"{lang}/{file_name}\t{file_sha256(path)}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _read(self, lang: str, split: str) -> list[Example]:
        lang_dir = self.root / lang
        if not lang_dir.is_dir():
            close = difflib.get_close_matches(lang, self.languages(), n=5, cutoff=0.5)
            raise BenchmarkDataError(
                f"{self.name}: no language {lang!r} under {str(self.root)!r} "
                f"({len(self.languages())} languages there; closest: {close or 'none'}). "
                f"Check the languages config or benchmark.data_dir.")
        self._check_labels_file(lang, lang_dir / LABELS_FILE)
        path = lang_dir / f"{split}.tsv"
        if not path.is_file():
            raise BenchmarkDataError(f"{self.name}: missing file {str(path)!r} for {lang}/{split}; "
                                     f"expected the layout {LAYOUT}")
        try:
            with open(path, newline="", encoding="utf-8") as f, _csv_field_size_limit(FIELD_SIZE_LIMIT):
                examples = self._parse(path, csv.reader(f, delimiter="\t"), lang)
        except UnicodeDecodeError:
            raise _not_utf8_error(self.name, path) from None
        if not examples:
            raise BenchmarkDataError(f"{self.name}: split {lang}/{split} is empty: {str(path)!r} has no rows")
        return examples

    def _parse(self, path: Path, reader, lang: str) -> list[Example]:
        """Examples of a ``csv.reader`` over ``path``, checked row by row."""
        rows = _numbered_rows(self.name, path, reader)
        _, header = next(rows, (1, []))
        if tuple(header) != HEADER:
            raise BenchmarkDataError(f"{self.name}: {str(path)!r} has header {header}; "
                                     f"expected {list(HEADER)} (tab-separated)")
        examples = []
        seen_ids: set[str] = set()
        for line, row in rows:
            if not row:
                continue
            if len(row) != len(HEADER):
                raise BenchmarkDataError(
                    f"{self.name}: {str(path)!r} line {line} has {len(row)} fields, expected 3 "
                    f"(index_id, category, text; quote fields containing tabs or double quotes)")
            index_id, category, text = row
            if category not in self._label_index:
                raise BenchmarkDataError(
                    f"{self.name}: {str(path)!r} line {line} has category {category!r}, "
                    f"which is not one of the benchmark's labels {self.labels}")
            if index_id in seen_ids:
                raise BenchmarkDataError(f"{self.name}: {str(path)!r} line {line} repeats "
                                         f"index_id {index_id!r}; ids must be unique within a split")
            seen_ids.add(index_id)
            examples.append(Example(text=text, label=self._label_index[category], lang=lang, id=index_id))
        return examples

    def _check_labels_file(self, lang: str, path: Path) -> None:
        if not path.is_file():
            return
        try:
            with open(path, encoding="utf-8") as f:
                file_labels = [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError:
            raise _not_utf8_error(self.name, path) from None
        if file_labels != self.labels:
            raise BenchmarkDataError(
                f"{self.name}: labels of language {lang!r} in {str(path)!r} are {file_labels}, "
                f"but the benchmark's labels (in order) are {self.labels}; fix the file or remove that language")


@BENCHMARKS.register("sib200", BenchmarkConfig)
class Sib200:
    """SIB-200 topic classification (7 labels, 205 language-script codes).

    With ``cfg.data_dir`` set, reads that local copy of ``data/annotated`` from
    https://github.com/dadelani/sib-200. Otherwise reads the Hub dataset ``cfg.hub_id``
    (``Davlan/sib200``: one config per language code, splits train/validation/test,
    columns index_id, category, text) through ``datasets.load_dataset`` and its usual
    cache (``HF_DATASETS_CACHE``; set ``HF_HUB_OFFLINE=1`` to use a cached copy offline).
    """

    @staticmethod
    def language_table():
        """SIB-200's language table (known without reading data: the preflight checks codes against it)."""
        from xlt_runner.data.languages import LanguageTable
        return LanguageTable.default()

    def __init__(self, cfg: BenchmarkConfig, cache_dir: str):
        self.name = "sib200"
        self.labels = list(SIB200_LABELS)
        self._local = TsvClassificationBenchmark(self.name, cfg.data_dir, self.labels) if cfg.data_dir else None
        if self._local is None and not cfg.hub_id:
            raise ConfigError("sib200 needs benchmark.data_dir (a local copy of sib-200/data/annotated) "
                              "or benchmark.hub_id (e.g. benchmark.hub_id=Davlan/sib200)")
        self.hub_id = cfg.hub_id
        self.location = self._local.location if self._local is not None else f"Hub dataset {cfg.hub_id!r}"
        self._hub_examples: dict[tuple[str, str], list[Example]] = {}
        self._hub_fingerprint: str | None = None

    @staticmethod
    def reference_rows(block, groups, metric, paper_results=None):
        """``xlt-report``'s published reference rows for a SIB-200 comparison block (SIB-200 and
        XPE papers, accuracy only): :func:`xlt_runner.data.sib200_references.reference_rows`."""
        from xlt_runner.data.sib200_references import reference_rows
        return reference_rows(block, groups, metric, paper_results)

    def languages(self) -> list[str]:
        """Local: the language directories present. Hub: the 205 codes of the language table."""
        if self._local is not None:
            return self._local.languages()
        from xlt_runner.data.languages import LanguageTable
        return list(LanguageTable.default().codes)

    def load(self, lang: str, split: str) -> list[Example]:
        if self._local is not None:
            return self._local.load(lang, split)
        split = _split_name(split)
        key = (lang, split)
        if key not in self._hub_examples:
            self._hub_examples[key] = self._read_hub(lang, split)
        return list(self._hub_examples[key])

    def fingerprint(self) -> str:
        """Local: see TsvClassificationBenchmark. Hub: hub id plus the ``datasets``
        fingerprint of the eng_Latn train split (changes when the Hub data change)."""
        if self._local is not None:
            return self._local.fingerprint()
        if self._hub_fingerprint is None:
            dataset_fingerprint = self._hub_dataset("eng_Latn", "train")._fingerprint
            digest = hashlib.sha256(f"{self.hub_id}\n{self.labels}\n{dataset_fingerprint}".encode())
            self._hub_fingerprint = digest.hexdigest()[:16]
        return self._hub_fingerprint

    def _hub_dataset(self, lang: str, split: str):
        import datasets

        if lang not in self.languages():
            close = difflib.get_close_matches(lang, self.languages(), n=5, cutoff=0.5)
            raise BenchmarkDataError(f"sib200: no language {lang!r} on the Hub dataset {self.hub_id!r}; "
                                     f"closest codes: {close or 'none'}")
        hub_split = "validation" if split == "dev" else split
        try:
            return datasets.load_dataset(self.hub_id, lang, split=hub_split)
        except OSError as err:  # ConnectionError offline, DatasetNotFoundError, missing cache
            raise BenchmarkDataError(
                f"sib200: could not load {self.hub_id!r} config {lang!r} split {hub_split!r} from the "
                f"Hugging Face Hub ({type(err).__name__}: {err}). The Hub is unreachable or the dataset is not "
                f"cached. Use a local copy: benchmark.data_dir=/path/to/sib-200/data/annotated "
                f"(git clone https://github.com/dadelani/sib-200), or run once online to fill the cache "
                f"and then set HF_HUB_OFFLINE=1.") from err

    def _read_hub(self, lang: str, split: str) -> list[Example]:
        dataset = self._hub_dataset(lang, split)
        label_index = {label: i for i, label in enumerate(self.labels)}
        examples = []
        for row_number, row in enumerate(dataset):
            if row["category"] not in label_index:
                raise BenchmarkDataError(f"sib200: {self.hub_id} {lang}/{split} row {row_number} has category "
                                         f"{row['category']!r}, not one of {self.labels}")
            examples.append(Example(text=row["text"], label=label_index[row["category"]], lang=lang,
                                    id=str(row["index_id"])))
        if not examples:
            raise BenchmarkDataError(f"sib200: split {lang}/{split} of {self.hub_id!r} is empty")
        return examples
