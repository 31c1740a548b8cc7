"""notebooks/inspect_dvf.ipynb runs top to bottom on the embedded sample and draws real figures."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="needs the notebook extra: pip install -e '.[notebook]'")
nbformat = pytest.importorskip("nbformat", reason="needs the notebook extra: pip install -e '.[notebook]'")
pytest.importorskip("ipykernel", reason="needs the notebook extra (a Jupyter kernel): pip install -e '.[notebook]'")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "inspect_dvf.ipynb"


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", raw[16:24])


@pytest.mark.slow
def test_inspect_dvf_notebook_executes_and_shows_figures_and_metrics(tmp_path, monkeypatch):
    # weights absent -> the notebook's short-training branch: what a fresh clone runs, whatever models/ holds here
    monkeypatch.setenv("COVER3D_WEIGHTS", str(tmp_path / "absent" / "model.pt"))
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [png_size(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 7  # slices, predicted and true field, comparison, Jacobian, PCA, interactive (static)
    assert all(width >= 300 and height >= 150 for width, height in figures)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "Note: no weights" in text
    for name in ("EPE predicted (voxels)", "folding fraction, predicted", "inverse consistency a->b vs b->a (voxels)"):
        match = re.search(re.escape(name) + r"\s+([-0-9.]+)", text)
        assert match and float(match.group(1)) >= 0, name
