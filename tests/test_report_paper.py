"""Paper-style reporting: Welch tests against a reference method, one-seed and zero-variance
cells, lower-is-better metrics, groups not reported on purpose, and the XPE paper's reference rows."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from xlt_runner.fileio import write_json_atomic
from xlt_runner.data import sib200_references as references
from xlt_runner.results import record, report

PAPER_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "sib200" / "meta" / "xpe_paper_appendix_a.tsv"
XPE_ROW_LABEL = "XPE paper: {}, XLM-R large, 10 seeds (reference)"


def write_run(root: Path, method: str, seed: int, groups: dict, *, model: str = "m", benchmark: str = "cldr_demo",
              languages: str = "enarzho", group_members: dict | None = None, groups_not_reported: dict | None = None,
              data_dir: str | None = None, lr: float = 0.001) -> None:
    """A complete record under ``root``; ``groups`` maps a group to its accuracy (fraction) or to
    the whole group dict."""
    groups = {name: value if isinstance(value, dict) else {"accuracy": value, "macro_f1": value, "n_languages": 2}
              for name, value in groups.items()}
    config = {"method": {"name": method, "lr": lr}, "model": {"name": model},
              "benchmark": {"name": benchmark, "data_dir": data_dir}, "languages": {"name": languages}, "seed": seed}
    run = {"status": "complete", "run_id": f"{model}-{languages}-{method}-{lr}-s{seed}", "sweep_name": "paper",
           "method": method, "model": model, "benchmark": benchmark, "languages": languages, "seed": seed,
           "finished_at": f"2026-01-01T00:00:0{seed}", "config": config, "overrides": [],
           "per_language": {"yor_Latn": {"accuracy": 0.5, "macro_f1": 0.5, "n": 10}}, "groups": groups,
           "group_members": group_members or {}, "groups_not_reported": groups_not_reported or {}}
    write_json_atomic(root / run["run_id"] / record.RESULTS_FILE, run)


def write_cell(root: Path, method: str, accuracies: list[float], groups: tuple[str, ...] = ("unseen",),
               **fields) -> None:
    """One run per seed; every group of the run gets that seed's accuracy."""
    for seed, accuracy in enumerate(accuracies):
        write_run(root, method, seed, {group: accuracy for group in groups}, **fields)


