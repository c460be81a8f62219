"""The pure parts of tools/lab_check.py (no browser, no server): free port, notebook list, pins,
and the problem rules on .ipynb dicts and on the plain records the page script returns."""
from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lab_check", ROOT / "tools" / "lab_check.py")
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)


def _nb(*cells, widgets=None) -> dict:
    meta = {"kernelspec": {"name": "merlib", "display_name": "Python (merlib)", "language": "python"}}
    if widgets is not None:
        meta["widgets"] = {lc.WIDGET_STATE_MIME: {"state": widgets, "version_major": 2, "version_minor": 0}}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": meta, "cells": list(cells)}


def _code(*outputs) -> dict:
    return {"cell_type": "code", "source": "x", "metadata": {}, "execution_count": 1,
            "outputs": list(outputs)}


def _result(data: dict) -> dict:
    return {"output_type": "execute_result", "execution_count": 1, "metadata": {}, "data": data}


def _stream(text: str, name: str = "stderr") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def _tqdm_widget(value: float, total: float, label: str) -> tuple[dict, dict]:
    """A tqdm.notebook-like HBox(HTML, FloatProgress, HTML) as saved widget state, and its output."""
    state = {
        "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": label}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": value, "min": 0, "max": total}},
        "r": {"model_name": "HTMLModel", "state": {"value": f" {value:.0f}/{total:.0f}"}},
    }
    output = {"output_type": "display_data", "metadata": {},
              "data": {lc.WIDGET_MIME: {"model_id": "box", "version_major": 2, "version_minor": 0},
                       "text/plain": f"{label.split(':')[0]}:   0%|          | 0/{total:.0f}"}}
    return state, output


# ---------------------------------------------------------------- helpers

def test_free_port_is_bindable():
    port = lc.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_list_notebooks_sorted_and_only_ipynb(tmp_path):
    for name in ("05_b.ipynb", "01_a.ipynb", "notes.md"):
        (tmp_path / name).write_text("{}")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "01_a-checkpoint.ipynb").write_text("{}")
    assert [p.name for p in lc.list_notebooks(tmp_path)] == ["01_a.ipynb", "05_b.ipynb"]


def test_lab_check_opens_the_notebooks_the_batch_runs():
    from merlib.batch import notebooks

    names = [p.name for p in lc.list_notebooks(ROOT / "notebooks")]
    assert names == [p.name for p in notebooks(ROOT / "notebooks")]
    assert [n[:3] for n in names] == ["01_", "02_", "03_", "04_", "05_", "06_"]


def test_pinned_version_reads_the_requirements_pin():
    text = "# comment\nnumpy==2.4.6\nPlaywright == 1.0.0  # browser checks\n"
    assert lc.pinned_version(text, "playwright") == "1.0.0"
    assert lc.pinned_version(text, "scipy") is None
    pin = lc.pinned_version((ROOT / "requirements.txt").read_text(), "playwright")
    assert pin and pin[0].isdigit()


def test_displayed_text_keeps_what_follows_the_last_carriage_return():
    assert lc.displayed_text("a:   0%|  | 0/4\ra: 100%|##| 4/4\n") == "a: 100%|##| 4/4\n"


def test_default_screenshot_dir(tmp_path):
    assert lc.default_screenshot_dir(tmp_path / "notebooks", root=tmp_path) == tmp_path / "docs" / "screenshots"
    run = tmp_path / "runs" / "r1"
    assert lc.default_screenshot_dir(run, root=tmp_path) == run.resolve() / "screenshots"


def test_report_line():
    assert lc.report_line("n.ipynb", []) == "n.ipynb: OK"
    assert lc.report_line("n.ipynb", ["a", "b", "a"]) == "n.ipynb: FAIL (2) a; b"


# ---------------------------------------------------------------- rules on the .ipynb JSON

def test_figure_saved_as_text_is_flagged():
    nb = _nb(_code(_result({"text/plain": "<Figure size 1440x280 with 4 Axes>"})))
    problems = lc.notebook_problems(nb)
    assert len(problems) == 1 and problems[0].startswith("cell 0: figure saved as text")


def test_figure_with_image_png_is_not_flagged():
    nb = _nb(_code(_result({"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480 with 1 Axes>"})))
    assert lc.notebook_problems(nb) == []
    assert lc.expected_images(nb) == {0: 1}


def test_error_output_and_stderr_traceback_are_flagged():
    nb = _nb(
        {"cell_type": "markdown", "source": "# t", "metadata": {}},
        _code({"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": []}),
        _code(_stream("Traceback (most recent call last):\n  ...\nKeyError: 'a'\n")),
    )
    assert lc.notebook_problems(nb) == ["cell 1: error output ValueError: boom", "cell 2: Traceback in stderr"]


