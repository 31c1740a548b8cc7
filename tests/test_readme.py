"""README snippets run as written in a fresh clone after README command (1).

Command (1) pretrains ``cover_ct`` (minutes); here its outputs are made directly from the bundle's own config: an
untrained ``CoverNet`` of the bundle's widths as ``bundles/cover_ct/models/model.pt`` and the ``metadata.json`` the
run writes next to it. The snippets themselves are taken from README.md and executed unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from cover3d.engine import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def readme_blocks(heading: str, language: str) -> list[str]:
    """The ``language`` code blocks of the README section starting at the line ``heading`` (up to the next heading)."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    body, in_code = [], False
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("#") and not in_code:
            break
        in_code ^= line.startswith("```")
        body.append(line)
    return re.findall(rf"```{language}\n(.*?)```", "\n".join(body), flags=re.S)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder laid out like the repository after command (1): the cover_ct bundle with models/, the CT sample."""
    root = tmp_path_factory.mktemp("clone")
    skip = shutil.ignore_patterns("models", "runs", "eval", "predictions")
    shutil.copytree(REPO / "bundles" / "cover_ct", root / "bundles" / "cover_ct", ignore=skip)
    shutil.copytree(REPO / "sample_data" / "ct", root / "sample_data" / "ct")
    parser = ConfigParser()
    parser.read_config(str(root / "bundles" / "cover_ct" / "train.json"))
    parser["bundle_root"] = str(root / "bundles" / "cover_ct")
    models = Path(parser.get_parsed_content("ckpt_dir"))
    models.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), models / "model.pt")
    write_json_atomic(parser.get_parsed_content("weights_metadata"), models / "metadata.json")
    return root


def test_downstream_snippets_load_the_whole_backbone_and_warn_as_documented(clone, monkeypatch, caplog):
    blocks = readme_blocks("## Using the pretrained weights downstream", "python")
    assert len(blocks) == 2
    monkeypatch.chdir(clone)
    namespace: dict = {}
    exec(blocks[0], namespace)  # noqa: S102 - the README's own code
    report = namespace["report"]
    assert report.backbone_fraction == 1.0 and len(report.loaded) == 80 and report.warnings == []
    assert sorted(report.missing) == ["final_conv.bias", "final_conv.weight"]
    assert type(namespace["net"]).__module__ == "monai.networks.nets.basic_unet"

    caplog.set_level(logging.WARNING)
    exec(blocks[1], namespace)  # noqa: S102
    comments = [line for line in blocks[1].splitlines() if line.lstrip().startswith("#")]
    documented = [line.split("# logs:")[-1].strip(" #") for line in comments]
    assert namespace["report"].warnings == documented and namespace["report"].backbone_fraction == 1.0
    assert all(w in caplog.text for w in documented)


@pytest.mark.slow
def test_field_export_snippets_run_and_plain_simpleitk_reads_the_field(clone, monkeypatch):
    (command,) = readme_blocks("### Predicting and exporting fields", "bash")
    (snippet,) = readme_blocks("### Predicting and exporting fields", "python")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` is this interpreter
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NCC" in result.stdout and "foreground overlap" in result.stdout

    monkeypatch.chdir(clone)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102
    warped, moving = namespace["warped"], namespace["moving"]
    assert warped.GetSize() == moving.GetSize() and warped.GetPixelIDValue() == moving.GetPixelIDValue()
    summary = json.loads(Path(f"{namespace['prefix']}_summary.json").read_text())
    assert set(summary["similarity"]) == {"ncc_before", "ncc_after", "mi_before", "mi_after"}
    assert 0 <= summary["foreground_overlap"] <= 1 and isinstance(summary["warnings"], list)
