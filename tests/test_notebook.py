"""notebooks/inspect_dvf.ipynb runs top to bottom on the embedded MRI sample with the shipped weights and draws real
figures; a missing weights file stops it with one line."""

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
SHIPPED_WEIGHTS = REPO / "weights" / "cover_mri_pool_2mm" / "model.pt"


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", raw[16:24])


def execute(notebook):
    """Run ``notebook`` in place from its own folder, as a user would; raises CellExecutionError on a failing cell.
    No per-cell time limit (a loaded machine only makes it slower); nbclient's 60 s guard on the kernel start stays."""
    client = nbclient.NotebookClient(
        notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()


@pytest.mark.slow
def test_inspect_dvf_notebook_executes_with_the_shipped_weights_and_shows_figures_and_metrics(monkeypatch):
    monkeypatch.delenv("COVER3D_WEIGHTS", raising=False)
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    execute(notebook)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [png_size(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 7  # slices, predicted and true field, comparison, Jacobian, PCA, interactive (static)
    assert all(width >= 300 and height >= 150 for width, height in figures)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert f"Using pretrained weights `{SHIPPED_WEIGHTS}` with `{SHIPPED_WEIGHTS.parent / 'metadata.json'}`." in text

    def number(name: str) -> float:
        match = re.search(re.escape(name) + r"\s+([-0-9.]+)", text)
        assert match, name
        return float(match.group(1))

    # trained weights: the fields of an untrained network are no better than the zero field
    assert number("EPE predicted (voxels)") < 0.5 * number("EPE zero field (voxels)")
    assert number("EPE predicted (mm)") == pytest.approx(2.0 * number("EPE predicted (voxels)"), rel=1e-3)  # 2 mm
    assert number("folding fraction, true") == 0.0 and number("folding fraction, predicted") < 0.05


def test_missing_weights_stop_the_notebook_with_one_line(tmp_path, monkeypatch):
    missing = tmp_path / "model.pt"
    monkeypatch.setenv("COVER3D_WEIGHTS", str(missing))
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    notebook.cells = notebook.cells[:4]  # imports and the weights cell
    with pytest.raises(nbclient.exceptions.CellExecutionError) as raised:
        execute(notebook)
    error = raised.value
    assert error.ename == "InputFileNotFoundError"
    assert error.evalue == f"weights file {missing} not found: set COVER3D_WEIGHTS to the model.pt of a cover_mri run"
    assert not list(tmp_path.iterdir())  # nothing trained in its place
