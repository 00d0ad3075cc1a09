"""Every notebook under notebooks/ runs top to bottom on tiny settings (HF_FINETUNE_NOTEBOOK_TINY=1).

The kernel starts in notebooks/, as Jupyter would start it; run outputs go to the git-ignored outputs/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.slow  # a Jupyter kernel per notebook: 15-50 s each
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("HF_FINETUNE_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failing cell
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), "a cell did not run"
