"""The report takes metric names, directions and scales from the metric specs in the records:
``--metric`` on a generation sweep, task kinds reported apart, raw (non-percent) metrics, an
unknown metric, and the language-ID probe's lower-is-better ``langid_recall``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from xlt_runner.fileio import write_json_atomic
from xlt_runner.metrics.spec import CLASSIFICATION_METRICS, MetricSpec
from xlt_runner.results import record, report
from xlt_runner.results.stats import welch_p

GENERATION_METRICS = (MetricSpec(name="accuracy"), MetricSpec(name="exact_match"),
                      MetricSpec(name="output_language_rate"), MetricSpec(name="empty_rate", higher_is_better=False))
LANGID_RECALL = MetricSpec(name="langid_recall", higher_is_better=False)
#: Generation scores per method, one value per seed (every language and group gets them).
GENERATION = {"prompting": {"accuracy": [0.40, 0.42, 0.44], "exact_match": [0.25, 0.30, 0.35],
                            "output_language_rate": [0.9, 0.9, 0.9], "empty_rate": [0.10, 0.12, 0.14]},
              "spt": {"accuracy": [0.50, 0.52, 0.54], "exact_match": [0.20, 0.22, 0.24],
                      "output_language_rate": [0.95, 0.96, 0.97], "empty_rate": [0.02, 0.03, 0.04]}}
NOT_PROBED = "none of its languages is among the probe languages (regime.probe_languages)"
SOURCE_ONLY = "all 3 of its languages are source (training) languages: not a zero-shot result"


def write_run(root: Path, method: str, seed: int, groups: dict[str, dict], *, task: str | None = "classification",
              metrics: tuple[MetricSpec, ...] | None = CLASSIFICATION_METRICS, primary: str = "accuracy",
              per_language: dict[str, dict] | None = None, groups_not_reported: dict | None = None) -> Path:
    """A complete record under ``root``; ``task``/``metrics`` None writes a record from before
    metric specs were stored. Per-language scores default to the first group's."""
    config = {"method": {"name": method}, "model": {"name": "m"}, "benchmark": {"name": "cldr_demo", "task": task},
              "languages": {"name": "enarzho"}, "seed": seed}
    first = next(iter(groups.values()), {})
    run = {"status": "complete", "run_id": f"{task}-{method}-s{seed}", "sweep_name": "s", "method": method,
           "model": "m", "benchmark": "cldr_demo", "languages": "enarzho", "seed": seed,
           "finished_at": f"2026-01-01T00:00:0{seed}", "config": config, "overrides": [],
           "per_language": per_language or {"yor_Latn": {**first, "n": 10}}, "groups": groups,
           "group_members": {}, "groups_not_reported": groups_not_reported or {}}
    if metrics is not None:
        run.update(task=task, metrics=[spec.to_dict() for spec in metrics], primary_metric=primary)
    path = root / run["run_id"]
    write_json_atomic(path / record.RESULTS_FILE, run)
    return path


def write_generation_sweep(root: Path) -> None:
    for method, scores in GENERATION.items():
        for seed in range(3):
            values = {metric: seeds[seed] for metric, seeds in scores.items()}
            write_run(root, method, seed, {"all": {**values, "n_languages": 2}}, task="generation",
                      metrics=GENERATION_METRICS)


def welch(a: list[float], b: list[float]) -> float:
    return scipy_stats.ttest_ind([100 * x for x in a], [100 * x for x in b], equal_var=False).pvalue


