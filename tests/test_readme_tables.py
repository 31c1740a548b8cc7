"""The documentation's tables are generated from the tracked result files, and README.md and docs/*.md are up to date."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import readme_tables  # noqa: E402


GENERATED = {  # every generated table and the page it belongs to
    "docs/bundles.md": {"bundle_defaults"},
    "docs/performance.md": {"threads", "gpu_check", "pretraining_step", "store_format", "store_scaling", "veu_forward"},
    "docs/evidence.md": {"seg_convergence", "acdc_baseline", "acdc_all_frames", "label_efficiency_la", "pretraining_length",
                         "label_efficiency_la_backbone_lr",
                         "label_efficiency_acdc", "label_efficiency_acdc_2400its", "feature_probe", "pretext_comparison",
                         "pretext_head_to_head", "pretext_comparison_long", "pretext_head_to_head_long"},
}


def test_docs_are_generated_from_the_result_files():
    for page, names in GENERATED.items():
        text = (REPO / page).read_text(encoding="utf-8")
        assert {m.group("name") for m in readme_tables._BLOCK.finditer(text)} == names, page
    assert readme_tables.documentation_files()[0] == REPO / "README.md"
    assert {str(p.relative_to(REPO)) for p in readme_tables.documentation_files()} >= set(GENERATED)
    assert readme_tables.main(["--check"]) == 0


def test_check_catches_a_hand_edited_number_and_rewrite_restores_it(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    cases = [{"load": "idle", "threads": 1, "median": 0.5}, {"load": "idle", "threads": 2, "median": 0.8}]
    (results / "threads.json").write_text(json.dumps({"cases": cases}))
    monkeypatch.setattr(readme_tables, "RESULTS", results)
    page = tmp_path / "performance.md"
    page.write_text("intro\n<!-- table:threads -->\nold\n<!-- /table:threads -->\nend\n")
    untouched = tmp_path / "other.md"
    untouched.write_text("no tables\n")
    files = ["--files", str(untouched), str(page)]
    assert readme_tables.main(["--check", *files]) == 1
    assert readme_tables.main(files) == 0
    text = page.read_text(encoding="utf-8")
    assert "| idle | 2       | 0.800         | 1.60x       |" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert readme_tables.main(["--check", *files]) == 0 and untouched.read_text() == "no tables\n"
    page.write_text(text.replace("0.800", "0.900"))
    assert readme_tables.main(["--check", *files]) == 1


def test_unknown_table_is_an_error():
    with pytest.raises(KeyError, match="no renderer"):
        readme_tables.render("<!-- table:nonsense -->\nx\n<!-- /table:nonsense -->")
    with pytest.raises(KeyError, match="no renderer"):  # digits belong to a name: the block is not skipped
        readme_tables.render("<!-- table:nonsense_2400its -->\nx\n<!-- /table:nonsense_2400its -->")


def test_table_marker_without_its_closing_marker_is_an_error():
    with pytest.raises(ValueError, match="veu"):
        readme_tables.render("<!-- table:veu -->\nx\n<!-- /table:ve -->")


SUMMARY_HEADER = "mode,n_labelled,runs,dice_mean,dice_std,hd95_mm_mean,hd95_mm_std"
PAIRED_HEADER = ("mode,n_labelled,seeds,dice_diff_mean,dice_diff_t95_low,dice_diff_t95_high,dice_diff_boot95_low,"
                 "dice_diff_boot95_high")
TWO_SEED_RUNS = ["scratch,2,3,0.6,0.05,9.0,1.0", "pretrained,2,3,0.7,0.02,6.5,0.5"]
PAIRED_AT_2 = "pretrained,2,3,0.1,0.02,0.18,0.05,0.15"


def write_label_efficiency(folder: Path, summary: list[str], paired_header: str, paired: str) -> None:
    """A cover3d.protocols.label_efficiency output folder with these ``summary.csv`` rows and one ``paired.csv`` row."""
    folder.mkdir()
    (folder / "summary.csv").write_text("\n".join([SUMMARY_HEADER, *summary]) + "\n")
    (folder / "paired.csv").write_text(f"{paired_header}\n{paired}\n")


def test_label_efficiency_table_pairs_each_mode_with_scratch(tmp_path, monkeypatch):
    write_label_efficiency(tmp_path / "le", [*TWO_SEED_RUNS, "scratch,4,1,0.75,0.0,5.0,0.0"], PAIRED_HEADER, PAIRED_AT_2)
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path)
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in readme_tables.label_efficiency("le").splitlines()]
    assert lines[2] == ["2", "0.600 +- 0.050 (3)", "pretrained", "0.700 +- 0.020 (3)", "+0.100 [+0.020, +0.180]",
                        "[+0.050, +0.150]", "9.0 / 6.5"]
    assert lines[3] == ["4", "0.750 +- 0.000 (1)", "-", "-", "-", "-", "5.0 / -"]  # scratch finished, no pair yet
    assert readme_tables.label_efficiency("missing").startswith("(no finished runs")


def test_multi_class_label_efficiency_table_shows_each_class(tmp_path, monkeypatch):
    per_class = ",scratch_dice_class0,mode_dice_class0,scratch_dice_class1,mode_dice_class1"
    write_label_efficiency(tmp_path / "acdc", TWO_SEED_RUNS, PAIRED_HEADER + per_class, PAIRED_AT_2 + ",0.5,0.6,0.7,0.8")
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path)
    lines = readme_tables.label_efficiency("acdc", class_names=("RV", "LV")).splitlines()
    assert "Dice per class, scratch -> mode" in lines[0]
    assert lines[2].rstrip(" |").endswith("RV 0.500 -> 0.600, LV 0.700 -> 0.800")


def test_benchmark_tables_are_stored_and_rendered(tmp_path, monkeypatch):
    import argparse

    import _common

    monkeypatch.setattr(_common, "__file__", str(tmp_path / "_common.py"))  # results/ next to it
    (tmp_path / "results").mkdir()
    args = argparse.Namespace(quick=False, device="cpu", threads=1, child=None, reps=3)
    _common.save_table("benchmarks/veu.py", args, ["size", "ratio"], [["32^3", "0.14x"]])
    _common.save_table("benchmarks/pair_generation.py", argparse.Namespace(**{**vars(args), "quick": True}), ["a"], [[1]])
    assert not (tmp_path / "results" / "pair_generation.json").exists()  # quick runs do not replace the README's
    stored = json.loads((tmp_path / "results" / "veu.json").read_text())
    assert stored["arguments"]["reps"] == 3 and "child" not in stored["arguments"]
    monkeypatch.setattr(readme_tables, "RESULTS", tmp_path / "results")
    assert readme_tables.TABLES["veu"]().splitlines()[2] == "| 32^3 | 0.14x |"

    rows = "pair,volume,method,epe_vox,epe_mm,within_1vox,folding,seconds\n"
    rows += "0,a,zero field,6.0,12.0,0.0,0.0,0.0\n1,b,zero field,4.0,8.0,0.5,0.0,0.0\n0,a,cover3d,2.0,4.0,0.25,0.01,0.3\n"
    (tmp_path / "results" / "classical_registration_cover_mri.csv").write_text(rows)
    table = readme_tables.TABLES["classical_registration_cover_mri"]().splitlines()
    assert [c.strip() for c in table[2].split("|")[1:-1]] == ["zero field", "5.00", "10.00", "25.0", "0.000", "0.000"]
    assert [c.strip() for c in table[3].split("|")[1:-1]][:5] == ["cover3d", "2.00", "4.00", "25.0", "1.000"]
