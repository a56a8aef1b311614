"""BP4D-Spontaneous (Zhang et al. 2014) as a MACRO-expression source for DEM pretraining.

41 subjects (F001..F023, M001..M018) x 8 tasks (T1..T8), 25 fps, frame-level AU occurrence coding.

Layout read:

- AU occurrence CSVs ``AU_DIR/F001_T1.csv`` with AU_DIR the first of ``ROOT/AUCoding/AU_OCC``,
  ``ROOT/AU_OCC``, ``ROOT`` holding such files. The first column is the frame number, the others are AU
  numbers (header ``1, 2, 4, ...``) holding 1 (present), 0 (absent) or 9 (not coded; read as absent).
- frames (ASSUMED layout): ``FRAMES/F001/T1/{N}.jpg`` (``0012.jpg`` etc., any stem ending in the frame number)
  with FRAMES the first of ``ROOT/Sequences``, ``ROOT/2D``, ``ROOT`` holding ``F001``-like folders
  (or ``frames_dir=``).

One clip per (subject, task): the AU-coded span is the clip (onset = first coded frame, offset = last coded
frame, restricted to frames on disk in that span). BP4D codes no apex: apex is the coded frame with the most
active AUs (ties -> earliest), ``apex_source="max_au_count"``, and ``aus`` are the AUs active there.
Emotion by task (:data:`TASK_EMOTIONS`): T1 happiness, T2 sadness, T3 surprise, T4 embarrassment, T5 fear,
T6 pain, T7 anger, T8 disgust. ``kind="macro"``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from microface.data.clip import ClipRecord
from microface.data.datasets._common import (
    ClipError,
    LoadReport,
    build_record,
    check_on_error,
    check_root,
    find_frames_root,
    finish,
    guarded,
    list_frames,
    natural_key,
)

TASK_EMOTIONS = {
    "T1": "happiness", "T2": "sadness", "T3": "surprise", "T4": "embarrassment",
    "T5": "fear", "T6": "pain", "T7": "anger", "T8": "disgust",
}
AU_CANDIDATES = ("AUCoding/AU_OCC", "AU_OCC", ".")
FRAME_CANDIDATES = ("Sequences", "2D", ".")
SUBJECT_PATTERN = r"[FM]\d{3}"
_CSV_NAME = re.compile(r"(?P<subject>[FM]\d{3})_(?P<task>T\d)\.csv", re.IGNORECASE)


def _au_dir(root: Path) -> Path:
    for cand in AU_CANDIDATES:
        base = root / cand
        if base.is_dir() and any(_CSV_NAME.fullmatch(p.name) for p in base.iterdir()):
            return base
    raise FileNotFoundError(
        f"BP4D: no AU occurrence CSV like F001_T1.csv under {root} (looked in {list(AU_CANDIDATES)}); "
        f"pass the BP4D root holding AUCoding/AU_OCC"
    )


def read_au_occ(path: Path, clip: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(frame numbers (N,), AU codes (A,), occurrence (N, A) bool) of one AU_OCC CSV; 9 (not coded) -> False."""
    try:
        table = pd.read_csv(path)
    except Exception as err:
        raise ClipError(clip, f"cannot read AU CSV {path}: {err}") from None
    if table.shape[1] < 2 or len(table) == 0:
        raise ClipError(clip, f"{path}: expected a frame column and AU columns with rows, found shape {table.shape}")
    frames = pd.to_numeric(table.iloc[:, 0], errors="coerce")
    if frames.isna().any():
        raise ClipError(clip, f"{path}: first column must hold frame numbers")
    aus = [str(c).strip() for c in table.columns[1:]]
    occ = table.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() == 1
    return frames.to_numpy(dtype=np.int64), aus, occ


def load_bp4d(root, *, frames_dir: str | Path | None = None, tasks: tuple[str, ...] | None = None,
              on_error: str = "raise", check_images: str = "endpoints",
              report: LoadReport | None = None) -> list[ClipRecord]:
    """Load BP4D task clips from ``root``: ClipRecords (dataset "bp4d", subject "F001", clip_id "T1", kind "macro").

    ``tasks`` keeps only those tasks (e.g. ("T1", "T3")); the rest are counted in ``report.excluded``.
    """
    check_on_error(on_error)
    report = report if report is not None else LoadReport()
    root = check_root(root, "BP4D")
    report.dataset, report.root = report.dataset or "bp4d", report.root or str(root)
    au_dir = _au_dir(root)
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "BP4D", frames_dir)
    csvs = sorted((p for p in au_dir.iterdir() if _CSV_NAME.fullmatch(p.name)), key=lambda p: natural_key(p.name))
    records = []
    for csv in csvs:
        match = _CSV_NAME.fullmatch(csv.name)
        subject, task = match.group("subject").upper(), match.group("task").upper()
        key = f"bp4d/{subject}/{task}"
        if tasks is not None and task not in tasks:
            report.exclude(key, f"task {task} not in {tasks}")
            continue

        def make(csv=csv, subject=subject, task=task, key=key) -> ClipRecord:
            if task not in TASK_EMOTIONS:
                raise ClipError(key, f"task {task} is not one of {sorted(TASK_EMOTIONS)}")
            coded, au_names, occ = read_au_occ(csv, key)
            frames, numbers = list_frames(frames_root / subject / task, key)
            on_disk = np.isin(coded, numbers)
            if not on_disk.any():
                raise ClipError(key, f"none of the AU-coded frames {coded.min()}..{coded.max()} exist in "
                                     f"{frames_root / subject / task} (frames there: {numbers[0]}..{numbers[-1]})")
            coded, occ = coded[on_disk], occ[on_disk]
            best = int(np.argmax(occ.sum(axis=1)))  # argmax: earliest on ties
            record = build_record(
                dataset="bp4d", subject=subject, clip_id=task, frames=frames, numbers=numbers,
                onset=int(coded.min()), apex=int(coded[best]), offset=int(coded.max()), emotion=TASK_EMOTIONS[task],
                aus=[a for a, on in zip(au_names, occ[best]) if on], au_sides=[""] * int(occ[best].sum()),
                kind="macro", restrict=True, check_images=check_images,
            )
            record.apex_source = "max_au_count"
            return record

        record = guarded(report, on_error, key, make)
        if record is not None:
            records.append(record)
    return finish(report, records)