@pytest.fixture
def wide_console(monkeypatch):
    """``xlt-report`` output without line wrapping (rich reads COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "1000")


# ------------------------------------------------------------------ (i) generation sweep
def test_generation_sweep_any_metric_by_its_spec(tmp_path):
    write_generation_sweep(tmp_path)
    runs = report.collect_runs(tmp_path)
    assert report.group_table(runs).metric == "accuracy"  # the records' primary metric

    exact = report.group_table(runs, "exact_match")
    rows = exact.rows.set_index("method")
    assert rows.at["prompting", "mean"] == pytest.approx(30.0) and rows.at["spt", "mean"] == pytest.approx(22.0)
    assert rows.at["prompting", "best"] and not rows.at["spt", "best"]
    assert rows.at["spt", "p_vs_best"] == pytest.approx(welch([0.20, 0.22, 0.24], [0.25, 0.30, 0.35]))
    assert "| prompting | **30.0 ± 12.4** (n=3) |" in report.format_markdown(exact)

    empty = report.group_table(runs, "empty_rate")  # lower is better
    rows = empty.rows.set_index("method")
    assert rows.at["spt", "best"] and not rows.at["prompting", "best"]
    assert rows.at["prompting", "p_vs_best"] == pytest.approx(welch([0.10, 0.12, 0.14], [0.02, 0.03, 0.04]))
    markdown = report.format_markdown(empty)
    assert "| method | all ↓ |" in markdown and "| spt | **3.0 ± 2.5** (n=3) |" in markdown
    assert markdown.rstrip().endswith("↓ = lower is better (the best is the lowest mean).")
    assert report.metric_title(empty.spec) == "Test empty_rate (%) ↓"


def test_report_main_metric_flag_writes_that_metrics_table_and_plot(tmp_path, capsys, wide_console):
    write_generation_sweep(tmp_path)
    assert report.report_main([str(tmp_path), "--metric", "exact_match", "--compare-to", "spt"]) == 0
    printed = capsys.readouterr().out
    assert "Test exact_match (%)" in printed and "also have accuracy, output_language_rate, empty_rate" in printed
    out = tmp_path / "report"
    csv = pd.read_csv(out / "report.csv").set_index("method")
    assert csv["metric"].eq("exact_match").all() and csv.at["prompting", "mean"] == pytest.approx(30.0)
    assert csv.at["prompting", "p_vs_reference"] == pytest.approx(welch([0.25, 0.30, 0.35], [0.20, 0.22, 0.24]))
    assert (out / "per_language_exact_match.png").stat().st_size > 0
    export = pd.read_csv(out / "per_language_all.csv")
    assert list(export.columns[-6:]) == ["language", "accuracy", "exact_match", "output_language_rate", "empty_rate",
                                         "n"]


def test_by_language_columns_are_test_languages_and_undefined_values_leave_n(tmp_path, capsys, wide_console):
    """``--by-language``: one column per test language, a source language included (the in-language
    tables of CoCo-CoLa); a seed whose ratio is undefined (None) is left out of that cell's n, never
    read as 0; Welch p against the best per language."""
    ratio = MetricSpec(name="cococola_ratio")
    values = {"sft": [(0.50, None), (0.70, 0.2), (0.60, 0.4)], "coco_last": [(0.80, 0.1), (0.90, 0.3), (1.00, 0.5)]}
    for method, seeds in values.items():
        for seed, (ja, en) in enumerate(seeds):
            write_run(tmp_path, method, seed, {}, task="generation", metrics=(MetricSpec(name="accuracy"), ratio),
                      per_language={"ja": {"accuracy": 0.1, "cococola_ratio": ja, "n": 300},
                                    "en": {"accuracy": 0.2, "cococola_ratio": en, "n": 300}},
                      groups_not_reported={"all-en": SOURCE_ONLY})
    table = report.group_table(report.collect_runs(tmp_path), "cococola_ratio", by_language=True)
    assert table.groups == ["ja", "en"]
    rows = table.rows.set_index(["method", "group"])
    assert rows.at[("sft", "ja"), "mean"] == pytest.approx(60.0) and rows.at[("coco_last", "ja"), "best"]
    assert rows.at[("sft", "en"), "n_seeds"] == 2 and rows.at[("sft", "en"), "mean"] == pytest.approx(30.0)
    assert rows.at[("sft", "ja"), "p_vs_best"] == pytest.approx(welch([0.5, 0.7, 0.6], [0.8, 0.9, 1.0]))
    assert report.report_main([str(tmp_path), "--metric", "cococola_ratio", "--by-language"]) == 0
    assert "| method | ja | en |" in (tmp_path / "report" / "report_by_language.md").read_text()
    assert "per test language (the languages a cell trained on included" in capsys.readouterr().out


# --------------------------------------------------------------- (ii) task kinds apart
def write_mixed_root(root: Path) -> None:
    """One block (same method, model, benchmark, languages) run as classification and as generation:
    accuracy 80 % classifying, 20 % generating; averaged together they would read 50 %."""
    for seed in (0, 1):
        write_run(root, "spt", seed, {"all": {"accuracy": 0.8, "macro_f1": 0.7, "n_languages": 2}})
        write_run(root, "spt", seed, {"all": {"accuracy": 0.2, "exact_match": 0.1, "output_language_rate": 0.9,
                                              "empty_rate": 0.0, "n_languages": 2}},
                  task="generation", metrics=GENERATION_METRICS)


def test_mixed_task_kinds_are_reported_per_kind_never_averaged(tmp_path, capsys, wide_console):
    write_mixed_root(tmp_path)
    with pytest.raises(report.ReportError, match=r"the runs mix task kinds \(classification, generation\)"):
        report.group_table(report.collect_runs(tmp_path))
    assert report.report_main([str(tmp_path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps a title to its table's width
    assert "Test accuracy (%) [classification] model=m" in printed and "Test accuracy (%) [generation]" in printed
    out = tmp_path / "report"
    names = {path.name for path in out.iterdir()}
    assert {f"report_{kind}.{extension}" for kind in ("classification", "generation")
            for extension in ("csv", "md", "tex")} <= names
    assert {"per_language_accuracy_classification.png", "per_language_accuracy_generation.png"} <= names
    assert "report.csv" not in names
    for kind, mean in (("classification", 80.0), ("generation", 20.0)):
        csv = pd.read_csv(out / f"report_{kind}.csv")
        assert csv["mean"].tolist() == [pytest.approx(mean)] and csv["task"].eq(kind).all()
        assert csv["cell_label"].tolist() == ["spt"]  # alone in its table: no config keys spelled out
    assert "50.0" not in (out / "report_classification.md").read_text() + (out / "report_generation.md").read_text()
    status = pd.read_csv(out / "status.csv")  # the status covers every run, the kinds apart
    assert status["cell"].value_counts().to_dict() == {"spt / classification": 2, "spt / generation": 2}
    assert pd.read_csv(out / "per_language_all.csv")["task"].value_counts().to_dict() == {"classification": 2,
                                                                                          "generation": 2}


def test_mixed_root_metric_or_method_of_one_kind(tmp_path, capsys, wide_console):
    write_mixed_root(tmp_path)
    assert report.report_main([str(tmp_path), "--metric", "exact_match"]) == 0
    assert "info: no exact_match in the classification records: no classification table." in capsys.readouterr().out
    names = {path.name for path in (tmp_path / "report").iterdir()}
    assert "report_generation.csv" in names and "report_classification.csv" not in names

    for seed in (0, 1):  # a method run for classification only
        write_run(tmp_path, "lora", seed, {"all": {"accuracy": 0.7 + seed / 10, "macro_f1": 0.7, "n_languages": 2}})
    assert report.report_main([str(tmp_path), "--compare-to", "lora"]) == 0
    assert "info: no lora run among the generation runs: no p vs lora there." in capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "report" / "report_classification.csv").set_index("method")
    assert csv.at["spt", "p_vs_reference"] == pytest.approx(welch_p([80.0, 80.0], [70.0, 80.0]))  # spt: zero variance


# -------------------------------------------------------------------- (iii) raw values
def test_a_metric_that_is_not_a_percentage_is_shown_raw(tmp_path, monkeypatch):
    length = MetricSpec(name="mean_length", higher_is_better=False, percent=False)
    for seed, (short, long) in enumerate(zip([0.412, 0.436], [0.61, 0.65])):
        for method, value in (("short", short), ("long", long)):
            write_run(tmp_path, method, seed, {"all": {"accuracy": 0.5, "mean_length": value, "n_languages": 1}},
                      metrics=(*CLASSIFICATION_METRICS, length))
    runs = report.collect_runs(tmp_path)
    table = report.group_table(runs, "mean_length")
    rows = table.rows.set_index("method")
    assert rows.at["short", "mean"] == pytest.approx(0.424) and rows.at["short", "best"]
    assert not rows["percent"].any()
    markdown = report.format_markdown(table)
    assert "| short | **0.424 ± 0.152** (n=2) |" in markdown and "42.4" not in markdown
    assert markdown.split("\n\n")[-1].startswith("Test mean_length ↓ per report group:")

    limits = {}
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: (
        limits.update(y=figure.axes[0].get_ylim()), save(figure, *args, **kwargs))[1])
    report.plot_per_language(runs, tmp_path / "raw.png", metric="mean_length")
    assert 0.3 < limits["y"][0] and limits["y"][1] < 1.0  # from the data, in raw units
    report.plot_per_language(runs, tmp_path / "percent.png", metric="accuracy")
    assert limits["y"] == (45.0, 100.5)  # a percentage: up to 100


# ---------------------------------------------------------------- (iv) unknown metric
def test_unknown_metric_names_the_metrics_the_records_have(tmp_path, capsys):
    write_mixed_root(tmp_path)
    assert report.report_main([str(tmp_path), "--metric", "bleu"]) == 2
    assert capsys.readouterr().err == (
        "xlt-report: error: unknown metric 'bleu'; metrics in the records: accuracy, macro_f1 (classification); "
        "accuracy, exact_match, output_language_rate, empty_rate (generation).\n")
    runs = report.collect_runs(tmp_path)
    with pytest.raises(report.ReportError, match=r"unknown metric 'bleu'; metrics in the records: accuracy, "
                                                 r"macro_f1 \(classification\)\.$"):
        report.group_table(runs[runs["task"] == "classification"], "bleu")


# ----------------------------------------------------------------- (v) the probe's metric
PROBE = {"spt": [0.30, 0.33, 0.31], "xpe": [0.20, 0.22, 0.25]}


def write_probe_runs(root: Path, legacy: bool) -> None:
    """Probe records as the runner writes them now, or (``legacy``) as it did before metric specs."""
    for method, recalls in PROBE.items():
        for seed, recall in enumerate(recalls):
            if legacy:
                probe = {"accuracy": recall, "macro_f1": None, "higher_is_better": False}
            else:
                probe = {"langid_recall": recall}
            groups = {"all": {"accuracy": 0.6 + seed / 100, "macro_f1": 0.5, "n_languages": 4},
                      "langid": {**probe, "n_languages": 6}, "langid:lowperf": {**probe, "n_languages": 2}}
            write_run(root, method, seed, groups, metrics=None if legacy else (*CLASSIFICATION_METRICS, LANGID_RECALL),
                      task=None if legacy else "classification",
                      groups_not_reported={"seen": SOURCE_ONLY, "langid:unseen": NOT_PROBED})


def test_langid_recall_has_its_own_table_lowest_best(tmp_path):
    write_probe_runs(tmp_path, legacy=False)
    runs = report.collect_runs(tmp_path)
    assert report.group_table(runs).groups == ["all", "seen"]  # the accuracy table: no probe group
    table = report.group_table(runs, "langid_recall")
    assert table.groups == ["langid", "langid:lowperf", "langid:unseen"]  # the task's n/r group: not here
    rows = table.rows.set_index(["method", "group"])
    assert rows.at[("xpe", "langid"), "best"] and not rows.at[("spt", "langid"), "best"]
    assert rows.at[("spt", "langid:lowperf"), "p_vs_best"] == pytest.approx(welch(PROBE["spt"], PROBE["xpe"]))
    markdown = report.format_markdown(table)
    assert "| method | langid ↓ | langid:lowperf ↓ | langid:unseen ↓ |" in markdown
    assert "| xpe | **22.3 ± 6.3** (n=3) | **22.3 ± 6.3** (n=3) | n/r¹ |" in markdown
    assert f"¹ n/r: not reported: {NOT_PROBED}" in markdown


def test_legacy_probe_records_read_as_langid_recall(tmp_path):
    write_probe_runs(tmp_path / "new", legacy=False)
    write_probe_runs(tmp_path / "old", legacy=True)
    new, old = (report.collect_runs(tmp_path / name) for name in ("new", "old"))
    for metric in ("accuracy", "macro_f1", "langid_recall"):
        assert report.format_markdown(report.group_table(old, metric)) == \
            report.format_markdown(report.group_table(new, metric))
    assert report.metric_names(old) == ["accuracy", "macro_f1", "langid_recall"]
