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
def test_inspect_dvf_notebook_executes_and_shows_figures_and_metrics(trained_ct_weights, monkeypatch):
    # the weights of a real (short) cover_ct run, so the numbers the notebook prints can be checked
    monkeypatch.setenv("COVER3D_WEIGHTS", str(trained_ct_weights))
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    # no per-cell time limit (timeout=None); only nbclient's 60 s guard on the kernel start (1.8 s on a loaded machine)
    client = nbclient.NotebookClient(
        notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [png_size(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 7  # slices, predicted and true field, comparison, Jacobian, PCA, interactive (static)
    assert all(width >= 300 and height >= 150 for width, height in figures)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert f"Using pretrained weights `{trained_ct_weights}`" in text

    def number(name: str) -> float:
        match = re.search(re.escape(name) + r"\s+([-0-9.]+)", text)
        assert match, name
        return float(match.group(1))

    assert number("EPE predicted (voxels)") < 0.8 * number("EPE zero field (voxels)")
    assert number("EPE predicted (mm)") == pytest.approx(2.5 * number("EPE predicted (voxels)"), rel=1e-3)  # 2.5 mm
    assert number("folding fraction, true") == 0.0 and number("folding fraction, predicted") < 0.05
