"""The LBP-TOP baseline's classifier: a linear SVM on standardised histograms, both fitted on the
training fold only, C chosen inside it by grouped cross-validation over its subjects
(docs/DECISIONS.md, "Baselines")."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
INNER_SPLITS = 5        # GroupKFold over the training subjects (fewer when there are fewer)
DEFAULT_C = 1.0         # scikit-learn's default, used when a search is impossible (< 2 subjects)
MAX_ITER = 10_000


def make_svm(*, C: float = DEFAULT_C, seed: int = 0, max_iter: int = MAX_ITER) -> Pipeline:
    """StandardScaler, then LinearSVC (one-vs-rest, squared hinge, liblinear)."""
    return Pipeline([("scale", StandardScaler()),
                     ("svm", LinearSVC(C=C, random_state=seed, max_iter=max_iter))])


def fit_svm(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, seed: int,
            C_grid: tuple[float, ...] = C_GRID, splits: int = INNER_SPLITS,
            scoring: str = "f1_macro") -> Pipeline:
    """The pipeline refitted on all of (X, y) with the C whose GroupKFold score over the
    training subjects (``groups``) is best; ties go to the smaller C. Nothing outside (X, y)
    is seen. With a single training subject or class no search is possible: C = 1."""
    X, y, groups = np.asarray(X), np.asarray(y), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2 or len(np.unique(y)) < 2:
        return make_svm(seed=seed).fit(X, y) if len(np.unique(y)) > 1 else _Constant(y[0])
    search = GridSearchCV(make_svm(seed=seed), {"svm__C": list(C_grid)},
                          cv=GroupKFold(n_splits=min(splits, n_groups)), scoring=scoring,
                          refit=True, n_jobs=1, error_score=np.nan)
    search.fit(X, y, groups=groups)
    return search.best_estimator_


class _Constant:
    """A training fold with one class predicts it (LinearSVC needs two)."""

    def __init__(self, label: int) -> None:
        self.classes_ = np.array([label])


def svm_proba(model, X: np.ndarray, *, n_classes: int = 3) -> np.ndarray:
    """Class scores as probabilities: softmax of ``decision_function`` over the classes the
    fold trained on, 0 for a class it never saw. (n, n_classes), columns = label ids; its
    argmax is the SVM's own prediction."""
    X = np.asarray(X)
    out = np.zeros((len(X), n_classes))
    classes = np.asarray(model.classes_)
    if len(classes) == 1:
        out[:, classes[0]] = 1.0
        return out
    scores = model.decision_function(X)
    if scores.ndim == 1:  # two classes: one score, for classes[1]
        scores = np.stack([np.zeros_like(scores), scores], 1)
    out[:, classes] = softmax(scores, axis=1)
    return out
