"""What a reader of the committed (executed) notebooks sees: each figure once, as an image; no
matplotlib placeholder text, no progress bar frozen at 0 %, no traceback; no def/class; one
parameters cell. `make lab-check` checks the same in a real browser."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _texts(cell):
    for out in cell.get("outputs", []):
        if "text" in out:
            yield "".join(out["text"])
        for value in out.get("data", {}).values():
            if isinstance(value, (str, list)):
                yield "".join(value)
        if out.get("output_type") == "error":
            yield "Traceback " + out.get("ename", "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_notebook_reads_as_a_person_sees_it(path):
    nb = json.loads(path.read_text())
    code = _code(nb)
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1
    for i, cell in enumerate(code):
        src = "".join(cell["source"])
        assert not re.search(r"^\s*(def|class)\s", src, re.M), f"cell {i} defines code"
        shown = "\n".join(_texts(cell))
        assert "<Figure size" not in shown, f"cell {i}: a figure saved as text"
        assert not re.search(r"\b0%\|", shown), f"cell {i}: a progress bar saved at 0%"
        assert "Traceback" not in shown, f"cell {i}: an error"
        pngs = sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
        if src.strip().splitlines()[-1].startswith("report.show("):
            assert pngs == 1, f"cell {i} shows a figure as {pngs} images"
        elif "report.write_figure(" in src:  # a figure written only when there is something to show
            assert pngs <= 1, f"cell {i} shows one figure as {pngs} images"
        else:
            assert pngs == 0, f"cell {i} shows an image it does not write"


def test_the_notebooks_are_numbered_in_order_without_gaps():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]
