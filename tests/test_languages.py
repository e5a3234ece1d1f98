from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from xlt_runner.config import ConfigError
from xlt_runner.data.languages import Language, LanguageTable


@pytest.fixture(scope="module")
def table() -> LanguageTable:
    return LanguageTable.default()


def test_default_table_is_cached_and_complete(table):
    assert LanguageTable.default() is table
    assert len(table.codes) == 205
    assert table.codes == sorted(table.codes)
    assert "eng_Latn" in table and "xyz_Latn" not in table


def test_row_contents(table):
    eng = table["eng_Latn"]
    assert eng == Language(code="eng_Latn", name="English", script="Latn", family="Indo-European",
                           region="Europe 1", joshi_class=5, xlmr_seen=True, sib200_xlmr_large_acc=92.1)
    nqo = table["nqo_Nkoo"]
    assert nqo.sib200_xlmr_large_acc is None and not nqo.xlmr_seen and nqo.script == "Nkoo"
    assert table["acm_Arab"].joshi_class is None
    # XPE's meta.csv is the authority for seen/Joshi (Table 7 disagrees on these two).
    assert table["pan_Guru"].xlmr_seen and table["pan_Guru"].joshi_class == 2
    assert table["ory_Orya"].xlmr_seen
    with pytest.raises(KeyError, match="eng_Latn"):
        table["eng_Latm"]


def test_named_set_sizes(table):
    sets = table.named_sets()
    assert {name: len(codes) for name, codes in sets.items()} == {
        "enarzho": 3, "joshi5": 7, "seen": 92, "unseen": 113, "lowperf": 46, "all": 205,
        "xpe46_seen": 23, "xpe46_unseen": 24, "xpe46": 47}
    assert sets["enarzho"] == ["eng_Latn", "arb_Arab", "zho_Hans"]
    assert sets["joshi5"] == ["arb_Arab", "deu_Latn", "eng_Latn", "fra_Latn", "jpn_Jpan", "spa_Latn", "zho_Hans"]
    assert set(sets["seen"]) | set(sets["unseen"]) == set(sets["all"])
    # The XPE paper's Low-Performing group: below 60 % in SIB-200's Table 7, plus nqo_Nkoo (not in it).
    below_60 = [c for c in sets["all"] if (table[c].sib200_xlmr_large_acc or 100) < 60]
    assert sets["lowperf"] == sorted(below_60 + ["nqo_Nkoo"])
    assert not set(sets["lowperf"]) & set(sets["seen"])


APPENDIX_A = Path(__file__).resolve().parents[2] / "shared" / "data" / "sib200" / "meta" / "xpe_paper_appendix_a.tsv"


@pytest.mark.skipif(not APPENDIX_A.exists(), reason="the XPE paper's Appendix A file is not on this machine")
def test_lowperf_is_the_xpe_papers_group_2(table):
    with open(APPENDIX_A, encoding="utf-8") as f:
        group_2 = {row["lang"] for row in csv.DictReader(f, delimiter="\t") if row["group"] == "2"}
    assert len(group_2) == 46 and set(table.named_sets()["lowperf"]) == group_2


def test_resolve_union_difference_and_order(table):
    assert table.resolve(["enarzho", "eng_Latn", "deu_Latn"]) == ["eng_Latn", "arb_Arab", "zho_Hans", "deu_Latn"]
    seen_minus_joshi5 = table.resolve(["seen-joshi5"])
    assert len(seen_minus_joshi5) == 85 and "eng_Latn" not in seen_minus_joshi5
    assert table.resolve(["all-joshi5"]) == [c for c in table.codes if table[c].joshi_class != 5]
    assert table.resolve(["enarzho-eng_Latn"]) == ["arb_Arab", "zho_Hans"]
    assert table.resolve([" seen - joshi5 "]) == seen_minus_joshi5


def test_resolve_with_available(table):
    available = ["zho_Hans", "eng_Latn", "fin_Latn", "xyz_Latn"]
    assert table.resolve(["all"], available) == ["eng_Latn", "fin_Latn", "zho_Hans"]
    assert table.resolve(["enarzho"], available) == ["eng_Latn", "zho_Hans"]
    # a code outside the table is fine when the benchmark has it
    assert table.resolve(["xyz_Latn", "eng_Latn"], available) == ["xyz_Latn", "eng_Latn"]


@pytest.mark.parametrize("entry, expected_hint", [("eng_latn", "eng_Latn"), ("sen", "seen"),
                                                  ("seen-jsohi5", "joshi5")])
def test_resolve_unknown_entry(table, entry, expected_hint):
    with pytest.raises(ConfigError) as info:
        table.resolve([entry])
    message = str(info.value)
    assert expected_hint in message and "lowperf" in message and repr(entry) in message


def test_figure_order(table):
    groups = table.figure_order(["zho_Hans", "nqo_Nkoo", "eng_Latn", "ace_Arab", "xyz_Latn", "eng_Latn"])
    assert groups == [("Seen", ["eng_Latn", "zho_Hans"]), ("Unseen", ["ace_Arab", "nqo_Nkoo"]),
                      ("Other", ["xyz_Latn"])]
    full = dict(table.figure_order(table.codes))
    accuracies = [table[c].sib200_xlmr_large_acc for c in full["Seen"]]
    assert len(full["Seen"]) == 92 and accuracies == sorted(accuracies, reverse=True)
    assert table.figure_order(["eng_Latn"]) == [("Seen", ["eng_Latn"])]


def test_extended_and_from_tsv_roundtrip(table, tmp_path):
    extra = Language(code="xyz_Latn", name="Xyz", script="Latn", family="Isolate", region="Europe 1",
                     joshi_class=None, xlmr_seen=False, sib200_xlmr_large_acc=None)
    bigger = table.extended([extra, table["eng_Latn"]])
    assert len(bigger.codes) == 206 and bigger["xyz_Latn"] == extra and len(table.codes) == 205
    path = tmp_path / "languages.tsv"
    path.write_text("code\tname\tscript\tfamily\tregion\tjoshi_class\txlmr_seen\tsib200_xlmr_large_acc\n"
                    "xyz_Latn\tXyz\tLatn\tIsolate\tEurope 1\t\t0\t\n", encoding="utf-8")
    assert LanguageTable.from_tsv(path)["xyz_Latn"] == extra


def test_build_script_reproduces_committed_table(tmp_path):
    script = Path(__file__).resolve().parents[1] / "tools" / "build_language_table.py"
    spec = importlib.util.spec_from_file_location("build_language_table", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (module.DEFAULT_META_DIR / module.XPE_META).is_file():
        pytest.skip(f"SIB-200 metadata not available at {module.DEFAULT_META_DIR}")
    out = tmp_path / "languages.tsv"
    assert module.main(["--out", str(out)]) == 0
    committed = Path(__file__).resolve().parents[1] / "xlt_runner" / "data" / "languages.tsv"
    assert out.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")
