"""Run records, statistics, tables, plot, status and export on synthetic records."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from xlt_runner.fileio import write_json_atomic
from xlt_runner.results import record, report
from xlt_runner.results.stats import FEWER_THAN_TWO, ZERO_VARIANCE, mean_ci, welch_p, welch_undefined_reason

LANGUAGES = ["eng_Latn", "arb_Arab", "zho_Hans", "fra_Latn", "yor_Latn", "xyz_Fake"]
GROUPS = {"seen": ["eng_Latn", "arb_Arab", "zho_Hans", "fra_Latn"], "unseen": ["yor_Latn", "xyz_Fake"]}
#: method -> seed -> "all"-group accuracy (fraction); every language gets the same score.
ACCURACY = {"head_only": {0: 0.70, 1: 0.72, 2: 0.74}, "full_ft": {0: 0.80, 1: 0.83}, "lora": {0: 0.75}}


def make_record(method: str, seed: int, status: str = "complete", accuracy: float = 0.5) -> dict:
    per_language = {code: {"accuracy": accuracy, "macro_f1": accuracy - 0.05, "n": 10} for code in LANGUAGES}
    groups = {name: {"accuracy": accuracy, "macro_f1": accuracy - 0.05, "n_languages": len(codes)}
              for name, codes in GROUPS.items()}
    config = {"method": {"name": method, "optim": {"lr": 0.001}}, "model": {"name": "tiny"},
              "benchmark": {"name": "cldr_demo"}, "languages": {"name": "enarzho"}, "seed": seed,
              "paths": {"output_root": "ignored"}}
    return {
        "status": status, "run_id": f"{method}-s{seed}", "sweep_name": "demo", "method": method, "model": "tiny",
        "benchmark": "cldr_demo", "languages": "enarzho", "seed": seed,
        "source_languages": ["eng_Latn"], "target_languages": LANGUAGES,
        "per_language": per_language if status == "complete" else {},
        "groups": groups if status == "complete" else {},
        "group_members": GROUPS, "groups_not_reported": {}, "params": {"trainable": 10, "total": 100}, "best": None,
        "timings": {}, "config": config, "overrides": [f"method={method}", f"seed={seed}", "model=tiny"],
        "versions": {}, "git_commit": None, "started_at": "2025-01-01T00:00:00",
        "finished_at": None if status == "running" else f"2025-01-01T00:0{seed}:00",
        "error": {"type": "RuntimeError", "message": "boom", "traceback": "..."} if status == "failed" else None,
    }


@pytest.fixture()
def sweep_root(tmp_path):
    """A Hydra-like sweep of 3 methods x 3 seeds: 6 complete, lora s1 running, lora s2 failed,
    full_ft s2 missing; plus a corrupt record and a run outside any sweep."""
    sweep = tmp_path / "sweeps" / "demo"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"task": ["method=head_only,full_ft,lora", "seed=range(0,3)", "model=tiny"]}}}))
    for method, seeds in ACCURACY.items():
        for seed, accuracy in seeds.items():
            write_json_atomic(sweep / f"{method}-s{seed}" / record.RESULTS_FILE,
                                     make_record(method, seed, accuracy=accuracy))
    write_json_atomic(sweep / "lora-s1" / record.RESULTS_FILE, make_record("lora", 1, status="running"))
    write_json_atomic(sweep / "lora-s2" / record.RESULTS_FILE, make_record("lora", 2, status="failed"))
    (sweep / "broken").mkdir()
    (sweep / "broken" / record.RESULTS_FILE).write_text("{not json")
    return tmp_path


def test_write_json_atomic_and_read(tmp_path):
    write_json_atomic(tmp_path / "run" / record.RESULTS_FILE, make_record("head_only", 0))
    assert record.read_record(tmp_path / "run")["method"] == "head_only"
    assert record.is_complete(tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == [record.RESULTS_FILE]  # no temp file left
    assert record.read_record(tmp_path / "absent") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / record.RESULTS_FILE).write_text('{"status": "compl')
    with pytest.warns(UserWarning, match="unreadable"):
        assert record.read_record(tmp_path / "bad") is None
    with pytest.warns(UserWarning):
        assert not record.is_complete(tmp_path / "bad")


def test_per_language_csv(tmp_path):
    record.write_per_language_csv(tmp_path, make_record("head_only", 0, accuracy=0.6))
    table = pd.read_csv(tmp_path / record.PER_LANGUAGE_FILE)
    assert list(table.columns) == ["language", "accuracy", "macro_f1", "n", "seen", "unseen"]
    assert table["language"].tolist() == LANGUAGES
    assert table.set_index("language").loc["yor_Latn", "unseen"] == 1
    assert table["accuracy"].eq(0.6).all()


def test_environment_info():
    info = record.environment_info()
    assert info["versions"]["torch"] and info["versions"]["python"]
    assert info["git_commit"] is None or isinstance(info["git_commit"], str)


def test_mean_ci_matches_hand_computation():
    mean, half = mean_ci([70.0, 72.0, 74.0])
    t_975_2dof = 4.302652729911275  # Student t quantile, 2 degrees of freedom
    assert mean == pytest.approx(72.0)
    assert half == pytest.approx(t_975_2dof * 2.0 / math.sqrt(3))
    mean, half = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(half)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_welch_matches_scipy():
    a, b = [0.70, 0.72, 0.74, 0.69], [0.80, 0.83, 0.79]
    assert welch_p(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert math.isnan(welch_p([0.7], b)) and welch_undefined_reason([0.7], b) == FEWER_THAN_TWO
    constant_a, constant_b = [0.7, 0.7], [0.8, 0.8]
    assert math.isnan(welch_p(constant_a, constant_b))
    assert welch_undefined_reason(constant_a, constant_b) == ZERO_VARIANCE
    assert welch_undefined_reason(a, b) is None and welch_undefined_reason([0.7, 0.7], b) is None


def test_collect_runs_and_cells(sweep_root):
    with pytest.warns(UserWarning, match="unreadable"):
        runs = report.collect_runs(sweep_root)
    assert len(runs) == 9
    assert runs["status"].value_counts().to_dict() == {"complete": 6, "running": 1, "failed": 1, "unreadable": 1}
    assert runs.groupby("method")["cell"].nunique().eq(1).all()  # seeds share a cell
    assert runs["cell"].nunique() == 3
    assert set(runs["cell_label"]) == {"head_only", "full_ft", "lora", report.UNREADABLE_CELL}


def test_cells_differing_in_config_get_distinct_labels(tmp_path):
    for lr, directory in ((0.001, "a"), (0.01, "b")):
        rec = make_record("lora", 0, accuracy=0.7)
        rec["config"]["method"]["optim"]["lr"] = lr
        write_json_atomic(tmp_path / directory / record.RESULTS_FILE, rec)
    runs = report.collect_runs(tmp_path)
    assert sorted(runs["cell_label"]) == ["lora [method.optim.lr=0.001]", "lora [method.optim.lr=0.01]"]


def test_group_table_numbers(sweep_root):
    with pytest.warns(UserWarning):
        runs = report.collect_runs(sweep_root)
    table = report.group_table(runs, "accuracy")
    assert table.groups == ["seen", "unseen"]
    rows = table.rows.set_index(["method", "group"])
    head = rows.loc[("head_only", "seen")]
    assert head["n_seeds"] == 3 and head["seeds"] == [0, 1, 2]
    assert head["mean"] == pytest.approx(72.0)
    assert head["ci_half_width"] == pytest.approx(4.302652729911275 * 2.0 / math.sqrt(3))
    full = rows.loc[("full_ft", "seen")]
    assert full["best"] and not head["best"] and full["n_seeds"] == 2
    assert math.isnan(full["p_vs_best"])
    expected_p = scipy_stats.ttest_ind([70, 72, 74], [80, 83], equal_var=False).pvalue
    assert head["p_vs_best"] == pytest.approx(expected_p)
    lora = rows.loc[("lora", "seen")]
    assert lora["n_seeds"] == 1 and math.isnan(lora["ci_half_width"]) and math.isnan(lora["p_vs_best"])

    markdown = report.format_markdown(table)
    assert "**81.5 ± " in markdown and "72.0 ± 5.0 (n=3) p=" in markdown and "75.0 (n=1: no test)" in markdown
    latex = report.format_latex(table)
    assert r"\textbf{81.5 $\pm$" in latex and r"head\_only" in latex


def test_duplicate_seed_counts_once(tmp_path):
    write_json_atomic(tmp_path / "runs" / "x" / record.RESULTS_FILE, make_record("lora", 0, accuracy=0.6))
    write_json_atomic(tmp_path / "sweeps" / "x" / record.RESULTS_FILE, make_record("lora", 0, accuracy=0.6))
    runs = report.collect_runs(tmp_path)
    with pytest.warns(UserWarning, match="repeat"):
        table = report.group_table(runs)
    assert table.rows["n_seeds"].eq(1).all()


def test_sweep_status_counts(sweep_root):
    with pytest.warns(UserWarning):
        status = report.sweep_status(sweep_root)
    summary = status.summary.set_index("cell")
    assert summary.loc["method=head_only", ["done", "running", "failed", "missing"]].tolist() == [3, 0, 0, 0]
    assert summary.loc["method=full_ft", ["done", "running", "failed", "missing"]].tolist() == [2, 0, 0, 1]
    assert summary.loc["method=lora", ["done", "running", "failed", "missing"]].tolist() == [1, 1, 1, 0]
    assert summary.loc[report.UNREADABLE_CELL, ["unreadable", "total"]].tolist() == [1, 1]
    assert summary["total"].sum() == 10
    missing = status.runs[status.runs["status"] == "missing"]
    assert missing["overrides"].tolist() == ["method=full_ft seed=2"]


def test_figure_groups_order_and_fallback():
    class StubTable:
        accuracy = {"eng_Latn": 90.0, "fra_Latn": 88.0, "yor_Latn": 50.0, "arb_Arab": 80.0}

        def __contains__(self, code):
            return code in self.accuracy

        def figure_order(self, codes):
            seen = sorted((c for c in codes if c != "yor_Latn"), key=lambda c: -self.accuracy[c])
            return [("Seen", seen), ("Unseen", [c for c in codes if c == "yor_Latn"])]

    groups = report.figure_groups(LANGUAGES, StubTable())
    assert groups == [("Seen", ["eng_Latn", "fra_Latn", "arb_Arab"]), ("Unseen", ["yor_Latn"]),
                      ("Other", ["xyz_Fake", "zho_Hans"])]


def test_files_plot_and_export(sweep_root):
    with pytest.warns(UserWarning):
        runs = report.collect_runs(sweep_root)
    out = sweep_root / "out"
    paths = report.write_tables(report.group_table(runs), out)
    assert all(p.stat().st_size > 0 for p in paths)
    assert pd.read_csv(out / "report.csv")["best"].sum() == 2
    plot = report.plot_per_language(runs, out / "plot.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    exported = report.export_all(runs, out)
    table = pd.read_csv(exported[0])
    assert len(table) == 6 * len(LANGUAGES)
    if len(exported) > 1:
        assert len(pd.read_parquet(exported[1])) == len(table)


def test_report_main(sweep_root, capsys):
    with pytest.warns(UserWarning):
        assert report.report_main([str(sweep_root / "sweeps"), "--metric", "macro_f1"]) == 0
    printed = capsys.readouterr().out
    assert "missing" in printed and "failed" in printed and "Plot:" in printed
    out = sweep_root / "sweeps" / "report"
    assert {"report.csv", "report.md", "report.tex", "status.csv", "per_language_macro_f1.png",
            "per_language_all.csv"} <= {p.name for p in out.iterdir()}
    assert pd.read_csv(out / "report.csv")["metric"].unique().tolist() == ["macro_f1"]


def test_report_main_without_complete_runs(tmp_path, capsys):
    write_json_atomic(tmp_path / "r" / record.RESULTS_FILE, make_record("lora", 0, status="running"))
    assert report.report_main([str(tmp_path)]) == 1
    assert report.report_main([str(tmp_path / "nope")]) == 2


def test_sib200_report_adds_the_papers_full_fine_tuning_reference(tmp_path):
    import json as _json
    from xlt_runner.data.sib200_references import SIB200_REFERENCE_LABEL
    from xlt_runner.results.report import collect_runs, format_markdown, group_table
    for seed, acc in ((0, 0.70), (1, 0.74)):
        record = {"status": "complete", "run_id": f"r{seed}", "sweep_name": "s", "method": "dual", "model": "m",
                  "benchmark": "sib200", "languages": "joshi5", "seed": seed, "finished_at": "2026-01-01",
                  "per_language": {"kor_Hang": {"accuracy": acc, "macro_f1": acc, "n": 204}},
                  "groups": {"seen": {"accuracy": acc, "macro_f1": acc, "n_languages": 2}},
                  "group_members": {"seen": ["kor_Hang", "fin_Latn"]},
                  "config": {"method": {"name": "dual"}, "seed": seed}, "overrides": []}
        (tmp_path / f"r{seed}").mkdir()
        (tmp_path / f"r{seed}" / "results.json").write_text(_json.dumps(record))
    table = group_table(collect_runs(tmp_path))
    reference = table.rows[table.rows["cell_label"] == SIB200_REFERENCE_LABEL]
    assert len(reference) == 1 and abs(reference["mean"].iloc[0] - (88.5 + 91.6) / 2) < 1e-9  # Table 7
    assert not reference["best"].iloc[0]
    assert bool(table.rows[table.rows["method"] == "dual"]["best"].iloc[0])
    assert "90.0 (paper)" in format_markdown(table)


def test_scores_equal_up_to_summation_order_are_one_value():
    """Two seeds with the same score reached by different float sums have zero variance: no
    scipy precision warning, and the p-value equals the one for exactly equal values."""
    import warnings

    from xlt_runner.results.stats import welch_p
    nearly = [35.55555555555556, 35.555555555555564]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert welch_p([40.0, 35.55555555555556], nearly) == welch_p([40.0, 35.55555555555556], [35.55555555555556] * 2)
    from xlt_runner.results.stats import ZERO_VARIANCE, welch_undefined_reason
    assert welch_undefined_reason(nearly, [50.0, 50.0]) == ZERO_VARIANCE
    # on any scale, as a metric that is not a percentage may be: equal up to summation order, a real difference
    assert welch_undefined_reason([v * 1e6 for v in nearly], [50.0, 50.0]) == ZERO_VARIANCE
    assert welch_undefined_reason([1e-11, 3e-11], [2e-11, 5e-11]) is None
    # elsewhere it is scipy's Welch test
    from scipy import stats
    for a, b in (([1.0, 2.0, 4.0], [2.0, 3.5, 5.0, 6.0]), ([70.0, 72.0, 74.0], [80.0, 83.0])):
        assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)


def test_a_run_record_is_typed_and_leaves_out_sections_not_reached():
    from xlt_runner.results.record import RunRecord
    rec = RunRecord(run_id="r", sweep_name="s", method="m", model="x", benchmark="b", languages="l", seed=0,
                    config={}, overrides=[], versions={}, git_commit=None, started_at="t", host="h", pid=1)
    with pytest.raises(AttributeError):
        rec.per_langauge = {}  # a typo is an error, not a new key no reader knows
    first = rec.to_json()
    assert first["status"] == "running" and first["best"] is None and "training" not in first and "task" not in first
    rec.training, rec.task = None, "generation"  # an explicit null (a method that does not train) is written
    assert rec.to_json()["training"] is None and rec.to_json()["task"] == "generation"
    assert json.loads(json.dumps(rec.to_json())) == rec.to_json()
