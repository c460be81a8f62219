"""Acc, UF1, UAR and confusion matrices (paper Sec. 4.3, Eqs. 18–20; docs/DESIGN.md, "Training and LOSO").

All from scikit-learn, with the label set fixed to the three classes so that a class missing
from a subject's (or a subset's) predictions still counts in the macro averages:

- UF1 (Eq. 18) = macro F1 = mean over classes of 2TP_i / (2TP_i + FP_i + FN_i);
- UAR (Eq. 19) = macro recall = mean over classes of TP_i / N_i;
- Acc: Eq. 20 prints TP / (TP + FP); summed over all classes that is correct / total (every
  wrong prediction is one FP of some class), which is what we compute (``accuracy_score``).

A class with no true and no predicted samples gets F1 = recall = 0 (``zero_division=0``) and
still enters the mean, as with the MEGC2019 evaluation code.
LOSO predictions of all folds are pooled before scoring (Sec. 4.3), never averaged per fold.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from merlib.registry import CLASSES

LABELS = (0, 1, 2)


def _as_labels(y: Sequence[int] | np.ndarray | pd.Series, name: str, labels: Sequence[int]) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    unknown = sorted(set(arr.tolist()) - set(labels))
    if unknown:
        raise ValueError(f"{name} has values outside labels {tuple(labels)}: {unknown}")
    return arr


def _checked(y_true, y_pred, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(y_true, "y_true", labels)
    p = _as_labels(y_pred, "y_pred", labels)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} samples but y_pred has {len(p)}")
    if len(t) == 0:
        raise ValueError("no samples to score")
    return t, p


def compute_metrics(y_true, y_pred, *, labels: Sequence[int] = LABELS) -> dict[str, float | int]:
    """{"acc", "uf1", "uar", "n"} of one pooled set of predictions."""
    t, p = _checked(y_true, y_pred, labels)
    labels = list(labels)
    return {
        "acc": float(accuracy_score(t, p)),
        "uf1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
        "uar": float(recall_score(t, p, labels=labels, average="macro", zero_division=0)),
        "n": int(len(t)),
    }


def confusion(y_true, y_pred, labels: Sequence[int] = LABELS, *,
              names: Sequence[str] = CLASSES) -> pd.DataFrame:
    """Counts with rows = true class, columns = predicted class, labelled by class name."""
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names for {len(labels)} labels")
    t, p = _checked(y_true, y_pred, labels)
    cm = confusion_matrix(t, p, labels=list(labels))
    return pd.DataFrame(cm, index=pd.Index(list(names), name="true"),
                        columns=pd.Index(list(names), name="predicted"))


def metrics_table(predictions: pd.DataFrame, by: str | None = None, *,
                  labels: Sequence[int] = LABELS) -> pd.DataFrame:
    """Metrics of the predictions pooled over all folds (row ``"all"``) and, with ``by`` (e.g.
    ``"source"`` for the MEGC composite), of each group's subset. Reads columns y_true, y_pred.
    Columns: acc, uf1, uar, n; index named after ``by`` (or "subset")."""
    needed = ["y_true", "y_pred"] + ([by] if by else [])
    missing = [c for c in needed if c not in predictions.columns]
    if missing:
        raise KeyError(f"predictions lack column(s) {missing}; have {list(predictions.columns)}")
    rows = {"all": compute_metrics(predictions["y_true"], predictions["y_pred"], labels=labels)}
    if by:
        if predictions[by].isna().any():
            raise ValueError(f"column {by!r} has missing values")
        for key, group in predictions.groupby(by, sort=True):
            if str(key) == "all":
                raise ValueError(f"a {by!r} group is named 'all', which is the pooled row's name")
            rows[str(key)] = compute_metrics(group["y_true"], group["y_pred"], labels=labels)
    table = pd.DataFrame.from_dict(rows, orient="index")[["acc", "uf1", "uar", "n"]]
    table.index.name = by or "subset"
    return table


ORACLE_LABEL = "oracle: epoch chosen on the test subject (not a valid result)"


def oracle_metrics(pred: pd.DataFrame, epoch_probs: dict[int, np.ndarray], *,
                   labels: Sequence[int] = LABELS) -> dict:
    """What picking, for each held-out subject, the epoch that scored best on that very subject
    would have reported: **not a valid result** (:data:`ORACLE_LABEL`), a diagnostic of how much
    such test-set selection inflates a number. Many published MEGC results select so; merlib's
    results never do (the model after the last epoch predicts).

    ``pred``: a run's pooled predictions (fold, y_true per held-out clip, in each fold's order);
    ``epoch_probs``: per fold, the held-out clips' probabilities after every epoch (epochs,
    n_test, classes). Per fold the epoch with the most correct predictions wins (ties: the
    earliest). Returns {"acc", "uf1", "uar", "n", "epochs": chosen epoch (1-based) per fold}."""
    ys, ps, chosen = [], [], {}
    for fold, g in pred.groupby("fold", sort=True):
        y = g["y_true"].to_numpy()
        probs = np.asarray(epoch_probs[int(fold)])
        if probs.ndim != 3 or probs.shape[1] != len(y):
            raise ValueError(f"fold {fold}: epoch probabilities of shape {probs.shape} for "
                             f"{len(y)} held-out clips")
        correct = (probs.argmax(2) == y[None]).sum(1)  # per epoch
        best = int(np.argmax(correct))
        chosen[int(fold)] = best + 1
        ys.append(y)
        ps.append(probs[best].argmax(1))
    return {**compute_metrics(np.concatenate(ys), np.concatenate(ps), labels=labels), "epochs": chosen}
