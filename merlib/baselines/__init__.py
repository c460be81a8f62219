"""Table 6's baselines trained under the paper model's protocol (DESIGN.md §6c; DECISIONS.md,
"Baselines (Table 6, measured)"): the same preprocessing cache, LOSO folds, metrics and
last-epoch rule.

- ``lbptop-svm``: the MEGC 2019 baseline. LBP-TOP on the TIM-10 aligned face (grayscale),
  radii (X, Y, T) = (1, 1, 4), P = 4, 5×5 blocks, normalised histograms concatenated (1200-d);
  StandardScaler + LinearSVC fitted on the training fold, C chosen inside it by GroupKFold over
  its subjects; probabilities = softmax of the decision function.
- ``ststnet``: STSTNet on onset→apex TV-L1 (u, v) + optical strain, 28×28; 800 epochs, Adam
  5e-5, batch 256.
- ``off-apexnet``: OFF-ApexNet on onset→apex (u, v), 28×28; 3000 epochs, Adam 1e-4, batch 64.

Two calls per run::

    X, meta, failed = build_features(name, manifest, cache_dir)        # once, cached per clip
    proba = fit_predict(name, X[tr], y[tr], groups[tr], X[te], seed=s)  # per fold, (n_te, 3)

Everything fixed is in ``hyperparameters(name)`` for config.json.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.baselines import features as _features
from merlib.baselines.flow import (TVL1, FlowFailed, minmax_scale, onset_apex_flow, optical_strain,
                                   tvl1_flow)
from merlib.baselines.lbptop import block_histograms, lbp_top_codes, lbp_top_histograms
from merlib.baselines.nets import OFFApexNet, STSTNet
from merlib.baselines.svm import C_GRID, INNER_SPLITS, fit_svm, make_svm, svm_proba
from merlib.baselines.training import train_predict

NAMES = ("lbptop-svm", "ststnet", "off-apexnet")
KIND = {"lbptop-svm": "lbptop", "ststnet": "flow", "off-apexnet": "flow"}
# Which of the cached flow channels (u, v, strain) each net reads.
CHANNELS = {"ststnet": (0, 1, 2), "off-apexnet": (0, 1)}
INPUT_SCALE = 255.0  # per clip and channel, min-max to [0, 255]: the references' 8-bit images

NET_KWARGS = {
    "ststnet": {"in_chans": 3, "num_classes": 3, "branch_channels": (3, 5, 8), "kernel_size": 3,
                "padding": 2, "drop_rate": 0.5, "img_size": 28},
    "off-apexnet": {"in_chans": 2, "num_classes": 3, "stream_channels": (6, 16), "kernel_size": 5,
                    "hidden": (1024, 1024), "drop_rate": 0.5, "img_size": 28},
}
NET_CLASS = {"ststnet": STSTNet, "off-apexnet": OFFApexNet}
TRAINING = {  # the references' fixed schedules; the model after the last epoch predicts
    "ststnet": {"epochs": 800, "lr": 5e-5, "batch_size": 256},
    "off-apexnet": {"epochs": 3000, "lr": 1e-4, "batch_size": 64},
}

SOURCES = {
    "lbptop-svm": (
        "See, Yap, Li, Hong & Wang, 'MEGC 2019 - The Second Facial Micro-Expressions Grand "
        "Challenge', FG 2019 (baseline LBP-TOP + SVM; composite UF1 0.5882, UAR 0.5785); LBP-TOP: "
        "Zhao & Pietikainen, TPAMI 2007; radii (1,1,4), P=4, 5x5 blocks as in the CASME II "
        "baseline (Yan et al., PLoS ONE 2014) - not verified from the papers' text"),
    "ststnet": (
        "Liong, Gan, See, Khor & Huang, 'Shallow Triple Stream Three-dimensional CNN (STSTNet) "
        "for Micro-expression Recognition', FG 2019 (arXiv:1902.03634); layers and schedule from "
        "github.com/christy1206/STSTNet main.py (commit 220f3de)"),
    "off-apexnet": (
        "Gan, Liong, Yau, Huang & Tan, 'OFF-ApexNet on micro-expression recognition system', "
        "Signal Processing: Image Communication 74 (2019) 129-139 (arXiv:1805.08699); layers, lr, "
        "epochs and batch from the third-party PyTorch reimplementation "
        "github.com/ECNU-Cross-Innovation-Lab/PRICAI2021-Off-TANet (models/off_apexnet.py, "
        "train_arg.py; commit 5ae73be) - the paper's own text was not available to check"),
}
UNVERIFIED = {
    "lbptop-svm": ["radii (1,1,4), P=4 and 5x5 blocks: See et al. 2019 not readable here",
                   "the SVM's C and scaling: not stated in the sources found; C chosen in-fold"],
    "ststnet": ["input scaling: the reference reads 8-bit images of folder 'norm_u_v_os' "
                "(code not published): per-clip min-max to [0, 255] assumed",
                "the reference does not shuffle batches; here each epoch is shuffled (seeded)"],
    "off-apexnet": ["every value comes from a third-party reimplementation, not the paper",
                    "ReLU after each conv (the reimplementation has none)",
                    "input scaling as ststnet (the reimplementation feeds raw flow)"],
}


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown baseline {name!r}; one of {NAMES}")


def hyperparameters(name: str) -> dict:
    """Everything fixed for a baseline, with its source, as plain JSON-able data."""
    _check_name(name)
    kind = KIND[name]
    out = {"name": name, "source": SOURCES[name], "unverified": list(UNVERIFIED[name]),
           "features": copy.deepcopy(_features.SETTINGS[kind]), "features_key": _features.settings_key(
               _features.SETTINGS[kind])}
    if name == "lbptop-svm":
        out["classifier"] = {
            "pipeline": "StandardScaler -> LinearSVC (one-vs-rest, squared hinge), both fitted on "
                        "the training fold only",
            "C_grid": list(C_GRID), "inner_cv": f"GroupKFold(min({INNER_SPLITS}, training "
                                                f"subjects)) over the training subjects",
            "scoring": "f1_macro (UF1); ties -> smaller C", "class_weight": None,
            "max_iter": 10_000, "random_state": "seed",
            "probabilities": "softmax of decision_function over the fold's classes "
                             "(not calibrated; argmax = the SVM's prediction)"}
        return out
    out["input"] = {"channels": [_features.SETTINGS["flow"]["channels"][c] for c in CHANNELS[name]],
                    "scaling": "per clip and channel min-max to [0, 255]"}
    out["model"] = {"class": NET_CLASS[name].__name__,
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in NET_KWARGS[name].items()}}
    out["training"] = {**TRAINING[name], "optimizer": "Adam (torch defaults, no weight decay)",
                       "loss": "cross-entropy", "shuffle": "every epoch, seeded",
                       "init": "PyTorch default, seeded", "selection": "last epoch"}
    return out


def build_features(name: str, manifest: pd.DataFrame, cache_dir: str | Path, *, jobs: int = 0,
                   progress: bool = False) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Features of the manifest's usable rows (status == "ok"), in manifest order.

    Returns X (N, ...) float32 — lbptop-svm (N, 1200), ststnet (N, 3, 28, 28), off-apexnet
    (N, 2, 28, 28) — the kept rows' meta (dataset, source, subject, clip, label) and the failed
    clips (subject, clip, reason). Per-clip features are cached under ``cache_dir`` (the flow
    once for both nets); ``jobs`` worker processes (0: one per core, 1: none)."""
    _check_name(name)
    X, meta, failed = _features.build(KIND[name], manifest, cache_dir, jobs=jobs, progress=progress)
    if name in CHANNELS:
        X = minmax_scale(X[:, list(CHANNELS[name])], scale=INPUT_SCALE)
    return X, meta, failed


