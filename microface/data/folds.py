"""Leave-one-subject-out (LOSO) folds and the epoch-selection protocols of micro-expression recognition.

A fold holds out every clip of one subject. Protocols, by name (:data:`PROTOCOLS`):

- ``"fixed-epoch"`` (default): train a fixed number of epochs and evaluate the last (or a pre-chosen) epoch;
  the test subject is never looked at before scoring.
- ``"test-peek"``: per fold, the epoch scoring best ON THE TEST SUBJECT is reported, as FDP's and MOL's public
  code do. This leaks test labels into model selection and inflates scores; it exists only to reproduce
  published numbers, must be asked for by name, and every table made under it carries ``protocol="test-peek"``
  (:func:`label_table`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from microface.data.datasets._common import natural_key

PROTOCOLS: tuple[str, ...] = ("fixed-epoch", "test-peek")
DEFAULT_PROTOCOL = "fixed-epoch"


@dataclass(frozen=True)
class Fold:
    """One LOSO fold: ``train_idx`` (N_train,) and ``test_idx`` (N_test,) index the clip list given to
    :func:`loso_folds`; every test clip belongs to ``test_subject`` and no train clip does."""

    test_subject: str
    train_idx: np.ndarray
    test_idx: np.ndarray


def loso_folds(subjects: Sequence[str]) -> list[Fold]:
    """One fold per distinct subject of ``subjects`` (N,) (one entry per clip), in natural subject order
    (``sub2`` before ``sub10``), so the order is the same on every run and machine.

    Index arrays are int64 and ascending. Raises ValueError for an empty list or fewer than 2 subjects
    (LOSO needs someone to train on).
    """
    subjects = np.asarray([str(s) for s in subjects], dtype=object)
    if subjects.size == 0:
        raise ValueError("loso_folds: expected at least one clip, got an empty subject list")
    distinct = sorted(set(subjects.tolist()), key=natural_key)
    if len(distinct) < 2:
        raise ValueError(f"loso_folds: expected clips from at least 2 subjects, found only {distinct}")
    folds = []
    for subject in distinct:
        test = subjects == subject
        folds.append(Fold(subject, np.flatnonzero(~test).astype(np.int64), np.flatnonzero(test).astype(np.int64)))
    check_folds(folds, subjects)
    return folds


def check_folds(folds: Sequence[Fold], subjects: Sequence[str]) -> None:
    """Raise ValueError unless no subject is ever on both sides of a fold, each fold's test set is exactly
    its subject's clips, and every clip is tested exactly once over all folds."""
    subjects = np.asarray([str(s) for s in subjects], dtype=object)
    tested = np.zeros(len(subjects), dtype=np.int64)
    for fold in folds:
        train_subjects = set(subjects[fold.train_idx].tolist())
        test_subjects = set(subjects[fold.test_idx].tolist())
        both = train_subjects & test_subjects
        if both:
            raise ValueError(f"fold {fold.test_subject}: subjects {sorted(both)} are in both train and test")
        if test_subjects != {fold.test_subject}:
            raise ValueError(f"fold {fold.test_subject}: test clips come from {sorted(test_subjects)}")
        if np.intersect1d(fold.train_idx, fold.test_idx).size:
            raise ValueError(f"fold {fold.test_subject}: a clip index is in both train and test")
        tested[fold.test_idx] += 1
    if not np.all(tested == 1):
        bad = np.flatnonzero(tested != 1)[:5]
        raise ValueError(f"every clip must be tested exactly once; clips {bad.tolist()} were tested {tested[bad].tolist()} times")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def select_epoch(protocol: str, *, fixed_epoch: int | None = None,
                 per_epoch_test_predictions: np.ndarray | None = None,
                 test_labels: np.ndarray | None = None) -> int:
    """The epoch (0-based) whose test predictions a fold reports, made explicit by ``protocol``.

    - "fixed-epoch": returns ``fixed_epoch`` (required); test predictions and labels are NOT consulted (if given,
      only their epoch count is used to check ``fixed_epoch`` is in range).
    - "test-peek": returns the epoch whose predictions ``per_epoch_test_predictions`` (E, N) best match
      ``test_labels`` (N,) by accuracy (ties -> the earliest epoch), as FDP's and MOL's code do.
    """
    check_protocol(protocol)
    preds = None if per_epoch_test_predictions is None else np.asarray(per_epoch_test_predictions)
    if preds is not None and preds.ndim != 2:
        raise ValueError(f"per_epoch_test_predictions: expected (E, N), got shape {preds.shape}")
    if protocol == "fixed-epoch":
        if fixed_epoch is None or int(fixed_epoch) != fixed_epoch or fixed_epoch < 0:
            raise ValueError(f"protocol 'fixed-epoch' needs fixed_epoch >= 0, got {fixed_epoch!r}")
        if preds is not None and fixed_epoch >= preds.shape[0]:
            raise ValueError(f"fixed_epoch {fixed_epoch} is out of range for {preds.shape[0]} epochs")
        return int(fixed_epoch)
    if preds is None or test_labels is None:
        raise ValueError("protocol 'test-peek' needs per_epoch_test_predictions (E, N) and test_labels (N,)")
    labels = np.asarray(test_labels)
    if labels.shape != (preds.shape[1],):
        raise ValueError(f"test_labels: expected ({preds.shape[1]},), got {labels.shape}")
    return int(np.argmax((preds == labels[None, :]).sum(axis=1)))


def label_table(df: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """A copy of ``df`` with a first column ``protocol`` so every results table says how epochs were chosen.
    Raises ValueError if ``df`` already carries a different protocol."""
    check_protocol(protocol)
    out = df.copy()
    if "protocol" in out.columns:
        found = set(out["protocol"].astype(str))
        if found != {protocol}:
            raise ValueError(f"table already labelled with protocol {sorted(found)}, asked to label it {protocol!r}")
        return out
    out.insert(0, "protocol", protocol)
    return out


def subject_split(subjects: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """(train, test) subjects: the last ``round(n * test_fraction)`` (at least 1) subjects by number are test.

    subjects: names like "sub01" (repeats allowed). Raises ValueError when no training subject would remain.
    """
    from microface.data.datasets._common import natural_key

    ordered = sorted(set(subjects), key=natural_key)
    n_test = max(1, int(round(len(ordered) * test_fraction)))
    if len(ordered) - n_test < 1:
        raise ValueError(f"subject split: {len(ordered)} subject(s) leave none for training with test_fraction "
                         f"{test_fraction}; generate more subjects (synth.subjects >= 2)")
    return ordered[:-n_test], ordered[-n_test:]


def split_label(train: list[str], test: list[str]) -> str:
    return f"test {', '.join(test)} (last {len(test)} of {len(train) + len(test)} subjects); train {', '.join(train)}"
