"""Published reference numbers for the SIB-200 blocks of an ``xlt-report`` table.

Two sources, both test accuracy in percent, so they apply to the ``accuracy`` table only:

* the SIB-200 paper's fully supervised XLM-R large (its Table 7, in the language table);
* the XPE paper's per-language results (its Appendix A, a TSV file :data:`XPE_PAPER_FILE`),
  for the paper's methods and source sets.

:func:`reference_rows` is the benchmark's reference-row hook (``Sib200.reference_rows``), which
the report calls once per comparison block of SIB-200 runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: The metric the published numbers are (percent): no reference rows for any other.
REFERENCE_METRIC = "accuracy"
SIB200_REFERENCE_LABEL = "SIB-200 paper: XLM-R large, full FT (reference)"
XPE_PAPER_FILE = "xpe_paper_appendix_a.tsv"
#: Source sets (``languages`` config names) and methods with a column ``<source>_<method>`` in :data:`XPE_PAPER_FILE`.
XPE_PAPER_SOURCE_SETS = ("enarzho", "joshi5", "seen")
XPE_PAPER_METHODS = ("spt", "dual_xpe30", "dual_xpe70", "xpe")
#: Codes of the extracted appendix that are typos of SIB-200 codes.
XPE_PAPER_CODE_FIXES = {"maj_Deva": "mai_Deva"}


def reference_rows(block: pd.DataFrame, groups: list[str], metric: str,
                   paper_results: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, info lines) of published numbers for one comparison block.

    ``block``: the block's complete runs (rows of ``xlt_runner.results.report.collect_runs``: one
    model, benchmark and languages config); ``groups``: the report groups to fill; ``metric``: the
    table's metric, none but :data:`REFERENCE_METRIC` gets rows; ``paper_results``: the XPE
    paper's file, if given. Each row is ``{"cell", "cell_label", "group", "mean", "coverage"}``:
    ``mean`` in percent, averaged over the group's members (``group_members`` of the block's
    first record) that have a published number; ``coverage`` (XPE paper rows) "k/n langs" when
    only k of its n members have one, else None. Rows come from :func:`sib200_paper_rows`, then :func:`xpe_paper_rows`.
    """
    if metric != REFERENCE_METRIC:
        return [], []
    paper_rows, notes = xpe_paper_rows(block, groups, paper_results)
    return sib200_paper_rows(block, groups) + paper_rows, notes


def _row(cell: str, label: str, group: str, values: list[float], n_members: int | None = None) -> dict[str, Any]:
    """A reference row; ``coverage`` only when ``n_members`` is given and larger than the values."""
    covered = n_members is not None and len(values) < n_members
    return {"cell": cell, "cell_label": label, "group": group, "mean": sum(values) / len(values),
            "coverage": f"{len(values)}/{n_members} langs" if covered else None}


def sib200_paper_rows(block: pd.DataFrame, groups: list[str]) -> list[dict[str, Any]]:
    """The SIB-200 paper's fully supervised XLM-R-large accuracy (Table 7) per group; languages
    without a published number are skipped (no coverage given)."""
    from xlt_runner.data.languages import LanguageTable

    table = LanguageTable.default()
    members = block.iloc[0]["group_members"] or {}
    rows = []
    for group in groups:
        codes = members.get(group) or []
        scores = [table[c].sib200_xlmr_large_acc for c in codes
                  if c in table and table[c].sib200_xlmr_large_acc is not None]
        if scores:
            rows.append(_row("sib200_paper", SIB200_REFERENCE_LABEL, group, scores))
    return rows


def read_xpe_paper_results(path: str | os.PathLike) -> pd.DataFrame:
    """The XPE paper's Appendix A (per-language accuracy in %, XLM-R large, mean of 10 seeds)
    indexed by SIB-200 code, columns ``<source>_<method>``; a code unknown to the language
    table is corrected by :data:`XPE_PAPER_CODE_FIXES`."""
    import pandas as pd

    from xlt_runner.data.languages import LanguageTable

    known = LanguageTable.default()
    results = pd.read_csv(path, sep="\t")
    results["lang"] = [code if code in known else XPE_PAPER_CODE_FIXES.get(code, code) for code in results["lang"]]
    return results.set_index("lang")


def xpe_paper_rows(block: pd.DataFrame, groups: list[str],
                   path: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, info lines): the XPE paper's per-group means, one row per paper method run in the
    block, when the block's languages config is a paper source set.

    Without ``path``, the file is looked for at ``<benchmark.data_dir>/../meta/``
    :data:`XPE_PAPER_FILE` of the block's records (relative to the working directory); if it is
    not there, no rows and an info line saying how to add them.
    """
    languages = block.iloc[0]["languages"]
    methods = [method for method in XPE_PAPER_METHODS if method in set(block["method"])]
    if languages not in XPE_PAPER_SOURCE_SETS or not methods:
        return [], []
    if path is None:
        candidates = list(dict.fromkeys(Path(data_dir).expanduser() / ".." / "meta" / XPE_PAPER_FILE
                                        for data_dir in block["benchmark_data_dir"] if data_dir))
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            looked = f" (looked at {', '.join(map(str, candidates))})" if candidates else ""
            return [], [f"info: no XPE paper reference rows: {XPE_PAPER_FILE} not found next to the "
                        f"benchmark data{looked}; add them with --paper-results PATH."]
    paper = read_xpe_paper_results(path)
    members = block.iloc[0]["group_members"] or {}
    rows = []
    for method in methods:
        column = paper[f"{languages}_{method}"].dropna()
        for group in groups:
            codes = members.get(group) or []
            values = [column[code] for code in codes if code in column.index]
            if values:
                rows.append(_row(f"xpe_paper_{method}", f"XPE paper: {method}, XLM-R large, 10 seeds (reference)",
                                 group, values, len(codes)))
    return rows, []
