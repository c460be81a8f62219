"""`merlib train` end to end on the tiny SynthME, as CI runs it: generate, preprocess, LOSO."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from merlib.registry import CLASSES


def test_merlib_train_on_tiny_synthme(tmp_path):
    env = {**os.environ, "MERLIB_DATA": str(tmp_path / "data"), "MERLIB_CACHE": str(tmp_path / "cache"),
           "MERLIB_OUT": str(tmp_path / "out")}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "merlib", "train", "--dataset", "synthme",
                           "--preset", "tiny", "--blocks", "10", "--profile", "quick",
                           "--epochs", "1", "--jobs", "2", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quick profile" in proc.stderr and "inputs onset_delta" in proc.stderr

    pred = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "clip": str})
    manifest = next((tmp_path / "cache").rglob("manifest.csv"))
    usable = pd.read_csv(manifest, dtype={"subject": str, "clip": str}).query("status == 'ok'")
    assert sorted(pred["clip"]) == sorted(usable["clip"])          # every usable clip, once
    assert pred.groupby("fold")["subject"].nunique().eq(1).all()   # one subject per fold
    assert pred["fold"].nunique() == usable["subject"].nunique()
    assert {"dataset", "subject", "clip", "fold", "y_true", "y_pred",
            *[f"p_{c}" for c in CLASSES]} <= set(pred.columns)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["inputs"] == "onset_delta"
    assert metrics["n_clips"] == len(pred)
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["train"]["epochs"] == 1 and config["run"]["train"]["inputs"] == "onset_delta"
    assert "git_commit" in config and config["index_hash"]


def test_a_corrected_coding_sheet_never_pools_the_old_folds(tmp_path):
    """Train, change one clip's emotion in the coding sheet, rerun into the same folder: refused
    (naming the index and --restart); with --restart every fold is recomputed on the new labels."""
    env = {**os.environ, "MERLIB_DATA": str(tmp_path / "data"), "MERLIB_CACHE": str(tmp_path / "cache"),
           "MERLIB_OUT": str(tmp_path / "out")}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "merlib", "train", "--preset", "tiny", "--blocks", "0",
           "--epochs", "1", "--jobs", "2", "--weights", "random", "--out", str(out)]

    def train(*extra):
        return subprocess.run(cmd + list(extra), env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)

    assert train().returncode == 0
    before = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "clip": str})

    sheet = next((tmp_path / "data").rglob("CASME2-coding-*.xlsx"))
    coding = pd.read_excel(sheet)
    row = coding.index[coding["Estimated Emotion"].eq("happiness")][0]
    clip = str(coding.loc[row, "Filename"])
    coding.loc[row, "Estimated Emotion"] = "surprise"
    coding.to_excel(sheet, index=False)

    refused = train()
    assert refused.returncode == 2
    assert "index" in refused.stderr and "--restart" in refused.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv", dtype={"subject": str, "clip": str}),
                                  before)  # nothing was pooled

    assert train("--restart").returncode == 0
    after = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "clip": str})
    surprise = CLASSES.index("surprise")
    assert after.loc[after["clip"] == clip, "y_true"].item() == surprise
    assert before.loc[before["clip"] == clip, "y_true"].item() == CLASSES.index("positive")


def test_reproduce_passes_the_notebooks_only_their_own_parameters():
    """papermill injects unknown names silently (a warning): --keep-checkpoints must reach the
    notebooks as a setting they read, not as a parameter they ignore."""
    from merlib.cli import build_parser
    from merlib.options import for_notebooks, make_run_config, options_from_args

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "04_training.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = {line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines()
             if "=" in line and not line.startswith("#")}
    args = build_parser().parse_args(["reproduce", "--keep-checkpoints", "--set", "train.lr=0.001"])
    params = for_notebooks(options_from_args(args))
    assert set(params) <= names, set(params) - names
    config = make_run_config(**params)
    assert config.train.checkpoints and config.train.lr == 0.001


def test_the_sanity_check_make_reproduce_ends_with_runs_and_writes_its_table(tmp_path):
    # `make reproduce` runs bench/sanity.py last; a break there fails the quickstart after the
    # whole batch (it did once, after a refactor renamed an attribute).
    env = {**os.environ, "MERLIB_DATA": str(tmp_path / "data"), "MERLIB_CACHE": str(tmp_path / "cache"),
           "MERLIB_OUT": str(tmp_path / "out")}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "sanity.py"), "--preset", "tiny",
                           "--seeds", "1", "--epochs", "1", "--json", str(tmp_path / "sanity.json")],
                          env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "sanity.json").read_text())
    assert [r["labels"] for r in record["runs"]] == ["true", "shuffled"]
    assert record["run"] == "synthme-tiny-casme2-seed0"
    table = next((tmp_path / "out").rglob("sanity.md")).read_text()
    assert "shuffled inside every fold" in table and "label-blind guessing" in table
