"""Table 6's baselines trained under the paper model's protocol (docs/DESIGN.md, "Baselines";
DECISIONS.md, "Baselines (Table 6, measured)"): the same preprocessing cache, LOSO folds,
metrics and last-epoch rule.

Each baseline is one entry of ``merlib.registry.BASELINES`` (features, network and its settings,
the reference's schedule, sources, what could not be verified); this package turns an entry into
features and per-fold predictions:

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

Adding a baseline: an entry in ``merlib.registry.BASELINES`` and, for a network, its class in
``merlib.baselines.nets`` (README, "Adding a baseline").
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.baselines import features as _features
from merlib.baselines import nets
from merlib.baselines.flow import minmax_scale
from merlib.baselines.svm import C_GRID, INNER_SPLITS, fit_svm, svm_proba
from merlib.baselines.training import train_predict
from merlib.registry import BASELINES, baseline

NAMES = tuple(BASELINES)
INPUT_SCALE = 255.0  # per clip and channel, min-max to [0, 255]: the references' 8-bit images


def epochs_for(name: str, profile: str, override: int = 0) -> int | None:
    """A network baseline's epochs: ``override`` when set, else the reference's, or under the
    ``quick`` profile its shorter ``quick_epochs``; None for a baseline that is not a network."""
    entry = baseline(name)
    if not entry.net:
        return None
    if override:
        return override
    return entry.quick_epochs if profile == "quick" and entry.quick_epochs else entry.schedule["epochs"]


def make_net(name: str):
    """A fresh network of baseline ``name`` with its registry settings."""
    entry = baseline(name)
    return getattr(nets, entry.net)(**entry.net_kwargs)


def feature_kind(name: str, flow_from: str = "frames") -> str:
    """The feature kind a baseline reads: its own, except that a flow net on a dataset that ships
    its flow (``registry.Dataset.flow_from == "file"``) reads those images."""
    kind = baseline(name).features
    return "flow_file" if kind == "flow" and flow_from == "file" else kind


def hyperparameters(name: str, flow_from: str = "frames") -> dict:
    """Everything fixed for a baseline, with its source, as plain JSON-able data."""
    entry = baseline(name)
    settings = _features.SETTINGS[feature_kind(name, flow_from)]
    out = {"name": name, "source": entry.source, "unverified": list(entry.unverified),
           "features": copy.deepcopy(settings), "features_key": _features.settings_key(settings)}
    if not entry.net:
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
    out["input"] = {"channels": [settings["channels"][c] for c in entry.channels],
                    "scaling": "per clip and channel min-max to [0, 255]"}
    out["model"] = {"class": entry.net,
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in entry.net_kwargs.items()}}
    out["training"] = {**entry.schedule, "optimizer": "Adam (torch defaults, no weight decay)",
                       "loss": "cross-entropy", "shuffle": "every epoch, seeded",
                       "init": "PyTorch default, seeded", "selection": "last epoch"}
    return out


def build_features(name: str, manifest: pd.DataFrame, cache_dir: str | Path, *, jobs: int = 0,
                   progress: bool = False, flow_from: str = "frames"
                   ) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Features of the manifest's usable rows (status == "ok"), in manifest order.

    Returns X (N, ...) float32 — lbptop-svm (N, 1200), ststnet (N, 3, 28, 28), off-apexnet
    (N, 2, 28, 28) — the kept rows' meta (dataset, source, subject, clip, label) and the failed
    clips (subject, clip, reason). Per-clip features are cached under ``cache_dir`` (the flow
    once for both nets); ``jobs`` worker processes (0: one per core, 1: none). ``flow_from``:
    "file" reads a release's own flow images (the manifest's ``flow_file``)."""
    entry = baseline(name)
    X, meta, failed = _features.build(feature_kind(name, flow_from), manifest, cache_dir, jobs=jobs,
                                      progress=progress)
    if entry.channels:
        X = minmax_scale(X[:, list(entry.channels)], scale=INPUT_SCALE)
    return X, meta, failed


def fit_predict(name: str, X_train: np.ndarray, y_train: np.ndarray, groups_train: np.ndarray,
                X_test: np.ndarray, *, seed: int, device: str = "cpu", progress: bool = False,
                epochs: int | None = None) -> np.ndarray:
    """Fit on one training fold, predict its test subjects: (n_test, 3) class probabilities,
    columns in ``merlib.registry.CLASSES`` order (label ids 0, 1, 2). Deterministic for a seed on
    CPU. ``groups_train`` (subjects) is used by lbptop-svm's in-fold choice of C; ``epochs``
    (None: the reference's count) and ``device`` by the nets."""
    entry = baseline(name)
    if not entry.net:
        return svm_proba(fit_svm(X_train, y_train, groups_train, seed=seed), X_test)
    schedule = entry.schedule
    return train_predict(lambda: make_net(name), X_train, y_train, X_test,
                         epochs=schedule["epochs"] if epochs is None else epochs,
                         lr=schedule["lr"], batch_size=schedule["batch_size"], seed=seed,
                         device=device, progress=progress, desc=name)
