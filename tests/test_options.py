"""One definition of the run options (merlib.options): the command line, every notebook's
parameters cell and open_run call, make_run_config and train_command agree with it."""
from __future__ import annotations

import ast
import re
import json
import shlex
from pathlib import Path

import pytest

from merlib.cli import _config, build_parser
from merlib.options import OPTIONS, make_run_config, notebook_parameters, train_command
from merlib.registry import SYNTH_PRESETS

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(nb: Path) -> list[dict]:
    return [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


def _parameters(nb: Path) -> dict[str, object]:
    cell = next(c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}


def _open_run_keywords(nb: Path) -> dict[str, str]:
    for cell in _cells(nb):
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "open_run":
                return {k.arg: k.value.id for k in node.keywords}
    raise AssertionError(f"{nb.name} never calls experiment.open_run")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebooks_parameters_are_the_options_with_their_defaults(nb):
    expected = notebook_parameters(training=nb.name.startswith("04"))
    assert _parameters(nb) == expected


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_hands_every_parameter_to_open_run_by_its_own_name(nb):
    names = list(_parameters(nb))
    assert _open_run_keywords(nb) == dict(zip(names, names))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_each_parameters_comment_names_every_choice_of_its_option(nb):
    # The comments are what a reader edits by: a dataset added to the registry must show there.
    cell = next(c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", []))
    for line in "".join(cell["source"]).splitlines():
        name, _, rest = line.partition("=")
        option = OPTIONS.get(name.strip())
        if option is None or not option.choices or "#" not in rest:
            continue
        words = set(re.findall(r"[\w-]+", rest.split("#", 1)[1]))
        missing = [c for c in option.choices if c and str(c) not in words]
        assert not missing, f"{nb.name}: the comment of {name.strip()} lacks {missing}"


def test_the_check_fails_when_a_notebook_drifts(tmp_path):
    nb = json.loads(NOTEBOOKS[0].read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    cell["source"] = "".join(cell["source"]).replace('synth_preset = "tiny"', 'synth_preset = "demo"')
    drifted = tmp_path / NOTEBOOKS[0].name
    drifted.write_text(json.dumps(nb))
    assert _parameters(drifted) != notebook_parameters()


def test_every_option_is_a_flag_of_merlib_train_and_defaults_agree():
    args = build_parser().parse_args(["train"])
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert set(OPTIONS) <= flags
    assert _config(args) == make_run_config()


def test_unknown_options_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown option.*synth_size"):
        make_run_config(synth_size="demo")


@pytest.mark.parametrize("line", [
    "train --preset demo --blocks 24 --epochs 3 --weights random --scheme gacnn24",
    "train --dataset casme2 --data-root '/data/my casme' --profile paper --blocks 0 --keep-checkpoints",
    "train --model ststnet --set train.baseline_epochs=7 --set train.lr=0.01",
])
def test_train_command_rebuilds_the_command_lines_config(line):
    config = _config(build_parser().parse_args(shlex.split(line)))
    again = _config(build_parser().parse_args(shlex.split(train_command(config).removeprefix("merlib "))))
    assert again == config


def test_the_registrys_synthme_presets_are_the_generators():
    from merlib.synth.plan import PRESETS

    assert tuple(PRESETS) == SYNTH_PRESETS
