"""LOSO folds never mix a subject across train and test; MER metrics match hand-computed confusion matrices."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from microface.data.folds import PROTOCOLS, Fold, check_folds, label_table, loso_folds, select_epoch
from microface.metrics.recognition import (confusion_matrix, confusion_table, mer_breakdown, mer_from_confusion,
                                           mer_scores, mer_table, pool_folds)

# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("seed", range(25))
def test_loso_property_random_subject_lists(seed):
    rng = np.random.default_rng(seed)
    n_subjects = int(rng.integers(2, 12))
    names = [f"{rng.choice(['sub', 's', 'samm_'])}{k}" for k in rng.permutation(40)[:n_subjects]]
    subjects = list(rng.choice(names, size=int(rng.integers(n_subjects, 80))))
    subjects += names  # every name at least once
    rng.shuffle(subjects)
    folds = loso_folds(subjects)
    arr = np.asarray(subjects)
    assert sorted(f.test_subject for f in folds) == sorted(set(subjects))
    tested = np.zeros(len(subjects), int)
    for fold in folds:
        assert not set(arr[fold.train_idx]) & set(arr[fold.test_idx])  # never on both sides
        assert set(arr[fold.test_idx]) == {fold.test_subject}
        assert np.array_equal(np.sort(np.concatenate([fold.train_idx, fold.test_idx])), np.arange(len(subjects)))
        tested[fold.test_idx] += 1
    assert np.all(tested == 1)  # each clip tested exactly once
    again = loso_folds(subjects)
    assert [f.test_subject for f in again] == [f.test_subject for f in folds]
    assert all(np.array_equal(a.test_idx, b.test_idx) for a, b in zip(again, folds))


def test_loso_natural_order_and_indices():
    folds = loso_folds(["sub10", "sub2", "sub1", "sub2", "sub10", "sub10"])
    assert [f.test_subject for f in folds] == ["sub1", "sub2", "sub10"]
    assert folds[1].test_idx.tolist() == [1, 3] and folds[1].train_idx.tolist() == [0, 2, 4, 5]
    assert folds[0].test_idx.dtype == np.int64


def test_loso_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 2 subjects"):
        loso_folds(["sub01", "sub01"])
    with pytest.raises(ValueError, match="empty"):
        loso_folds([])


def test_check_folds_catches_leaks_and_double_tests():
    subjects = ["a", "a", "b", "c"]
    leaky = [Fold("a", np.array([1, 2, 3]), np.array([0])), Fold("b", np.array([0, 1, 3]), np.array([2])),
             Fold("c", np.array([0, 1, 2]), np.array([3]))]
    with pytest.raises(ValueError, match="both train and test"):
        check_folds(leaky, subjects)
    missing = [f for f in loso_folds(subjects) if f.test_subject != "c"]
    with pytest.raises(ValueError, match="exactly once"):
        check_folds(missing, subjects)


def test_select_epoch_protocols():
    assert PROTOCOLS == ("fixed-epoch", "test-peek")
    labels = np.array([0, 1, 1, 2])
    preds = np.array([[0, 0, 0, 0],   # 1 correct
                      [0, 1, 1, 0],   # 3 correct
                      [0, 1, 1, 2],   # 4 correct
                      [0, 1, 1, 2]])  # 4 correct (tie: the earlier epoch wins)
    assert select_epoch("test-peek", per_epoch_test_predictions=preds, test_labels=labels) == 2
    # fixed-epoch never consults the test labels: the answer is the fixed epoch whatever the predictions
    assert select_epoch("fixed-epoch", fixed_epoch=1, per_epoch_test_predictions=preds, test_labels=labels) == 1
    assert select_epoch("fixed-epoch", fixed_epoch=0) == 0
    with pytest.raises(ValueError, match="protocol must be one of"):
        select_epoch("best", fixed_epoch=1)
    with pytest.raises(ValueError, match="needs fixed_epoch"):
        select_epoch("fixed-epoch")
    with pytest.raises(ValueError, match="out of range"):
        select_epoch("fixed-epoch", fixed_epoch=4, per_epoch_test_predictions=preds)
    with pytest.raises(ValueError, match="test-peek"):
        select_epoch("test-peek", fixed_epoch=1)


def test_label_table():
    df = pd.DataFrame({"method": ["fdp"], "uf1": [0.5]})
    out = label_table(df, "test-peek")
    assert list(out.columns) == ["protocol", "method", "uf1"] and out["protocol"].item() == "test-peek"
    assert "protocol" not in df.columns
    with pytest.raises(ValueError, match="already labelled"):
        label_table(out, "fixed-epoch")
    with pytest.raises(ValueError):
        label_table(df, "peek")


# ---------------------------------------------------------------- metrics

LABELS = ("negative", "positive", "surprise")
# imbalanced: 6 negative, 2 positive, 2 surprise; a lazy model says "negative" most of the time
Y_TRUE = ["negative"] * 6 + ["positive"] * 2 + ["surprise"] * 2
Y_PRED = ["negative"] * 6 + ["positive", "negative"] + ["negative", "negative"]


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, LABELS)
    assert cm.tolist() == [[6, 0, 0],
                           [1, 1, 0],
                           [2, 0, 0]]
    # the label order is the caller's, not the sorted one
    assert confusion_matrix(Y_TRUE, Y_PRED, ("surprise", "negative", "positive")).tolist() == [[0, 2, 0],
                                                                                                [0, 6, 0],
                                                                                                [0, 1, 1]]


def test_imbalanced_scores_by_hand_uf1_differs_from_acc():
    s = mer_scores(Y_TRUE, Y_PRED, LABELS)
    # ACC 7/10. F1: negative 2*6/(12+3+0)=0.8, positive 2/(2+0+1)=2/3, surprise 0
    assert s.acc == pytest.approx(0.7)
    assert s.uf1 == pytest.approx((0.8 + 2 / 3 + 0) / 3)  # 0.4889
    assert s.uar == pytest.approx((1 + 0.5 + 0) / 3)      # 0.5
    assert s.wf1 == pytest.approx((6 * 0.8 + 2 * 2 / 3 + 2 * 0) / 10)  # 0.6133
    assert s.uf1 != pytest.approx(s.acc)
    pc = s.per_class
    assert pc.loc["negative", "precision"] == pytest.approx(6 / 9) and pc.loc["positive", "precision"] == 1.0
    assert np.isnan(pc.loc["surprise", "precision"])  # never predicted
    assert pc["support"].tolist() == [6, 2, 2] and pc["predicted"].tolist() == [9, 1, 0]
    assert s.n == 10 and s.absent == ()


def test_perfect_and_balanced_cases():
    s = mer_scores(["a", "b", "c"], ["a", "b", "c"], ("a", "b", "c"))
    assert s.acc == s.uf1 == s.uar == s.wf1 == 1.0
    # balanced, one swap: every class F1 = 2/(2+1+1)... a: TP1 FP1 FN1 -> 0.5
    s = mer_scores(["a", "a", "b", "b"], ["a", "b", "a", "b"], ("a", "b"))
    assert (s.acc, s.uf1, s.uar, s.wf1) == pytest.approx((0.5, 0.5, 0.5, 0.5))


def test_absent_and_prediction_only_classes():
    # "others" appears in neither truth nor prediction: excluded from every mean
    with_absent = mer_scores(Y_TRUE, Y_PRED, LABELS + ("others",))
    base = mer_scores(Y_TRUE, Y_PRED, LABELS)
    assert with_absent.absent == ("others",)
    assert (with_absent.uf1, with_absent.uar, with_absent.wf1) == pytest.approx((base.uf1, base.uar, base.wf1))
    assert np.isnan(with_absent.per_class.loc["others", "f1"])
    # "c" only predicted: F1 0 counts in UF1, recall undefined so it is left out of UAR
    s = mer_scores(["a", "a", "b", "b"], ["a", "c", "b", "b"], ("a", "b", "c"))
    assert s.uf1 == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert s.uar == pytest.approx((0.5 + 1) / 2)
    assert s.acc == pytest.approx(0.75) and s.absent == ()


def test_integer_labels_and_from_confusion():
    s = mer_scores(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]))
    assert s.labels == (0, 1, 2)
    again = mer_from_confusion(s.confusion, s.labels)
    assert (again.acc, again.uf1) == (s.acc, s.uf1)


def test_input_checks():
    with pytest.raises(ValueError, match="not in labels"):
        mer_scores(["a", "z"], ["a", "a"], ("a", "b"))
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(["a"], ["a", "b"], ("a", "b"))
    with pytest.raises(ValueError, match="distinct"):
        confusion_matrix(["a"], ["a"], ("a", "a"))
    with pytest.raises(ValueError, match="1-D"):
        mer_scores(np.zeros((2, 2)), np.zeros((2, 2)))


def test_pooled_not_averaged_over_folds():
    folds = [(["a", "a", "a"], ["a", "a", "b"]), (["b"], ["b"])]
    y_true, y_pred = pool_folds(folds)
    assert y_true.tolist() == ["a", "a", "a", "b"]
    pooled = mer_scores(y_true, y_pred, ("a", "b"))
    # pooled: a TP2 FP0 FN1 -> 0.8; b TP1 FP1 FN0 -> 2/3
    assert pooled.uf1 == pytest.approx((0.8 + 2 / 3) / 2)
    per_fold_mean = np.mean([mer_scores(t, p, ("a", "b")).uf1 for t, p in folds])
    assert pooled.uf1 != pytest.approx(per_fold_mean)


def test_breakdown_per_dataset():
    y_true = ["negative", "positive", "negative", "surprise", "surprise"]
    y_pred = ["negative", "negative", "negative", "surprise", "positive"]
    groups = ["casme2", "casme2", "smic", "smic", "smic"]
    table = mer_breakdown(y_true, y_pred, groups, LABELS)
    assert table["group"].tolist() == ["casme2", "smic", "all"]
    casme2 = table.set_index("group").loc["casme2"]
    # casme2: negative TP1 FP1 FN0 -> 2/3, positive TP0 FN1 -> 0, surprise absent
    assert casme2["uf1"] == pytest.approx(1 / 3) and casme2["absent"] == "surprise" and casme2["n"] == 2
    assert table.set_index("group").loc["all", "acc"] == pytest.approx(3 / 5)


def test_tables():
    s = mer_scores(Y_TRUE, Y_PRED, LABELS)
    row = mer_table(s, method="fdp")
    assert row.columns.tolist() == ["method", "n", "acc", "uf1", "uar", "wf1"]
    ct = confusion_table(s)
    assert ct.loc["surprise", "negative"] == 2 and list(ct.columns) == list(LABELS)
