"""README tables are generated from the tracked result files, and the README in the repository is up to date."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import readme_tables  # noqa: E402


def test_readme_is_generated_from_the_result_files():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "<!-- table:bundle_defaults -->" in readme and "<!-- table:threads -->" in readme
    assert readme_tables.main(["--check"]) == 0


def test_check_catches_a_hand_edited_number_and_rewrite_restores_it(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    cases = [{"load": "idle", "threads": 1, "median": 0.5}, {"load": "idle", "threads": 2, "median": 0.8}]
    (results / "threads.json").write_text(json.dumps({"cases": cases}))
    monkeypatch.setattr(readme_tables, "RESULTS", results)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:threads -->\nold\n<!-- /table:threads -->\nend\n")
    assert readme_tables.main(["--check", "--readme", str(readme)]) == 1
    assert readme_tables.main(["--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "| idle | 2       | 0.800         | 1.60x       |" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert readme_tables.main(["--check", "--readme", str(readme)]) == 0
    readme.write_text(text.replace("0.800", "0.900"))
    assert readme_tables.main(["--check", "--readme", str(readme)]) == 1


def test_unknown_table_is_an_error():
    with pytest.raises(KeyError, match="no renderer"):
        readme_tables.render("<!-- table:nonsense -->\nx\n<!-- /table:nonsense -->")