@pytest.fixture
def wide_console(monkeypatch):
    """``xlt-report`` output without line wrapping (rich reads COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "1000")


def welch(a: list[float], b: list[float]) -> float:
    return scipy_stats.ttest_ind([100 * x for x in a], [100 * x for x in b], equal_var=False).pvalue


# ------------------------------------------------------------------- reference method
SPT, XPE, LORA = [0.60, 0.62, 0.65], [0.70, 0.72, 0.75], [0.56, 0.64, 0.60]


def test_compare_to_tests_every_cell_against_the_reference_methods_cell(tmp_path):
    write_cell(tmp_path, "spt", SPT)
    write_cell(tmp_path, "xpe", XPE)
    write_cell(tmp_path, "lora", LORA)
    write_cell(tmp_path, "xpe", XPE, model="other")  # a block without spt
    table = report.group_table(report.collect_runs(tmp_path), compare_to="spt")
    rows = table.rows.set_index(["model", "method"])
    assert rows.at[("m", "xpe"), "p_vs_reference"] == pytest.approx(welch(XPE, SPT))
    assert rows.at[("m", "lora"), "p_vs_reference"] == pytest.approx(welch(LORA, SPT))
    assert math.isnan(rows.at[("m", "spt"), "p_vs_reference"])
    assert rows.at[("m", "lora"), "p_vs_best"] == pytest.approx(welch(LORA, XPE))  # unchanged: against the best
    assert math.isnan(rows.at[("other", "xpe"), "p_vs_reference"])
    assert table.notes == ["warning: block model=other, benchmark=cldr_demo, languages=enarzho has no spt cell: "
                           "its cells get no p vs spt."]
    markdown = report.format_markdown(table)
    assert f"p={welch(LORA, XPE):.3f} vs best; p={welch(LORA, SPT):.3f} vs spt" in markdown
    assert "p=… vs spt = the same against the seeds of the spt cell (reference method)" in markdown
    assert r"vs best; $p=" in report.format_latex(table)


def test_compare_to_refuses_an_ambiguous_or_absent_reference(tmp_path, capsys):
    write_cell(tmp_path, "xpe", XPE)
    write_cell(tmp_path, "spt", SPT)
    write_cell(tmp_path, "spt", SPT, lr=0.01)
    runs = report.collect_runs(tmp_path)
    with pytest.raises(ValueError, match=r"2 cells of the reference method 'spt'.*lr=0\.001.*lr=0\.01"):
        report.group_table(runs, compare_to="spt")
    with pytest.raises(ValueError, match="methods present: spt, xpe"):
        report.group_table(runs, compare_to="dual")
    assert report.report_main([str(tmp_path), "--compare-to", "dual"]) == 2
    assert "xlt-report: error: reference method 'dual' is in no comparison block; methods present: spt, xpe" \
        in capsys.readouterr().err


def test_report_main_compare_to(tmp_path, capsys, wide_console):
    write_cell(tmp_path, "spt", SPT)
    write_cell(tmp_path, "xpe", XPE)
    write_cell(tmp_path, "xpe", XPE, model="other")
    assert report.report_main([str(tmp_path), "--compare-to", "spt"]) == 0
    printed = capsys.readouterr().out
    assert "has no spt cell" in printed and f"p={welch(XPE, SPT):.3f} vs spt" in printed
    csv = pd.read_csv(tmp_path / "report" / "report.csv")
    assert csv.set_index(["model", "method"]).at[("m", "xpe"), "p_vs_reference"] == pytest.approx(welch(XPE, SPT))


# ------------------------------------------------------------ cells without a p-value
def test_one_seed_and_zero_variance_are_said_not_left_blank(tmp_path):
    write_cell(tmp_path, "xpe", [0.80])  # the best, with one seed: nobody gets a p
    write_cell(tmp_path, "spt", SPT)
    write_cell(tmp_path, "lora", [0.70, 0.70], groups=("seen",))  # zero variance in both cells of "seen"
    write_cell(tmp_path, "dual", [0.60, 0.60], groups=("seen",))
    table = report.group_table(report.collect_runs(tmp_path))
    rows = table.rows.set_index(["method", "group"])
    assert rows.at[("spt", "unseen"), "why_no_p_vs_best"] == "fewer than 2 values"
    assert rows.at[("dual", "seen"), "why_no_p_vs_best"] == "zero variance in both samples"
    header, body, _ = report.wide_rows(table, "md")
    assert header == ["method", "seen", "unseen"]  # first seen in run_dir order: dual's record first
    cells = {method: unseen if unseen != "–" else seen for method, seen, unseen in body}
    assert cells["xpe"] == "**80.0** (n=1: no test)"
    assert cells["spt"] == "62.3 ± 6.3 (n=3)"  # its p vs best cannot be computed: the best says why
    assert cells["lora"] == "**70.0 ± 0.0** (n=2)"
    assert cells["dual"] == "60.0 ± 0.0 (n=2) p undefined (zero variance)"
    legend = report.format_markdown(table)
    assert "(n=1: no test) = one seed, so no Welch test involves this cell" in legend
    assert "p undefined (zero variance) = each of the two cells scores the same on all its seeds" in legend


# ------------------------------------------------------------------------- direction
def test_lower_is_better_metric_has_its_lowest_mean_best(tmp_path):
    """Records from before metric specs: the probe's ``higher_is_better: false`` groups are read as the
    lower-is-better metric ``langid_recall``, in a table of their own (before, they were columns of the
    accuracy table, and the macro_f1 table, where they had no value)."""
    langid = lambda accuracy: {"accuracy": accuracy, "macro_f1": None, "n_languages": 3,  # noqa: E731
                               "higher_is_better": False}
    for seed, (spt, xpe) in enumerate(zip([0.30, 0.33, 0.31], [0.20, 0.22, 0.25])):
        write_run(tmp_path, "spt", seed, {"lowperf": 0.40 + seed / 50, "langid:lowperf": langid(spt)})
        write_run(tmp_path, "xpe", seed, {"lowperf": 0.50 + seed / 100, "langid:lowperf": langid(xpe)})
    runs = report.collect_runs(tmp_path)
    assert report.group_table(runs).groups == report.group_table(runs, "macro_f1").groups == ["lowperf"]
    table = report.group_table(runs, "langid_recall")
    assert table.groups == ["langid:lowperf"]
    rows = table.rows.set_index(["method", "group"])
    assert rows.at[("xpe", "langid:lowperf"), "best"] and not rows.at[("spt", "langid:lowperf"), "best"]
    assert rows.at[("spt", "langid:lowperf"), "p_vs_best"] == pytest.approx(welch([0.30, 0.33, 0.31],
                                                                                  [0.20, 0.22, 0.25]))
    assert not rows["higher_is_better"].any() and rows["percent"].all()
    markdown = report.format_markdown(table)
    assert "| method | langid:lowperf ↓ |" in markdown and "↓ = lower is better" in markdown
    assert "| spt | 31.3 ± 3.8 (n=3) p=0.010 |" in markdown and "| xpe | **22.3 ± 6.3** (n=3) |" in markdown
    assert r"method & langid:lowperf $\downarrow$ \\" in report.format_latex(table)

    rec = record.read_record(next(tmp_path.iterdir()))  # a record whose spec says higher is better
    rec["metrics"] = [{"name": "langid_recall", "higher_is_better": True}]
    write_json_atomic(tmp_path / "other" / record.RESULTS_FILE, rec)
    with pytest.raises(ValueError, match="records disagree on metric 'langid_recall': .* has higher_is_better="
                                         "False, percent=True; .*other has higher_is_better=True, percent=True."):
        report.group_table(report.collect_runs(tmp_path), "langid_recall")


# ---------------------------------------------------------------------- not reported
SOURCE_ONLY = "all 85 of its languages are source (training) languages: not a zero-shot result"


def test_groups_not_reported_read_nr_with_their_reason(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "xpe", seed, {"unseen": 0.6 + seed / 100},
                  groups_not_reported={"seen-joshi5": SOURCE_ONLY, "seen": "no target language in it"})
        write_run(tmp_path, "spt", seed, {"unseen": 0.5 + seed / 100}, groups_not_reported={"seen-joshi5": SOURCE_ONLY})
    runs = report.collect_runs(tmp_path)
    assert runs["groups_not_reported"].iloc[0]["seen-joshi5"] == SOURCE_ONLY
    table = report.group_table(runs)
    assert table.groups == ["unseen", "seen-joshi5", "seen"]
    markdown = report.format_markdown(table)
    assert "| spt | 50.5 ± 6.4 (n=2) p=" in markdown
    assert "| n/r¹ | – |" in markdown and "| n/r¹ | n/r² |" in markdown  # spt simply lacks "seen"
    assert markdown.count(SOURCE_ONLY) == 1
    assert f"¹ n/r: not reported: {SOURCE_ONLY}\n\n² n/r: not reported: no target language in it" in markdown
    assert r"n/r$^{1}$ & --" in report.format_latex(table)
    report.write_tables(table, tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "report.csv")
    not_reported = csv[csv["group"] == "seen-joshi5"]
    assert len(not_reported) == 2 and not_reported["mean"].isna().all()
    assert not_reported["note"].tolist() == [SOURCE_ONLY, SOURCE_ONLY]
    assert csv[csv["group"] == "unseen"]["note"].isna().all() and csv["best"].sum() == 1


# ---------------------------------------------------------------- XPE paper reference
#: Appendix A's layout, a few of its columns; maj_Deva is the extraction's typo for mai_Deva, nqo_Nkoo has no value.
FAKE_PAPER = "".join("\t".join(row) + "\n" for row in [
    ("lang", "group", "enarzho_spt", "enarzho_xpe", "seen_xpe"),
    ("yor_Latn", "2", "40.0", "50.0", "55.0"),
    ("kab_Latn", "2", "30.0", "52.0", "57.0"),
    ("maj_Deva", "1", "80.0", "90.0", "91.0"),
    ("nqo_Nkoo", "2", "", "", ""),
    ("fra_Latn", "0", "85.0", "86.0", ""),
])
MEMBERS = {"lowperf": ["yor_Latn", "kab_Latn"], "unseen": ["yor_Latn", "kab_Latn", "mai_Deva", "nqo_Nkoo"],
           "langid:lowperf": ["yor_Latn", "kab_Latn"]}


def write_sib200_sweep(root: Path, data_dir: str | None, languages: str = "enarzho") -> None:
    langid = {"accuracy": 0.3, "macro_f1": None, "n_languages": 2, "higher_is_better": False}
    for method in ("spt", "xpe", "lora"):
        for seed in (0, 1):
            write_run(root / "outputs", method, seed, {"lowperf": 0.35 + seed / 100, "unseen": 0.6,
                                                       "langid:lowperf": langid},
                      benchmark="sib200", languages=languages, group_members=MEMBERS, data_dir=data_dir)


def test_xpe_paper_rows_found_next_to_the_benchmark_data(tmp_path, monkeypatch):
    for directory in ("annotated", "meta"):
        (tmp_path / "data" / "sib200" / directory).mkdir(parents=True)
    (tmp_path / "data" / "sib200" / "meta" / references.XPE_PAPER_FILE).write_text(FAKE_PAPER)
    monkeypatch.chdir(tmp_path)
    write_sib200_sweep(tmp_path, "data/sib200/annotated")  # relative to where xlt-report runs
    table = report.group_table(report.collect_runs(tmp_path / "outputs"))
    assert table.notes == []
    paper = table.rows[table.rows["cell_label"].str.startswith("XPE paper")].set_index(["cell_label", "group"])
    spt, xpe = XPE_ROW_LABEL.format("spt"), XPE_ROW_LABEL.format("xpe")
    assert set(paper.index) == {(spt, "lowperf"), (spt, "unseen"), (xpe, "lowperf"), (xpe, "unseen")}  # no langid, lora
    assert paper.at[(spt, "lowperf"), "mean"] == pytest.approx(35.0)
    assert paper.at[(spt, "unseen"), "mean"] == pytest.approx(50.0)  # yor, kab, mai (maj_Deva in the file); nqo blank
    assert paper.at[(spt, "unseen"), "coverage"] == "3/4 langs" and pd.isna(paper.at[(spt, "lowperf"), "coverage"])
    assert (paper["n_seeds"] == 0).all() and not paper["best"].any() and paper["p_vs_best"].isna().all()
    assert table.rows.loc[table.rows["n_seeds"] > 0, "best"].all()  # the runs tie: all best, the paper rows aside
    markdown = report.format_markdown(table)
    assert f"| {spt} | 35.0 (paper) | 50.0 (paper, 3/4 langs) |" in markdown  # the probe's group: not accuracy
    assert "(paper, k/n langs) = only k of the group's n languages have a published number" in markdown
    runs = report.collect_runs(tmp_path / "outputs")
    for metric in ("macro_f1", "langid_recall"):  # published numbers are accuracy
        assert not report.group_table(runs, metric).rows["method"].eq("reference").any()


def test_xpe_paper_rows_absent_file_explicit_path_and_other_source_sets(tmp_path, monkeypatch, capsys,
                                                                         wide_console):
    monkeypatch.chdir(tmp_path)
    write_sib200_sweep(tmp_path, "data/sib200/annotated")
    runs = report.collect_runs(tmp_path / "outputs")
    table = report.group_table(runs)
    assert not table.rows["cell_label"].str.startswith("XPE paper").any()
    assert table.notes == [f"info: no XPE paper reference rows: {references.XPE_PAPER_FILE} not found next to the "
                           f"benchmark data (looked at data/sib200/annotated/../meta/{references.XPE_PAPER_FILE}); "
                           "add them with --paper-results PATH."]
    (tmp_path / "elsewhere.tsv").write_text(FAKE_PAPER)
    table = report.group_table(runs, paper_results=tmp_path / "elsewhere.tsv")
    assert table.rows["cell_label"].eq(XPE_ROW_LABEL.format("xpe")).sum() == 2 and table.notes == []
    assert report.report_main([str(tmp_path / "outputs"), "--paper-results", "elsewhere.tsv"]) == 0
    assert "50.0 (paper, 3/4 langs)" in capsys.readouterr().out
    assert report.report_main([str(tmp_path / "outputs"), "--paper-results", "absent.tsv"]) == 2

    write_sib200_sweep(tmp_path / "english", "data/sib200/annotated", languages="english")  # not a paper source set
    table = report.group_table(report.collect_runs(tmp_path / "english" / "outputs"))
    assert not table.rows["cell_label"].str.startswith("XPE paper").any() and table.notes == []


@pytest.mark.skipif(not PAPER_TSV.exists(), reason="needs the shared SIB-200 data (not in CI)")
def test_xpe_paper_rows_reproduce_the_papers_table_1(tmp_path):
    appendix = pd.read_csv(PAPER_TSV, sep="\t")
    codes = lambda groups: [references.XPE_PAPER_CODE_FIXES.get(c, c)  # noqa: E731 (a run's targets are SIB-200 codes)
                            for c in appendix.loc[appendix["group"].isin(groups), "lang"]]
    members = {"lowperf": codes([2]), "unseen": codes([1, 2])}
    assert len(members["lowperf"]) == 46 and "mai_Deva" in members["unseen"]
    for method, languages in (("spt", "enarzho"), ("xpe", "seen")):
        for seed in (0, 1):
            write_run(tmp_path, method, seed, {"lowperf": 0.4, "unseen": 0.6}, benchmark="sib200",
                      languages=languages, group_members=members)
    table = report.group_table(report.collect_runs(tmp_path), paper_results=PAPER_TSV)
    paper = table.rows[table.rows["cell_label"].str.startswith("XPE paper")].set_index(["languages", "group"])
    assert paper["coverage"].isna().all()
    assert round(paper.at[("enarzho", "lowperf"), "mean"], 1) == 35.2
    assert round(paper.at[("seen", "lowperf"), "mean"], 1) == 41.9
    assert round(paper.at[("seen", "unseen"), "mean"], 1) == 60.8


def test_no_reference_number_fills_a_column_left_blank_on_purpose(tmp_path):
    """A group the runs withhold (n/r: it holds source languages) gets no paper or SIB-200 reference
    row either: the Seen source set's all-joshi5 column stays blank, as in the paper."""
    (tmp_path / "paper.tsv").write_text(FAKE_PAPER)
    for seed in (0, 1):
        write_run(tmp_path / "outputs", "xpe", seed, {"lowperf": 0.4}, benchmark="sib200", languages="seen",
                  group_members={"lowperf": ["yor_Latn"], "all-joshi5": ["yor_Latn", "fra_Latn"]},
                  groups_not_reported={"all-joshi5": "1 of its 2 languages are source (training) languages"})
    table = report.group_table(report.collect_runs(tmp_path / "outputs"), paper_results=tmp_path / "paper.tsv")
    references = table.rows[table.rows["method"] == "reference"]
    assert set(references["group"]) == {"lowperf"} and len(references) == 2  # SIB-200 full FT and the XPE paper
    assert "n/r" in report.format_markdown(table)


