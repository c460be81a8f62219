"""The whole paper over four datasets (notebook 06), training seeds, the real-data registry entry
and the rule that a real dataset's faces are never written."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from merlib import report
from merlib.experiment import open_run
from merlib.options import make_run_config, sibling


def _pred(seed: int, correct: int, n: int = 6) -> pd.DataFrame:
    y = np.arange(n) % 3
    p = y.copy()
    p[correct:] = (p[correct:] + 1) % 3  # the first `correct` clips right, the rest wrong
    probs = np.eye(3)[p]
    return pd.DataFrame({"fold": np.arange(n) // 2, "y_true": y, "y_pred": p, "train_seed": seed,
                         "p_negative": probs[:, 0], "p_positive": probs[:, 1], "p_surprise": probs[:, 2]})


def test_several_seeds_give_mean_sd_and_range_and_say_which():
    pred = pd.concat([_pred(0, 6), _pred(1, 3), _pred(2, 0)], ignore_index=True)
    m = report.tables.seeded_metrics(pred)
    assert m["seeds"] == "0,1,2" and m["n"] == 6
    assert m["Acc"] == pytest.approx(0.5) and m["Acc sd"] == pytest.approx(0.5)
    assert m["Acc range"] == "0.000-1.000"
    one = report.tables.seeded_metrics(_pred(4, 3))
    assert one["seeds"] == "4" and "Acc sd" not in one and one["Acc"] == pytest.approx(0.5)
    t5 = report.table5({10: pred}, dataset="synthme", source="casme2", profile="quick")
    assert t5.loc[0, "UF1 sd"] > 0 and t5.loc[0, "training seeds"] == "0,1,2"
    t6 = report.table6(pred, dataset="synthme", source="casme2", profile="quick")
    assert "seeds 0,1,2" in t6.loc[t6["method"] == "merlib 10 IBs", "origin"].item()


def test_figure6_paper_is_twelve_lettered_panels_and_a_missing_run_is_empty():
    preds = {name: {0: _pred(0, 4), 24: _pred(0, 5), 10: _pred(0, 6)} for name in ("A", "B", "C")}
    preds["D"] = {0: _pred(0, 2)}
    fig = report.figure6_paper(preds, title="t")
    axes = fig.axes
    assert len(axes) == 12
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("(a) A Without IBs") and titles[11].startswith("(l) D 10 IBs")
    assert "not trained" in titles[10] and "Acc 1.000" in titles[2]


def test_the_paper_runs_of_a_synthme_run_are_its_four_layouts_with_their_own_apex():
    run = open_run(synth_preset="megc", synth_layout="megc", epochs=3, overrides={"train.lr": 0.01})
    runs = run.paper_runs()
    assert list(runs) == ["CASME II", "SAMM", "SMIC-HS", "MEGC2019 composite"]
    assert [r.config.data.layout for r in runs.values()] == ["casme2", "samm", "smic", "megc"]
    assert runs["SMIC-HS"].config.preprocess.apex == "detected"  # SMIC has no annotated apex
    assert all(r.config.train.epochs == 3 and r.config.train.lr == 0.01 for r in runs.values())
    real = open_run(dataset="samm", data_root="/somewhere").paper_runs()
    assert [r.config.data.dataset for r in real.values()] == ["casme2", "samm", "smic", "megc"]


def test_a_sibling_keeps_a_chosen_apex_and_every_setting():
    base = make_run_config(synth_layout="casme2", apex="detected", overrides={"train.l2": 0.5})
    smic = sibling(base, synth_layout="smic")
    assert smic.preprocess.apex == "detected" and smic.train.l2 == 0.5


def test_the_public_release_runs_on_one_frame_with_standardised_maps_and_flow_baselines():
    c = make_run_config(dataset="megc-public", data_root="/clone")
    assert c.preprocess.n_frames == 1 and c.train.inputs == "channel_norm"
    assert c.run_name() == "quick-blocks10"  # the dataset's own defaults keep the familiar name
    assert make_run_config(dataset="megc-public", data_root="/clone", profile="paper").train.inputs == "frames"
    with pytest.raises(ValueError, match="data root"):
        make_run_config(dataset="megc-public")
    from merlib.batch import dataset_baselines

    assert dataset_baselines(c) == ("ststnet", "off-apexnet")


def test_a_real_datasets_faces_are_shown_but_never_written(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    fig = report.figures._figure(1, 1, figsize=(1, 1))[0]
    real = report.Provenance(dataset="megc-public")
    assert report.write_figure(fig, tmp_path, "faces", real, faces=True) == {}
    assert not list(tmp_path.iterdir())
    synth = report.Provenance(dataset="synthme")
    assert set(report.write_figure(fig, tmp_path, "faces", synth, faces=True)) == {"png", "pdf", "provenance"}
    assert report.write_figure(fig, tmp_path, "table", real)  # a figure without faces is written


def test_the_gpu_checks_summary_reads_a_committed_result(tmp_path):
    assert "No GPU check has run yet" in report.device_check_summary(tmp_path)
    target = tmp_path / report.tables.DEVICE_CHECK
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({
        "dry_run": False, "wall_s": 400, "epochs": 40,
        "environment": {"device": "NVIDIA H200", "torch": "2.11", "cuda": "12.8"},
        "provenance": {"commit": "abc123def4567", "dataset": "synthme-demo-casme2-seed0"},
        "step_figures": [{"variant": "10 IBs", "batch": 16, "train clips/s": 120.0,
                          "achieved TFLOP/s": 54.1, "% of measured bf16 peak": 7.2}],
        "loso": {"true": {"pooled": {"uf1": 0.61, "uar": 0.6, "acc": 0.7}, "majority_class_share": 0.55,
                          "mean_loss_per_epoch": [1.1, 0.9, 0.7]}}}))
    text = report.device_check_summary(tmp_path)
    assert "NVIDIA H200" in text and "120.0 clips/s" in text and "7% of the measured" in text
    assert "40 epochs, true labels: UF1 0.610" in text
    assert "(majority class 0.550 of clips)" in text and "loss 1.100 -> 0.700" in text


def test_results_pool_every_finished_seed_and_name_the_missing_ones(tmp_path):
    from merlib.config import Paths
    from merlib.experiment import Run

    paths = Paths(data=tmp_path / "data", cache=tmp_path / "cache", out=tmp_path / "out")
    run = Run(open_run(synth_preset="demo", seeds=3).config, paths, seeds=3)
    for seed in (0, 2):
        d = Run(open_run(synth_preset="demo", train_seed=seed).config, paths).run_dir(10)
        d.mkdir(parents=True)
        _pred(99, 3).drop(columns="train_seed").to_csv(d / "predictions.csv", index=False)
        (d / "metrics.json").write_text("{}")
        (d / "config.json").write_text("{}")
    preds, missing = run.results(blocks=(10,))
    assert sorted(preds[10]["train_seed"].unique()) == [0, 2]
    assert "--train-seed 1" in missing[10] and "--train-seed 2" not in missing[10]
