"""The analysis notebooks run top to bottom (nbclient) and save their figures."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
FIGURES = {
    "erf.ipynb": ["erf_average.png", "erf_pair.png"],
    "rmsg_maps.ipynb": ["rmsg.png", "degree.png", "neighbours_glic.png", "neighbours_gabic.png", "bits.png",
                        "bits_difference.png"],
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_defines_no_logic(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in code and "class " not in code  # the logic lives in gnn_lic.analysis
    assert "gnn_lic.analysis" in code


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_LIC_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("GNN_LIC_DATA", raising=False)
    monkeypatch.setenv("GNN_LIC_MAX_IMAGES", "3")  # the ERF average over three photos: the same code, a third of the time
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    for fig in FIGURES[name]:
        p = tmp_path / "figures" / fig
        assert p.is_file() and p.stat().st_size > 1000, fig
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Traceback" not in text
    if name == "erf.ipynb":
        assert "3 images, centre crops of" in text