def fit_predict(name: str, X_train: np.ndarray, y_train: np.ndarray, groups_train: np.ndarray,
                X_test: np.ndarray, *, seed: int, device: str = "cpu", progress: bool = False,
                epochs: int | None = None) -> np.ndarray:
    """Fit on one training fold, predict its test subjects: (n_test, 3) class probabilities,
    columns in ``merlib.config.CLASSES`` order (label ids 0, 1, 2). Deterministic for a seed on
    CPU. ``groups_train`` (subjects) is used by lbptop-svm's in-fold choice of C; ``epochs``
    (None: the reference's count) and ``device`` by the nets."""
    _check_name(name)
    if name == "lbptop-svm":
        return svm_proba(fit_svm(X_train, y_train, groups_train, seed=seed), X_test)
    schedule = TRAINING[name]
    return train_predict(lambda: NET_CLASS[name](**NET_KWARGS[name]), X_train, y_train, X_test,
                         epochs=schedule["epochs"] if epochs is None else epochs,
                         lr=schedule["lr"], batch_size=schedule["batch_size"], seed=seed,
                         device=device, progress=progress, desc=name)


__all__ = ["NAMES", "hyperparameters", "build_features", "fit_predict", "STSTNet", "OFFApexNet",
           "lbp_top_codes", "lbp_top_histograms", "block_histograms", "tvl1_flow",
           "optical_strain", "onset_apex_flow", "minmax_scale", "FlowFailed", "TVL1", "fit_svm",
           "make_svm", "svm_proba", "train_predict"]
