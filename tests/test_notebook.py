from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "explore_budget"


def test_notebook_and_its_text_version_are_paired():
    text = jupytext.read(NOTEBOOK.with_suffix(".py"))
    notebook = nbformat.read(NOTEBOOK.with_suffix(".ipynb"), as_version=4)
    assert [c.source for c in text.cells] == [c.source for c in notebook.cells]
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")  # committed without outputs


@pytest.mark.slow
def test_notebook_runs_on_a_fresh_kernel(quick_demo, monkeypatch):
    monkeypatch.setenv("QFORMER_BUDGET_RUNS", str(quick_demo))
    notebook = jupytext.read(NOTEBOOK.with_suffix(".py"))
    nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 4 + 1  # four heatmaps, the replayed heatmap
    pages = [o.data["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.data]
    explorer = [page for page in pages if "qformer-budget-explorer" in page]
    assert len(explorer) == 1 and explorer[0].count('class="qb-plot"') == 4 * 2 + 1
    printed = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "4 runs" in printed and "plain LoRA:" in printed
