"""Evaluation metrics.

Micro-expression recognition (MER) part: ``mer_*`` functions and :func:`confusion_matrix`, pure numpy.
Geometry metrics (per-vertex error, ...) and FID live in their own clearly named sections below it.

MER conventions (those of the MEGC challenges):

- scores are POOLED over LOSO folds: concatenate every fold's test truths and predictions, then score once
  (:func:`pool_folds`), never average per-fold scores;
- ACC = correct / N; UF1 = mean over classes of F1_c = 2TP_c / (2TP_c + FP_c + FN_c); UAR = mean over classes of
  recall_c = TP_c / N_c; WF1 = sum_c (N_c / N) F1_c (support-weighted);
- the class set is a FIXED label order given by the caller (e.g. ``("negative", "positive", "surprise")``), so
  confusion matrices of different runs line up;
- a class absent from both truth and prediction has no defined F1 or recall: it is EXCLUDED from the UF1 / UAR /
  WF1 means (listed in ``MERScores.absent``; its per-class row holds NaN). A class predicted but absent from the
  truth counts in UF1 with F1 = 0 (its FP are real errors) and is excluded from UAR (recall 0/0 undefined).
  Precision of a class never predicted is NaN in the per-class table, while its F1 is 0 when it has support.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

# ------------------------------------------------------------------------------------------------------------
# MER: micro-expression recognition metrics
# ------------------------------------------------------------------------------------------------------------


@dataclass
class MERScores:
    """Pooled MER scores over ``n`` clips for classes ``labels`` (K,).

    confusion (K, K) int64: rows truth, columns prediction, in ``labels`` order. per_class: DataFrame indexed by
    label with support, predicted, tp, precision, recall, f1. absent: classes with no truth and no prediction.
    """

    acc: float
    uf1: float
    uar: float
    wf1: float
    n: int
    labels: tuple
    confusion: np.ndarray
    per_class: pd.DataFrame
    absent: tuple = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"n": self.n, "acc": self.acc, "uf1": self.uf1, "uar": self.uar, "wf1": self.wf1}


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (N,), got shape {arr.shape}")
    return arr


def confusion_matrix(y_true, y_pred, labels: Sequence) -> np.ndarray:
    """Confusion counts (K, K), rows = truth, columns = prediction, in the order of ``labels`` (K,).

    ``y_true``, ``y_pred``: (N,) class values (strings or ints). Raises ValueError on a length mismatch, on
    repeated labels, or on a value not in ``labels`` (a silent drop would shift every score).
    """
    y_true, y_pred = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y_true.shape[0]} and {y_pred.shape[0]}")
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    index = {label: k for k, label in enumerate(labels)}
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        unknown = sorted({str(v) for v in arr.tolist() if v not in index})
        if unknown:
            raise ValueError(f"{name} holds values {unknown} not in labels {labels}")
    k = len(labels)
    t = np.fromiter((index[v] for v in y_true.tolist()), dtype=np.int64, count=y_true.size)
    p = np.fromiter((index[v] for v in y_pred.tolist()), dtype=np.int64, count=y_pred.size)
    # cm[i, j] = #clips with truth i predicted j
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def mer_from_confusion(confusion: np.ndarray, labels: Sequence) -> MERScores:
    """MER scores from a confusion matrix (K, K) (rows truth, columns prediction)."""
    cm = np.asarray(confusion, dtype=np.int64)
    labels = tuple(labels)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion: expected ({len(labels)}, {len(labels)}) for labels {labels}, got {cm.shape}")
    n = int(cm.sum())
    if n == 0:
        raise ValueError("cannot score zero clips")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # N_c in the truth
    predicted = cm.sum(axis=0).astype(np.float64)
    fp, fn = predicted - tp, support - tp
    present = (support + predicted) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
    per_class = pd.DataFrame(
        {"support": support.astype(np.int64), "predicted": predicted.astype(np.int64), "tp": tp.astype(np.int64),
         "precision": precision, "recall": recall, "f1": f1},
        index=pd.Index(labels, name="label"),
    )
    return MERScores(
        acc=float(tp.sum() / n),
        uf1=float(np.mean(f1[present])),
        uar=float(np.mean(recall[support > 0])),
        wf1=float(np.sum(np.nan_to_num(f1) * support) / n),
        n=n,
        labels=labels,
        confusion=cm,
        per_class=per_class,
        absent=tuple(label for label, keep in zip(labels, present) if not keep),
    )


def mer_scores(y_true, y_pred, labels: Sequence | None = None) -> MERScores:
    """ACC, UF1, UAR, WF1, per-class table and confusion matrix of predictions ``y_pred`` (N,) vs ``y_true`` (N,).

    ``labels`` pins the class order (recommended; e.g. composite.LABELS); None uses the sorted union of values.
    Pool LOSO folds first (:func:`pool_folds`).
    """
    y_true, y_pred = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred")
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    return mer_from_confusion(confusion_matrix(y_true, y_pred, labels), labels)


def pool_folds(fold_results: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-fold (y_true (N_f,), y_pred (N_f,)) pairs into pooled (N,) arrays, N = sum N_f."""
    if not fold_results:
        raise ValueError("pool_folds: expected at least one (y_true, y_pred) fold result")
    trues, preds = [], []
    for i, (t, p) in enumerate(fold_results):
        t, p = _as_1d(t, f"fold {i} y_true"), _as_1d(p, f"fold {i} y_pred")
        if t.shape != p.shape:
            raise ValueError(f"fold {i}: y_true has {t.shape[0]} clips, y_pred {p.shape[0]}")
        trues.append(t)
        preds.append(p)
    return np.concatenate(trues), np.concatenate(preds)


def mer_breakdown(y_true, y_pred, groups, labels: Sequence, overall: str = "all") -> pd.DataFrame:
    """Scores per group (e.g. source dataset of each clip, ``groups`` (N,)) plus a pooled ``overall`` row.

    Columns: group, n, acc, uf1, uar, wf1, absent (classes with no truth and no prediction in that group,
    excluded from its means, joined by '+'). Groups in order of first appearance.
    """
    y_true, y_pred, groups = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred"), _as_1d(groups, "groups")
    if not (y_true.shape == y_pred.shape == groups.shape):
        raise ValueError(f"y_true, y_pred, groups must have equal lengths, got {y_true.shape}, {y_pred.shape}, {groups.shape}")
    rows = []
    for group in list(dict.fromkeys(groups.tolist())) + [overall]:
        mask = np.ones(len(groups), bool) if group == overall else groups == group
        scores = mer_scores(y_true[mask], y_pred[mask], labels)
        rows.append({"group": group, **scores.as_dict(), "absent": "+".join(map(str, scores.absent))})
    return pd.DataFrame(rows)


def mer_table(scores: MERScores, **columns) -> pd.DataFrame:
    """One-row DataFrame of ``scores`` (n, acc, uf1, uar, wf1) with extra constant ``columns`` (e.g. method=...)."""
    return pd.DataFrame([{**columns, **scores.as_dict()}])


def confusion_table(scores: MERScores) -> pd.DataFrame:
    """The confusion matrix as a labelled DataFrame (index truth, columns prediction)."""
    return pd.DataFrame(scores.confusion, index=pd.Index(scores.labels, name="truth"),
                        columns=pd.Index(scores.labels, name="predicted"))
