"""Build ``xlt_runner/data/languages.tsv`` from the SIB-200 metadata files.

Inputs (``--meta-dir``, the ``meta/`` folder of the shared SIB-200 copy):

* ``xpe_sib200_language_meta.csv`` (205 codes, from the XPE repository): the authority
  for the in-XLM-R flag (``xlmr_seen``), Joshi class, family and region.
* ``sib200_paper_table7_per_language.tsv`` (204 codes, SIB-200 paper Table 7): the
  language name and ``xlmr_large`` (full fine-tuning accuracy of XLM-R large, percent).
  ``nqo_Nkoo`` is not in Table 7: its name comes from the XPE file, its accuracy is blank.

Regions are written with spaces (``Asia 2``) as in Table 7; XPE writes ``Asia_2``.
The script refuses to write a table whose set sizes differ from the published ones.

Usage: ``python tools/build_language_table.py [--meta-dir DIR] [--out FILE]``
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_META_DIR = Path("/work/shared/data/sib200/meta")
DEFAULT_OUT = REPO_ROOT / "xlt_runner" / "data" / "languages.tsv"
XPE_META = "xpe_sib200_language_meta.csv"
TABLE7 = "sib200_paper_table7_per_language.tsv"
COLUMNS = ("code", "name", "script", "family", "region", "joshi_class", "xlmr_seen", "sib200_xlmr_large_acc")
# Expected set sizes (XPE paper / SIB-200 paper); a mismatch means the inputs changed.
EXPECTED_COUNTS = {"all": 205, "seen": 92, "unseen": 113, "below_60": 45, "joshi5": 7}
BELOW = 60.0  # percent, XLM-R large accuracy: 45 codes, the XPE paper's Low-Performing group without nqo_Nkoo


def build_rows(meta_dir: Path) -> list[dict[str, str]]:
    """One row per code of the XPE file, sorted by code, with the columns of ``COLUMNS``."""
    with open(meta_dir / XPE_META, newline="", encoding="utf-8") as f:
        xpe = list(csv.DictReader(f))
    with open(meta_dir / TABLE7, newline="", encoding="utf-8") as f:
        table7 = {row["code"]: row for row in csv.DictReader(f, delimiter="\t")}
    rows = []
    for meta in sorted(xpe, key=lambda r: r["code"]):
        code = meta["code"]
        paper = table7.get(code)
        rows.append({
            "code": code,
            "name": paper["language_name"] if paper else meta["name"].replace("_", " "),
            "script": code.split("_", 1)[1],
            "family": meta["family"],
            "region": meta["region"].replace("_", " "),
            "joshi_class": meta["class"],
            "xlmr_seen": meta["xlmr"],
            "sib200_xlmr_large_acc": paper["xlmr_large"] if paper else "",
        })
    return rows


def check_counts(rows: list[dict[str, str]]) -> dict[str, int]:
    """Sizes of the named sets; raises ValueError if one differs from ``EXPECTED_COUNTS``."""
    counts = {
        "all": len(rows),
        "seen": sum(r["xlmr_seen"] == "1" for r in rows),
        "unseen": sum(r["xlmr_seen"] == "0" for r in rows),
        "below_60": sum(r["sib200_xlmr_large_acc"] != "" and float(r["sib200_xlmr_large_acc"]) < BELOW
                       for r in rows),
        "joshi5": sum(r["joshi_class"] == "5" for r in rows),
    }
    if counts != EXPECTED_COUNTS:
        raise ValueError(f"set sizes {counts} differ from the expected {EXPECTED_COUNTS}; check the meta files")
    return counts


def write_table(rows: list[dict[str, str]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-dir", type=Path, default=DEFAULT_META_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = build_rows(args.meta_dir)
    counts = check_counts(rows)
    write_table(rows, args.out)
    print(f"wrote {len(rows)} languages to {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
