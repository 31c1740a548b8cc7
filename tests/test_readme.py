"""The Python snippets of README.md and docs/bundles.md run as written from the repository root of a fresh clone:
they load the shipped weights ``weights/cover_mri_pool_2mm/model.pt``. (The shell commands of the README and the
docs, the field-export snippet included, run in ``tests/test_docs_commands.py``.)"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(encoding="utf-8"), flags=re.S)


def test_readme_loads_the_whole_shipped_backbone_into_monais_basic_unet(monkeypatch):
    (snippet,) = python_blocks("README.md")
    assert "weights/cover_mri_pool_2mm/model.pt" in snippet and (REPO / "weights/cover_mri_pool_2mm/model.pt").is_file()
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - the README's own code
    report = namespace["report"]
    assert report.backbone_fraction == 1.0 and len(report.loaded) == 80 and report.warnings == []
    assert sorted(report.missing) == ["final_conv.bias", "final_conv.weight"]
    assert type(namespace["net"]).__module__ == "monai.networks.nets.basic_unet"


def test_downstream_snippet_warns_about_each_preprocessing_difference_as_documented(monkeypatch, caplog):
    (snippet,) = python_blocks("docs/bundles.md")
    monkeypatch.chdir(REPO)
    caplog.set_level(logging.WARNING)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - the docs' own code
    comments = [line for line in snippet.splitlines() if line.lstrip().startswith("#")]
    documented = [line.split("# logs:")[-1].strip(" #") for line in comments]
    assert len(documented) == 2
    assert namespace["report"].warnings == documented and namespace["report"].backbone_fraction == 1.0
    assert all(w in caplog.text for w in documented)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation but ``-`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_readme_and_the_docs_pages_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "method.md", "bundles.md", "performance.md", "evidence.md",
                                       "fields.md", "troubleshooting.md"}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md|)(?:#([^)\s]+))?\)", text):
            linked = (page.parent / target).resolve() if target else page
            assert linked.is_file(), f"{page.name}: link to missing {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)
                assert anchor in {github_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor} in {linked.name}"


def test_settings_reference_shows_each_checked_settings_rule():
    """docs/bundles.md names every setting the bundles check, each row with the text of its rule (the same text as
    the one-line error), so the documented ranges cannot drift from the checks."""
    from cover3d.engine.settings import SETTING_RULES

    reference = (REPO / "docs" / "bundles.md").read_text(encoding="utf-8").split("## Settings reference\n", 1)[1]
    rows = re.findall(r"^\| (`[^|]*`)(?: \([A-Z]+\))? \| ([^|]*) \|", reference, flags=re.M)
    documented = {name.strip(" `"): allowed.strip() for names, allowed in rows for name in names.split(",")}
    ruled = {name: allowed for name, allowed in documented.items() if name in SETTING_RULES}
    assert ruled == {name: SETTING_RULES[name].allowed for name in ruled}
    checked = set()
    for config in (REPO / "bundles").glob("*/*.json"):
        keys = json.loads(config.read_text())
        checked |= {k for key in ("checked_settings", "+checked_settings") for k in keys.get(key, {})
                    if not k.startswith("_")}
        checked |= {k.split("#", 1)[1] for k in keys if k.startswith("checked_settings#")}  # an overlay's own
    mentioned = set(re.findall(r"`([a-z_]+)(?:#[a-z_]+)?`", reference))
    assert checked and checked <= mentioned, sorted(checked - mentioned)