def test_records_from_before_groups_were_withheld_are_read_alike(tmp_path):
    """A record without ``groups_not_reported`` (written before the runner withheld groups that hold
    source languages) gets those groups withheld when read, unless its regime is sequential; its
    old ``langid_probe`` group carries the lower-is-better ``langid_recall``."""
    for regime, name in (("zero_shot", "old"), ("sequential", "seq")):
        run = {"status": "complete", "run_id": name, "method": "spt", "model": "m", "benchmark": "sib200",
               "languages": "enarzho", "seed": 0, "regime": regime, "source_languages": ["eng_Latn"],
               "group_members": {"all": ["eng_Latn", "yor_Latn"], "lowperf": ["yor_Latn"]},
               "groups": {"all": {"accuracy": 0.8}, "lowperf": {"accuracy": 0.4},
                          "langid_probe": {"accuracy": 0.9, "macro_f1": 0.9}}}
        write_json_atomic(tmp_path / name / record.RESULTS_FILE, run)
    runs = report.collect_runs(tmp_path).set_index("run_id")
    assert set(runs.at["old", "groups"]) == {"lowperf", "langid_probe"}
    assert runs.at["old", "groups_not_reported"]["all"].startswith("1 of its 2 languages are source")
    assert runs.at["old", "groups"]["langid_probe"] == {"langid_recall": 0.9, "n_languages": None}
    assert not runs.at["old", "metrics"]["langid_recall"].higher_is_better
    assert set(runs.at["seq", "groups"]) == {"all", "lowperf", "langid_probe"} and runs.at["seq", "groups_not_reported"] == {}
