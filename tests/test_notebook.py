"""The quickstart notebook runs top to bottom in a kernel of this environment's Python.

The kernel is described by a kernelspec the test writes to a temporary directory (pointing at
`sys.executable`), so no user-wide kernelspec is needed and the venv's packages are the ones
used. The notebook runs with its own folder as the working directory, as Jupyter would run it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "jisi-test-python"
TIMEOUT_S = 600
MODELS = ("Mistral-Large-2", "deepseek-v2.5-0908", "Qwen2-72B-Instruct", "gemma-2-9b-it")


def outputs_of(cell: Any, kind: str) -> list[str]:
    """Every output of a cell in one MIME type (stream text for "text/stream")."""
    found = []
    for output in cell.get("outputs", []):
        if kind == "text/stream" and output["output_type"] == "stream":
            found.append(output["text"])
        elif kind in output.get("data", {}):
            data = output["data"][kind]
            found.append("".join(data) if isinstance(data, list) else data)
    return found


def all_outputs(cells: list[Any], kind: str) -> str:
    return "\n".join(text for cell in cells for text in outputs_of(cell, kind))


def test_notebook_is_committed_without_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.fixture
def kernel_manager(tmp_path: Path) -> Iterator[Any]:
    """A kernel manager for a kernelspec of this interpreter, in a temporary directory."""
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jisi test (venv python)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    assert specs.get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    yield manager
    if manager.has_kernel:  # the run failed before the client shut the kernel down
        manager.shutdown_kernel(now=True)


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(data_file: Path, kernel_manager: Any) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    # Raises CellExecutionError on the first cell that fails; shuts the kernel down either way.
    client.execute(cleanup_kc=True)

    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in cells)
    errors = [o for cell in cells for o in cell.outputs if o["output_type"] == "error"]
    assert errors == []

    stream = all_outputs(cells, "text/stream")
    # The data was found from the notebook's folder; the bank holds 40 rows of each dataset.
    assert f"data: {data_file.resolve()}" in stream
    assert "bank of 80 rows x 4 models (400 texts embedded)" in stream
    assert "datasets: gsm, math-l5" in stream
    assert "question: The smallest distance between the origin" in stream
    work = re.search(r"^work directory: (.+)$", stream, re.MULTILINE)
    assert work is not None
    assert not Path(work.group(1)).exists()  # the last cell cleaned up

    # The decision as tables: the switch's fields, one row per model, the neighbours.
    tables = all_outputs(cells, "text/html")
    assert tables.count("<table>") == 3
    assert "<tr><td>mode</td><td>aggregate</td></tr>" in tables
    assert "<tr><td>switch_n</td><td>2</td></tr>" in tables
    assert "<th>R (routing)</th>" in tables
    for model in MODELS:
        assert f"<tr><td>{model}</td>" in tables
    assert tables.count("<td>math-l5</td>") >= 3  # a MATH question has MATH neighbours

    # The knobs per run: a lower threshold lets the third candidate in; vote aggregation.
    lines = {line.split("}")[0] + "}": line for line in stream.splitlines() if line.startswith("{")}
    assert "switch_n=2 method=llm" in lines["{}"]
    assert "switch_n=3 method=llm" in lines["{'switch_threshold': 0.5}"]
    assert "switch_n=2 method=vote" in lines["{'aggregation': 'vote'}"]
    assert all("(recorded score " in line for line in lines.values())

    # The evaluation's report (15 GSM8K and 15 MATH rows) and its plot.
    report = all_outputs(cells, "text/markdown")
    assert "# JiSi evaluation" in report
    assert "(split `test`, 30 rows)" in report
    assert "| method | macro % | micro % | gsm % | math-l5 % | cost USD |" in report
    for method in ("jisi", "oracle", "random", "query-knn", *(f"single:{m}" for m in MODELS)):
        assert f"| {method} |" in report
    assert "| reference:gpt-4o-2024-08-06 |" in report
    assert "- error_rows: 0" in report
    images = [image for cell in cells for image in outputs_of(cell, "image/png")]
    assert len(images) == 1
    assert len(images[0]) > 10_000  # base64 of a real figure, not an empty one


def test_notebook_finds_data_through_jisi_data(
    data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the notebook's first cell, run here: JISI_DATA overrides the search."""
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    chosen = tmp_path / "mine.jsonl.gz"
    monkeypatch.setenv("JISI_DATA", str(chosen))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(first.source, "quickstart-cell-1", "exec"), namespace)
    try:
        assert namespace["DATA"] == chosen
        assert namespace["WORK"].is_dir() and namespace["WORK"].name.startswith("jisi-quickstart-")
        # Without JISI_DATA, from a folder outside the repo: found above the package's folder.
        monkeypatch.delenv("JISI_DATA")
        assert namespace["find_data"]() == data_file.resolve()
    finally:
        namespace["WORK"].rmdir()
