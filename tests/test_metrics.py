"""Acc / UF1 / UAR / confusion against hand-computed cases (Eqs. 18–20)."""
from __future__ import annotations

import pandas as pd
import pytest

from merlib.metrics import compute_metrics, confusion, metrics_table

# 10 samples: 4 negative (0), 3 positive (1), 3 surprise (2).
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
# By hand:
#   class 0: TP 2 (idx 0,1), FP 1 (idx 6), FN 2 (idx 2,3) -> F1 = 4/(4+1+2) = 4/7, recall 2/4
#   class 1: TP 2 (idx 4,5), FP 2 (idx 2,9), FN 1 (idx 6) -> F1 = 4/(4+2+1) = 4/7, recall 2/3
#   class 2: TP 2 (idx 7,8), FP 1 (idx 3),   FN 1 (idx 9) -> F1 = 4/(4+1+1) = 2/3, recall 2/3
#   UF1 = (4/7 + 4/7 + 2/3) / 3 = 38/63;  UAR = (1/2 + 2/3 + 2/3) / 3 = 11/18;  Acc = 6/10
#   Eq. 20 summed over classes: TP = 6, FP = 1 + 2 + 1 = 4 -> 6 / 10, the same as correct/total.


def test_hand_computed_three_class_case():
    m = compute_metrics(Y_TRUE, Y_PRED)
    assert m["n"] == 10
    assert m["acc"] == pytest.approx(0.6)
    assert m["uf1"] == pytest.approx(38 / 63)
    assert m["uar"] == pytest.approx(11 / 18)


def test_confusion_rows_true_columns_predicted():
    cm = confusion(Y_TRUE, Y_PRED, (0, 1, 2))
    names = ["negative", "positive", "surprise"]  # label ids 0, 1, 2
    assert list(cm.index) == names and list(cm.columns) == names
    assert cm.index.name == "true" and cm.columns.name == "predicted"
    assert cm.to_numpy().tolist() == [[2, 1, 1],   # true negative -> predicted 0,0,1,2
                                      [1, 2, 0],   # true positive -> 1,1,0
                                      [0, 1, 2]]   # true surprise -> 2,2,1
    assert int(cm.to_numpy().sum()) == 10


def test_class_absent_from_predictions_counts_as_zero():
    # surprise is never predicted:
    #   class 0: TP1 FP0 FN0 -> F1 1, recall 1;  class 1: TP1 FP2 FN0 -> F1 2/4, recall 1
    #   class 2: TP0 FP0 FN2 -> F1 0, recall 0   => UF1 = 1.5/3, UAR = 2/3, Acc = 2/4
    m = compute_metrics([0, 1, 2, 2], [0, 1, 1, 1])
    assert m["uf1"] == pytest.approx(0.5)
    assert m["uar"] == pytest.approx(2 / 3)
    assert m["acc"] == pytest.approx(0.5)
    assert confusion([0, 1, 2, 2], [0, 1, 1, 1])["surprise"].sum() == 0


def test_class_absent_everywhere_still_in_macro_mean():
    # labels fixed to all three classes: an absent class contributes 0 (zero_division=0)
    m = compute_metrics([0, 1], [0, 1])
    assert m["acc"] == 1.0
    assert m["uf1"] == pytest.approx(2 / 3)
    assert m["uar"] == pytest.approx(2 / 3)
    # with the label set narrowed to what is present, the same predictions are perfect
    assert compute_metrics([0, 1], [0, 1], labels=(0, 1))["uf1"] == 1.0


def test_perfect_predictions():
    y = [2, 0, 1, 1, 0, 2, 2]
    assert compute_metrics(y, y) == {"acc": 1.0, "uf1": 1.0, "uar": 1.0, "n": 7}
    cm = confusion(y, y)
    assert (cm.to_numpy() == pd.DataFrame([[2, 0, 0], [0, 2, 0], [0, 0, 3]]).to_numpy()).all()


def test_accepts_series_and_numpy():
    m = compute_metrics(pd.Series(Y_TRUE), pd.Series(Y_PRED).to_numpy())
    assert m["uf1"] == pytest.approx(38 / 63)


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1, 3], [0, 1, 2], "outside labels"),
    ([0, 1, 2], [0, 1, -1], "outside labels"),
    ([0, 1, 2], [0, 1], "samples"),
    ([], [], "no samples"),
    ([[0, 1]], [[0, 1]], "one-dimensional"),
])
def test_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y_true, y_pred)


