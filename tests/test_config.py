"""The run configuration: one builder for the CLI and the notebooks, names, overrides, identity."""
from __future__ import annotations

import dataclasses
import shlex

import pytest

from merlib.cli import _config, build_parser
from merlib.config import ExecutorConfig, RunConfig, config_changes, with_overrides
from merlib.experiment import open_run
from merlib.options import make_run_config, train_command


def _from_cli(line: str) -> RunConfig:
    return _config(build_parser().parse_args(shlex.split(line)))


def test_the_cli_and_a_notebook_build_the_same_config():
    cli = _from_cli("train --preset demo --blocks 24 --epochs 3 --weights random --scheme gacnn24")
    nb = open_run(synth_preset="demo", blocks=24, epochs=3, weights="random", scheme="gacnn24").config
    assert cli == nb
    assert cli.train.model.blocks == 24 and cli.preprocess.scheme == "gacnn24"


def test_train_command_rebuilds_the_config_it_was_made_from():
    config = make_run_config(synth_preset="demo", synth_layout="samm", blocks=0, epochs=2,
                             inputs="frames", train_seed=3, overrides={"train.lr": 0.001,
                                                                 "train.shuffle_labels": True})
    command = train_command(config)
    assert command.startswith("merlib train ")
    assert _from_cli(command.removeprefix("merlib ")) == config


def test_smic_format_always_uses_the_detected_apex_whatever_the_command():
    assert make_run_config(synth_layout="smic").preprocess.apex == "detected"
    assert make_run_config(dataset="smic", data_root="/d").preprocess.apex == "detected"
    assert _from_cli("preprocess --layout smic").preprocess.apex == "detected"
    assert make_run_config(synth_layout="casme2").preprocess.apex == "annotated"


def test_run_names_keep_the_defaults_familiar_and_tell_configurations_apart():
    assert make_run_config(blocks=24).run_name() == "quick-blocks24"
    assert make_run_config(profile="paper").run_name() == "paper-blocks10"
    a = make_run_config(epochs=3, weights="random").run_name()
    assert a == "quick-blocks10-epochs3-weightsrandom"
    assert make_run_config(model="ststnet").run_name() == "ststnet-quick"
    long = make_run_config(overrides={f"train.augment.{k}": 0.5 for k in
                                      ("max_rotation_deg", "min_crop_frac")} | {"train.lr": 0.002,
                                      "train.l2": 0.1, "train.batch_size": 7, "train.views": 3})
    assert len(long.run_name()) <= 80


def test_overrides_set_any_field_and_refuse_unknown_ones():
    c = with_overrides(make_run_config(), {"train.lr": "1e-3", "train.model.dropout": "0.25"})
    assert c.train.lr == 1e-3 and c.train.model.dropout == 0.25
    with pytest.raises(ValueError, match="unknown setting 'train.lrr'"):
        with_overrides(make_run_config(), {"train.lrr": 1})
    with pytest.raises(ValueError, match="must be one of"):
        with_overrides(make_run_config(), {"train.inputs": "optical_flow"})


def test_serialisation_round_trips_and_the_executor_is_not_identity():
    c = make_run_config(blocks=0, executor=ExecutorConfig(kind="dask", workers=2))
    assert RunConfig.from_dict(c.to_dict()) == c
    assert c.identity() == dataclasses.replace(c, executor=ExecutorConfig()).identity()
    # the loader's worker count is how a run executes, not what it computes (tests/test_stream.py)
    p = make_run_config(profile="paper")
    fewer = with_overrides(p, {"train.loader_workers": 0})
    assert fewer.identity() == p.identity() and fewer.run_name() == p.run_name()
    assert fewer.to_dict()["train"]["loader_workers"] == 0  # still saved with the run


def test_config_changes_name_each_changed_setting():
    a, b = make_run_config().identity(), make_run_config(epochs=2, scheme="dlib68").identity()
    assert config_changes(a, b) == ["preprocess.scheme: 'fr72' -> 'dlib68'",
                                    "train.epochs: 5 -> 2"]


def test_synthme_knobs_are_not_part_of_a_real_datasets_identity(tmp_path):
    # A real run resumed from a notebook (preset 'tiny') and from the CLI (preset 'demo') is the
    # same experiment; for SynthME the preset is the data.
    real = [make_run_config(dataset="casme2", data_root=str(tmp_path), synth_preset=p).identity()
            for p in ("tiny", "demo")]
    assert real[0] == real[1] and "preset" not in real[0]["data"]
    synth = [make_run_config(synth_preset=p).identity() for p in ("tiny", "demo")]
    assert config_changes(synth[0], synth[1]) == ["data.preset: 'tiny' -> 'demo'"]


def test_real_datasets_need_a_root():
    with pytest.raises(ValueError, match="data root"):
        make_run_config(dataset="casme2")


def test_an_override_of_the_wrong_type_is_refused_by_name():
    with pytest.raises(ValueError, match="setting 'train.lr' takes a float"):
        with_overrides(make_run_config(), {"train.lr": "x"})
    with pytest.raises(ValueError, match="setting 'train.shuffle_labels' takes a bool"):
        with_overrides(make_run_config(), {"train.shuffle_labels": "1"})
