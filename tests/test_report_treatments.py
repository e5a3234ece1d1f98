"""``xlt-report --treatments``: the layout of Table 1 of Bandarkar et al. (MRL 2025), a row per
treatment, Full and LoRA columns, each with the mean over the target languages and English, mean
± 95% CI over seeds; LoRA detection and the ``_lora`` row merge; a seed lacking a language."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from xlt_runner.fileio import write_json_atomic
from xlt_runner.metrics.spec import MetricSpec
from xlt_runner.results import record, report

MATH_METRICS = (MetricSpec(name="exact_match"), MetricSpec(name="unparsable_rate", higher_is_better=False))
T = scipy_stats.t.ppf(0.975, 2)  # Student t quantile, 3 seeds


def write_run(root: Path, method: str, seed: int, scores: dict[str, float | None], *, family: str = "sft",
              lora: dict | None = None, merge: dict | None = None, model: str = "m", status: str = "complete",
              targets: list[str] | None = None) -> Path:
    """A math record as the runner writes one: MGSM in English and one target language (the one
    language of ``scores`` other than en, ``languages.name`` mgsm_<lang>); ``scores``: exact match
    per language (fractions)."""
    lang = next(code for code in scores if code != "en")
    method_config = {"name": method, "family": family, **({"lora": lora} if lora is not None or
                                                           family == "partition_sft" else {})}
    config = {"method": method_config, "model": {"name": model}, "benchmark": {"name": "mgsm", "task": "math"},
              "languages": {"name": f"mgsm_{lang}", "targets": ["en", lang]}, "seed": seed}
    run = {"status": status, "run_id": f"{model}-{method}-{lang}-s{seed}", "sweep_name": "partition_table1",
           "method": method, "model": model, "benchmark": "mgsm", "languages": f"mgsm_{lang}", "seed": seed,
           "target_languages": targets if targets is not None else ["en", lang],
           "finished_at": f"2026-01-01T00:00:0{seed}",
           "config": config, "overrides": [], "task": "math", "metrics": [spec.to_dict() for spec in MATH_METRICS],
           "primary_metric": "exact_match",
           "per_language": {code: {"exact_match": value, "unparsable_rate": 0.01, "n": 250}
                            for code, value in scores.items()},
           "groups": {}, "group_members": {}, "groups_not_reported": {}}
    if merge is not None:
        run["merge"] = merge
    path = root / run["run_id"]
    write_json_atomic(path / record.RESULTS_FILE, run)
    return path


#: (treatment preset, family, per seed: {language: exact match}) of the hand-computed case: 2
#: treatments x full/LoRA x 2 target languages (sw, te) x 3 seeds. Each run's English score is
#: given with its target language: (target, en).
SMALL = {
    ("math_only", "sft"): [{"sw": (0.20, 0.60), "te": (0.30, 0.62)},
                           {"sw": (0.24, 0.64), "te": (0.36, 0.66)},
                           {"sw": (0.28, 0.68), "te": (0.42, 0.70)}],
    ("math_only_lora", "lora"): [{"sw": (0.18, 0.50), "te": (0.22, 0.50)},
                                 {"sw": (0.20, 0.52), "te": (0.24, 0.52)},
                                 {"sw": (0.22, 0.54), "te": (0.26, 0.54)}],
    ("data_mixing", "sft"): [{"sw": (0.40, 0.60), "te": (0.40, 0.60)},
                             {"sw": (0.40, 0.60), "te": (0.42, 0.60)},
                             {"sw": (0.44, 0.66), "te": (0.40, 0.66)}],
    ("data_mixing_lora", "lora"): [{"sw": (0.10, 0.70), "te": (0.10, 0.70)},
                                   {"sw": (0.08, 0.72), "te": (0.12, 0.72)},
                                   {"sw": (0.15, 0.74), "te": (0.17, 0.74)}],
}


def write_small(root: Path, skip: tuple = ()) -> None:
    """The :data:`SMALL` runs, less those ``(method, seed, lang)`` in ``skip``."""
    for (method, family), seeds in SMALL.items():
        for seed, languages in enumerate(seeds):
            for lang, (target, english) in languages.items():
                if (method, seed, lang) not in skip:
                    write_run(root, method, seed, {"en": english, lang: target}, family=family)


def hw(values: list[float]) -> float:
    """95% CI half-width over seeds (Student t, n-1 dof), as computed by hand."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