def _megc_like() -> pd.DataFrame:
    rows = [
        # casme2: perfect
        ("casme2", "sub01", 0, 0), ("casme2", "sub01", 1, 1), ("casme2", "sub02", 2, 2),
        # samm: 1 of 4 right; every prediction is "negative"
        ("samm", "006", 0, 0), ("samm", "006", 1, 0), ("samm", "007", 2, 0), ("samm", "007", 1, 0),
        # smic: 2 of 3 right
        ("smic", "s01", 0, 0), ("smic", "s02", 1, 2), ("smic", "s02", 2, 2),
    ]
    return pd.DataFrame(rows, columns=["source", "subject", "y_true", "y_pred"])


def test_metrics_table_pooled_and_per_source():
    table = metrics_table(_megc_like(), by="source")
    assert list(table.index) == ["all", "casme2", "samm", "smic"]
    assert list(table.columns) == ["acc", "uf1", "uar", "n"]
    assert table.index.name == "source"
    assert table.loc["casme2"].tolist() == [1.0, 1.0, 1.0, 3]
    # samm: class 0 TP1 FP3 FN0 -> F1 2/5, recall 1; classes 1, 2: F1 0, recall 0
    assert table.loc["samm", "acc"] == pytest.approx(1 / 4)
    assert table.loc["samm", "uf1"] == pytest.approx((2 / 5) / 3)
    assert table.loc["samm", "uar"] == pytest.approx(1 / 3)
    # smic: c0 TP1 -> F1 1, recall 1; c1 TP0 FN1 -> 0, 0; c2 TP1 FP1 -> F1 2/3, recall 1
    assert table.loc["smic", "uf1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert table.loc["smic", "uar"] == pytest.approx(2 / 3)
    # pooled over all 10 (not the mean of the subsets): 6 correct.
    #   c0: TP 3 (casme2, samm, smic), FP 3 (samm), FN 0 -> F1 6/9, recall 3/3
    #   c1: TP 1, FP 0, FN 3 (samm x2, smic) -> F1 2/5, recall 1/4
    #   c2: TP 2, FP 1 (smic), FN 1 (samm) -> F1 4/6, recall 2/3
    assert table.loc["all", "n"] == 10
    assert table.loc["all", "acc"] == pytest.approx(0.6)
    assert table.loc["all", "uf1"] == pytest.approx((6 / 9 + 2 / 5 + 4 / 6) / 3)
    assert table.loc["all", "uar"] == pytest.approx((1 + 1 / 4 + 2 / 3) / 3)


def test_metrics_table_without_grouping():
    df = pd.DataFrame({"y_true": Y_TRUE, "y_pred": Y_PRED, "fold": [1] * 5 + [2] * 5})
    table = metrics_table(df)
    assert list(table.index) == ["all"]
    assert table.loc["all", "uf1"] == pytest.approx(38 / 63)


def test_metrics_table_bad_frames():
    with pytest.raises(KeyError, match="y_pred"):
        metrics_table(pd.DataFrame({"y_true": [0, 1]}))
    with pytest.raises(KeyError, match="source"):
        metrics_table(pd.DataFrame({"y_true": [0], "y_pred": [0]}), by="source")
    with pytest.raises(ValueError, match="no samples"):
        metrics_table(pd.DataFrame({"y_true": [], "y_pred": []}))
    with pytest.raises(ValueError, match="missing values"):
        metrics_table(pd.DataFrame({"y_true": [0, 1], "y_pred": [0, 1], "source": ["samm", None]}),
                      by="source")


def test_the_oracle_picks_each_subjects_best_epoch_not_the_last():
    """A toy run of two folds and three epochs where the best epoch on the test subject is known
    and differs from the last one: the oracle reports those epochs; the honest number is the last
    epoch's."""
    import numpy as np

    from merlib.metrics import oracle_metrics

    def onehot(classes):
        return np.eye(3)[classes] * 0.9 + 0.05

    pred = pd.DataFrame({"fold": [0, 0, 1, 1], "y_true": [0, 1, 2, 2]})
    epochs = {0: np.stack([onehot([2, 2]), onehot([0, 1]), onehot([0, 0])]),   # best: epoch 2
              1: np.stack([onehot([2, 2]), onehot([0, 0]), onehot([2, 0])])}   # best: epoch 1
    oracle = oracle_metrics(pred, epochs)
    assert oracle["epochs"] == {0: 2, 1: 1}
    assert oracle["acc"] == 1.0 and oracle["uf1"] == 1.0
    last = compute_metrics(pred["y_true"], np.concatenate([epochs[0][-1].argmax(1), epochs[1][-1].argmax(1)]))
    assert last["acc"] == 0.5 < oracle["acc"]
    with pytest.raises(ValueError, match="fold 1"):
        oracle_metrics(pred, {0: epochs[0], 1: epochs[1][:, :1]})