def test_text_progress_bar_stuck_at_zero_is_flagged_but_finished_one_is_not():
    stuck = _nb(_code(_stream("train:   0%|          | 0/4 [00:00<?, ?it/s]\n")))
    done = _nb(_code(_stream("train:   0%|  | 0/4\rtrain:  50%|# | 2/4\rtrain: 100%|##| 4/4\n")))
    ten = _nb(_code(_stream("train:  10.0%|  | 1/10\n")))
    assert lc.notebook_problems(stuck) == ["cell 0: progress bar stuck at 0%"]
    assert lc.notebook_problems(done) == []
    assert lc.notebook_problems(ten) == []


def test_widget_progress_uses_saved_state_not_its_text_plain():
    finished, out = _tqdm_widget(4, 4, "LOSO: 100%")
    assert lc.notebook_problems(_nb(_code(out), widgets=finished)) == []
    stuck, out = _tqdm_widget(0, 4, "LOSO:   0%")
    assert lc.notebook_problems(_nb(_code(out), widgets=stuck)) == ["cell 0: progress bar stuck at 0%"]
    # tqdm without a total: value 0 of max 1 and no percentage, a finished "0 clips" bar
    unknown, out = _tqdm_widget(0, 1, "preprocess: ")
    assert lc.notebook_problems(_nb(_code(out), widgets=unknown)) == []


def test_widget_output_without_saved_state_is_flagged():
    _, out = _tqdm_widget(4, 4, "LOSO: 100%")
    problems = lc.notebook_problems(_nb(_code(out), widgets={}))
    assert len(problems) == 1 and "widget state not saved" in problems[0]
    assert lc.widget_cells(_nb({"cell_type": "markdown", "source": "", "metadata": {}}, _code(out))) == {1}


# ---------------------------------------------------------------- rules on the rendered DOM

def _out(cell, text="", mime="text/plain", imgs=0, progress=()):
    return {"cell": cell, "mime": mime, "text": text, "imgs": imgs, "progress": list(progress)}


def test_dom_figure_text_traceback_and_stuck_bars():
    outputs = [
        _out(2, "<Figure size 1440x280 with 4 Axes>"),
        _out(3, "ValueError   Traceback (most recent call last)", mime="application/vnd.jupyter.stderr"),
        _out(4, "epochs:   0%|          | 0/5 [00:00<?, ?it/s]"),
        _out(5, "", mime=None, progress=[{"percent": 0, "text": "LOSO:\u20070%\n\u20070/4"}]),
        _out(6, "Error displaying widget: model not found", mime=None),
    ]
    problems = lc.dom_problems(outputs, widgets={4})
    assert problems[0] == "cell 2: shows '<Figure size 1440x280 with 4 Axes>' instead of an image"
    assert problems[1] == "cell 3: Traceback in stderr"
    assert problems[2].startswith("cell 4: progress bar stuck at 0%") and "saved text/plain" in problems[2]
    assert problems[3].startswith("cell 5: progress bar stuck at 0%")
    assert problems[4].startswith("cell 6: widget not rendered")
    assert len(problems) == 5


def test_dom_clean_outputs_pass():
    outputs = [
        _out(1, "", mime="image/png", imgs=1),
        _out(2, "LOSO: 100%|##########| 4/4", mime="application/vnd.jupyter.stderr"),
        _out(3, "", mime=None, progress=[{"percent": 100, "text": "epochs:\u2007100%"}]),
        _out(4, "", mime=None, progress=[{"percent": 0, "text": "preprocess:\u2007\n\u20070/0 [00:00<?, ?clip/s]"}]),
    ]
    assert lc.dom_problems(outputs, page_text="all fine") == []


def test_dom_figure_text_outside_outputs_is_flagged():
    assert lc.dom_problems([], page_text="see <Figure size 1x1 with 0 Axes>") == [
        "'<Figure size' text on the page"]


def test_cross_check_counts_images_per_cell():
    expected = {3: 1, 7: 2}
    rendered = [_out(3, mime="image/png", imgs=1), _out(7, mime="image/png", imgs=1), _out(9, imgs=1)]
    assert lc.cross_check(expected, rendered) == [
        "cell 7: 2 image/png output(s) saved, 1 <img> rendered",
        "cell 9: 0 image/png output(s) saved, 1 <img> rendered",
    ]
    assert lc.cross_check({3: 1}, [_out(3, mime="image/png", imgs=1)]) == []


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_rules_run_on_the_committed_notebooks(path):
    """The committed notebooks pass the JSON rules (figures as images, no traceback, no stuck
    progress bar): what CI renders is what was checked here."""
    assert lc.notebook_problems(json.loads(path.read_text())) == []