@pytest.fixture
def wide_console(monkeypatch):
    """``xlt-report`` output without line wrapping (rich reads COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "1000")


def cells(table: report.TreatmentTable) -> pd.DataFrame:
    return table.rows.set_index(["treatment", "tuning", "column"])


# ------------------------------------------------------------------ the hand-computed case
def test_small_case_values_by_hand(tmp_path):
    write_small(tmp_path)
    write_run(tmp_path / "retry", "math_only", 0, {"en": 0.99, "sw": 0.99}, status="failed")  # never averaged in
    table = report.treatment_table(report.collect_runs(tmp_path))
    assert table.metric == "exact_match" and table.groups == ["full:target", "full:en", "lora:target", "lora:en"]
    rows = cells(table)
    # math_only, Full: per seed (sw + te) / 2 = 25, 30, 35 -> 30 ± t*5/sqrt(3); en (60+62)/2, ... = 61, 65, 69
    target = rows.loc[("math_only", "full", "target")]
    assert target["seeds"] == [0, 1, 2] and target["n_seeds"] == 3 and target["n_languages"] == 2
    assert target["mean"] == pytest.approx(30.0) and target["ci_half_width"] == pytest.approx(T * 5 / math.sqrt(3))
    assert target["languages_averaged"] == "sw, te" and target["methods"] == "math_only"
    english = rows.loc[("math_only", "full", "en")]
    assert english["mean"] == pytest.approx(65.0) and english["ci_half_width"] == pytest.approx(hw([61, 65, 69]))
    # math_only_lora is the LoRA cell of the math_only row: 20, 22, 24 -> 22; en 50, 52, 54 -> 52
    lora = rows.loc[("math_only", "lora", "target")]
    assert lora["mean"] == pytest.approx(22.0) and lora["ci_half_width"] == pytest.approx(hw([20, 22, 24]))
    assert lora["methods"] == "math_only_lora"
    assert rows.at[("math_only", "lora", "en"), "mean"] == pytest.approx(52.0)
    # data_mixing, Full: 40, 41, 42 -> 41 (best of its column); en 60, 60, 66 -> 62
    assert rows.at[("data_mixing", "full", "target"), "mean"] == pytest.approx(41.0)
    assert rows.at[("data_mixing", "full", "target"), "ci_half_width"] == pytest.approx(hw([40, 41, 42]))
    assert rows.at[("data_mixing", "full", "en"), "mean"] == pytest.approx(62.0)
    # data_mixing, LoRA: 10, 10, 16 -> 12; en 70, 72, 74 -> 72 (best LoRA en)
    assert rows.at[("data_mixing", "lora", "target"), "mean"] == pytest.approx(12.0)
    assert rows.at[("data_mixing", "lora", "en"), "mean"] == pytest.approx(72.0)
    best = rows[rows["best"]].index.tolist()
    assert sorted(best) == sorted([("data_mixing", "full", "target"), ("math_only", "full", "en"),
                                   ("math_only", "lora", "target"), ("data_mixing", "lora", "en")])
    assert rows.at[("math_only", "full", "target"), "p_vs_best"] == pytest.approx(
        scipy_stats.ttest_ind([25, 30, 35], [40, 41, 42], equal_var=False).pvalue)
    assert table.footnotes == [] and table.notes == []

    header, body, constants = report.wide_rows(table, "md")
    assert constants == {"model": "m", "benchmark": "mgsm", "target languages": "sw, te"}
    assert header == ["treatment", "Full: target (mean over languages)", "Full: en",
                      "LoRA: target (mean over languages)", "LoRA: en"]
    assert [cells_[0] for cells_ in body] == ["math_only", "data_mixing"]  # the paper's order, not alphabetical
    assert body[0][1].startswith(f"30.0 ± {T * 5 / math.sqrt(3):.1f} (n=3; 2 langs) p=")
    assert body[0][2] == f"**65.0 ± {hw([61, 65, 69]):.1f}** (n=3)"  # the best: no p; en has no language count
    assert body[1][1] == f"**41.0 ± {hw([40, 41, 42]):.1f}** (n=3; 2 langs)"
    markdown = report.format_markdown(table)
    assert "| treatment | Full: target (mean over languages) | Full: en | LoRA: target (mean over languages) | " \
           "LoRA: en |" in markdown
    assert "English never averaged in" in markdown and "target languages: `sw, te`." in markdown


def test_lower_is_better_metric_marks_the_lowest(tmp_path):
    write_small(tmp_path)
    table = report.treatment_table(report.collect_runs(tmp_path), "unparsable_rate")
    assert not table.spec.higher_is_better and table.rows["mean"].eq(1.0).all()  # 0.01 shown as 1.0 %
    assert table.rows["best"].all()  # all tie
    assert "Full: en ↓" in report.wide_rows(table, "md")[0]


# -------------------------------------------------------------------- LoRA, row names
def test_lora_detected_three_ways_and_merged_into_the_row_without_lora():
    assert report.treatment_of({"method": "math_only", "config": {"method": {"name": "math_only", "family": "sft"}}}) \
        == ("math_only", "full")
    assert report.treatment_of({"method": "math_only_lora", "config": {"method": {"family": "lora"}}}) \
        == ("math_only", "lora")
    assert report.treatment_of({"method": "partition_sft_lora",
                                "config": {"method": {"family": "partition_sft", "lora": {"r": 8}}}}) \
        == ("partition_sft", "lora")
    assert report.treatment_of({"method": "partition_sft", "config": {"method": {"family": "partition_sft",
                                                                                 "lora": None}}}) \
        == ("partition_sft", "full")
    assert report.treatment_of({"method": "layer_swap_full", "config": {"method": {"family": "layer_swap"}},
                                "merge": {"kind": "lora"}}) == ("layer_swap_full", "lora")
    assert report.treatment_of({"method": "layer_swap_full_lora", "config": {"method": {"family": "layer_swap"}},
                                "merge": {"kind": "lora"}}) == ("layer_swap_full", "lora")
    assert report.treatment_of({"method": "layer_swap_full", "merge": {"kind": "weights"}}) \
        == ("layer_swap_full", "full")
    # a full run keeps a name ending in _lora (its row is not merged)
    assert report.treatment_of({"method": "odd_lora", "config": {"method": {"family": "sft"}}}) == ("odd_lora", "full")


def test_lora_columns_from_records(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "partition_sft", seed, {"en": 0.5, "sw": 0.30}, family="partition_sft")
        write_run(tmp_path, "partition_sft_lora", seed, {"en": 0.5, "sw": 0.20}, family="partition_sft",
                  lora={"r": 8, "alpha": 16})
        write_run(tmp_path, "layer_swap_full", seed, {"en": 0.5, "sw": 0.40}, family="layer_swap",
                  merge={"kind": "weights"})
        write_run(tmp_path, "layer_swap_full_lora", seed, {"en": 0.5, "sw": 0.10}, family="layer_swap",
                  merge={"kind": "lora"})
        write_run(tmp_path, "language_only_lora", seed, {"en": 0.5, "sw": 0.15}, family="lora")
        write_run(tmp_path, "odd_lora", seed, {"en": 0.5, "sw": 0.05}, family="sft")
    runs = report.collect_runs(tmp_path)
    assert set(zip(runs["method"], runs["treatment"], runs["tuning"])) == {
        ("partition_sft", "partition_sft", "full"), ("partition_sft_lora", "partition_sft", "lora"),
        ("layer_swap_full", "layer_swap_full", "full"), ("layer_swap_full_lora", "layer_swap_full", "lora"),
        ("language_only_lora", "language_only", "lora"), ("odd_lora", "odd_lora", "full")}
    table = report.treatment_table(runs)
    rows = cells(table)
    assert rows.at[("partition_sft", "full", "target"), "mean"] == pytest.approx(30.0)
    assert rows.at[("partition_sft", "lora", "target"), "mean"] == pytest.approx(20.0)
    assert rows.at[("layer_swap_full", "lora", "target"), "mean"] == pytest.approx(10.0)
    assert rows.at[("language_only", "lora", "target"), "mean"] == pytest.approx(15.0)
    # rows in the fixed order; a treatment not in it goes after, alphabetically
    assert list(dict.fromkeys(table.rows["treatment"])) == ["language_only", "partition_sft", "layer_swap_full",
                                                            "odd_lora"]
    header, body, _ = report.wide_rows(table, "md")
    language_only = body[0]
    assert language_only[1] == "–" and language_only[2] == "–"  # no full language_only run: no Full cells
    assert table.notes == ["warning: odd_lora runs are not LoRA by their config (method.family, method.lora, "
                           "merge.kind): they are in the Full column of a row odd_lora."]


def test_row_order_fixed_then_unknown_alphabetically(tmp_path):
    for method in ("zeta", "prompting", "alpha", "layer_swap_reset", "language_partial", "math_only"):
        write_run(tmp_path, method, 0, {"en": 0.5, "sw": 0.3})
    table = report.treatment_table(report.collect_runs(tmp_path))
    assert [cells_[0] for cells_ in report.wide_rows(table, "md")[1]] == [
        "math_only", "language_partial", "layer_swap_reset", "prompting", "alpha", "zeta"]


def test_a_record_without_target_languages_uses_its_per_language_results(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "math_only", seed, {"en": 0.6, "sw": 0.2 + seed / 10}, targets=[])
    rows = cells(report.treatment_table(report.collect_runs(tmp_path)))
    assert rows.at[("math_only", "full", "target"), "mean"] == pytest.approx(25.0)  # sw only, never en
    assert rows.at[("math_only", "full", "target"), "languages_averaged"] == "sw"


# ------------------------------------------------------------------ missing languages
def test_a_seed_missing_a_language_is_left_out_with_a_footnote(tmp_path):
    write_small(tmp_path, skip={("math_only", 2, "te")})  # seed 2's te run never finished
    table = report.treatment_table(report.collect_runs(tmp_path))
    rows = cells(table)
    target = rows.loc[("math_only", "full", "target")]
    # seeds 0 and 1 only: 25, 30 (never seed 2's sw alone, 28)
    assert target["seeds"] == [0, 1] and target["seeds_left_out"] == [2] and target["n_languages"] == 2
    assert target["mean"] == pytest.approx(27.5) and target["ci_half_width"] == pytest.approx(hw([25, 30]))
    english = rows.loc[("math_only", "full", "en")]
    assert english["seeds"] == [0, 1] and english["mean"] == pytest.approx(63.0)  # (61 + 65) / 2
    assert rows.at[("math_only", "lora", "target"), "n_seeds"] == 3  # the LoRA cell is whole
    assert table.footnotes == ["math_only, Full: left out, not averaged over fewer languages: seed 2 (no te)."]
    body = report.wide_rows(table, "md")[1]
    assert body[0][1].startswith(f"27.5 ± {hw([25, 30]):.1f}¹ (n=2; 2 langs)")
    assert body[0][2].startswith("**63.0 ± ") and "¹ (n=2)" in body[0][2]
    assert "¹" not in body[0][3]
    markdown = report.format_markdown(table)
    assert "¹ math_only, Full: left out, not averaged over fewer languages: seed 2 (no te)." in markdown
    latex = report.format_latex(table)
    assert r"$^{1}$" in latex and r"% $^{1}$ math_only, Full: left out" in latex


def test_a_language_missing_everywhere_in_a_cell_and_a_row_with_fewer_languages(tmp_path):
    write_small(tmp_path, skip={("data_mixing_lora", seed, "te") for seed in range(3)})
    for seed in range(3):  # a treatment run in sw only
        write_run(tmp_path, "language_only", seed, {"en": 0.5, "sw": 0.3 + seed / 100})
    table = report.treatment_table(report.collect_runs(tmp_path))
    rows = cells(table)
    # the row has te (its Full runs): every LoRA seed lacks te -> no value, never sw alone
    empty = rows.loc[("data_mixing", "lora", "target")]
    assert empty["n_seeds"] == 0 and math.isnan(empty["mean"]) and empty["seeds_left_out"] == [0, 1, 2]
    assert rows.at[("language_only", "full", "target"), "mean"] == pytest.approx(31.0)
    assert rows.at[("language_only", "full", "target"), "n_languages"] == 1
    assert table.footnotes == [
        "language_only, Full: averages sw only (no te run of language_only).",
        "data_mixing, LoRA: left out, not averaged over fewer languages: seed 0 (no te), seed 1 (no te), "
        "seed 2 (no te)."]
    body = {cells_[0]: cells_ for cells_ in report.wide_rows(table, "md")[1]}
    assert body["data_mixing"][3] == "–²" and body["data_mixing"][4] == "–²"
    assert "(n=3; 1 lang)" in body["language_only"][1] and "¹" in body["language_only"][1]


def test_a_seed_without_english_is_left_out_of_en_only(tmp_path):
    write_small(tmp_path)
    write_run(tmp_path, "math_only", 2, {"en": None, "sw": 0.28}, family="sft")  # replaces seed 2's sw run
    table = report.treatment_table(report.collect_runs(tmp_path))
    rows = cells(table)
    assert rows.at[("math_only", "full", "target"), "n_seeds"] == 3
    assert rows.at[("math_only", "full", "en"), "seeds"] == [0, 1]
    assert rows.at[("math_only", "full", "en"), "seeds_left_out"] == [2]
    assert table.footnotes == ["math_only, Full: left out of en: seed 2 (no en)."]


def test_two_configs_of_one_treatment_seed_and_language_are_refused(tmp_path):
    write_small(tmp_path)
    path = write_run(tmp_path / "other", "math_only", 0, {"en": 0.5, "sw": 0.1})
    data = record.load_record(path)
    data["config"]["method"]["lr"] = 0.1
    write_json_atomic(path / record.RESULTS_FILE, data)
    with pytest.raises(report.ReportError, match=r"treatment math_only \(Full\) of model=m, benchmark=mgsm has two "
                                                 r"runs of seed 0 testing sw, whose configs differ"):
        report.treatment_table(report.collect_runs(tmp_path))


def test_blocks_per_model(tmp_path):
    write_small(tmp_path)
    for seed in range(2):
        write_run(tmp_path, "math_only", seed, {"en": 0.9, "sw": 0.8}, model="big")
    table = report.treatment_table(report.collect_runs(tmp_path))
    header, body, constants = report.wide_rows(table, "md")
    assert header[:3] == ["model", "target_languages", "treatment"] and constants == {"benchmark": "mgsm"}
    assert [cells_[:3] for cells_ in body] == [["big", "sw", "math_only"], ["m", "sw, te", "math_only"],
                                               ["m", "sw, te", "data_mixing"]]  # blocks in name order
    rows = table.rows.set_index(["model", "treatment", "tuning", "column"])
    assert rows.at[("big", "math_only", "full", "target"), "best"]  # best within its block
    assert rows.at[("m", "data_mixing", "full", "target"), "best"]
    assert rows.at[("big", "math_only", "full", "target"), "target_languages"] == "sw"


# ------------------------------------------------------------------------------- CLI
def test_cli_writes_the_treatments_table(tmp_path, capsys, wide_console):
    write_small(tmp_path, skip={("math_only", 2, "te")})
    assert report.report_main([str(tmp_path), "--treatments"]) == 0
    printed = capsys.readouterr().out
    assert "Test exact_match (%) by treatment" in printed and "Full: target (mean over languages)" in printed
    assert "¹ math_only, Full: left out, not averaged over fewer languages: seed 2 (no te)." in printed
    out = tmp_path / "report"
    names = {path.name for path in out.iterdir()}
    assert {"report_treatments.md", "report_treatments.csv", "report_treatments.tex"} <= names
    assert "report.csv" not in names
    csv = pd.read_csv(out / "report_treatments.csv", dtype={"seeds": str, "seeds_left_out": str}) \
        .set_index(["treatment", "tuning", "column"])
    assert csv.at[("math_only", "full", "target"), "mean"] == pytest.approx(27.5)
    assert csv.at[("math_only", "full", "target"), "seeds"] == "0;1"
    assert csv.at[("math_only", "full", "target"), "seeds_left_out"] == "2"
    assert pd.isna(csv.at[("math_only", "lora", "target"), "seeds_left_out"])
    assert csv.at[("data_mixing", "full", "target"), "best"]
    tex = (out / "report_treatments.tex").read_text()
    assert r"& \multicolumn{2}{c}{Full} & \multicolumn{2}{c}{LoRA} \\" in tex
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" in tex and r"treatment & target & en & target & en \\" in tex
    assert r"math\_only & " in tex
    assert "| data_mixing | **41.0 ± " in (out / "report_treatments.md").read_text()

    assert report.report_main([str(tmp_path), "--treatments", "--metric", "unparsable_rate"]) == 0
    assert "Test unparsable_rate (%) ↓ by treatment" in capsys.readouterr().out


def test_cli_refusals_and_no_complete_run(tmp_path, capsys):
    write_small(tmp_path)
    assert report.report_main([str(tmp_path), "--treatments", "--by-language"]) == 2
    assert "--treatments cannot be combined with --by-language" in capsys.readouterr().err
    assert report.report_main([str(tmp_path), "--treatments", "--compare-to", "math_only"]) == 2
    assert report.report_main([str(tmp_path), "--treatments", "--metric", "bleu"]) == 2
    assert "unknown metric 'bleu'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    write_run(empty, "math_only", 0, {"en": 0.5, "sw": 0.3}, status="failed")
    assert report.report_main([str(empty), "--treatments"]) == 1


def test_the_group_table_is_unchanged_without_the_flag(tmp_path):
    write_small(tmp_path)
    assert report.report_main([str(tmp_path)]) == 0
    names = {path.name for path in (tmp_path / "report").iterdir()}
    assert "report.csv" in names and not any("treatments" in name for name in names)
