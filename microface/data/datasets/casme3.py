"""CAS(ME)^3 part A (Li et al. 2022): 100 subjects, 30 fps, about 860 coded micro-expressions (+ macro).

Layout read:

- ``ROOT/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx``, sheet ``label``: ``Subject, Filename, Onset, Apex,
  Offset, AU, Objective class, emotion`` (Subject like ``spNO.1``, Filename the task video ``a``..``m``; the
  frame numbers are JPG indices, as the file name says).
- frames (ASSUMED layout): ``FRAMES/{Subject}/{Filename}/color/{N}.jpg``, falling back to
  ``FRAMES/{Subject}/{Filename}/{N}.jpg``, with FRAMES the first of ``ROOT``, ``ROOT/part_A``,
  ``ROOT/data/part_A``, ``ROOT/Part_A`` holding ``spNO.*`` folders (or ``frames_dir=``). The release also
  ships ``depth/`` beside ``color/``: only colour frames are read.

Each row is a segment of a task video: frames are restricted to onset..offset, and ``clip_id`` is
``{Filename}_{Onset}`` because one video holds several expressions.

Macro labels (``kind="macro"``): the macro-expression sheet of part A has the same columns; pass its file
name with ``sheet_file=`` (and ``sheet_name=``) and ``kind="macro"``.

Class maps: ``"7class"`` (the dataset's words), ``"4class"`` (negative = anger, disgust, fear, sad;
positive = happy; surprise; others), ``"3class"`` (the 4-class map without others).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from microface.data.clip import ClipRecord
from microface.data.datasets._common import (
    ClassMap,
    LoadReport,
    apply_class_map,
    build_record,
    check_on_error,
    check_root,
    clean_text,
    find_file,
    find_frames_root,
    finish,
    guarded,
    list_frames,
    natural_key,
    parse_aus,
    parse_timing,
    resolve_class_map,
)

SHEET = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
SHEET_NAME = "label"
FRAME_CANDIDATES = (".", "part_A", "data/part_A", "Part_A")
SUBJECT_PATTERN = r"spNO\.\d+"
COLUMNS = {
    "subject": "Subject",
    "filename": "Filename",
    "onset": "Onset",
    "apex": "Apex",
    "offset": "Offset",
    "aus": "AU",
    "objective": "Objective class",
    "emotion": "emotion",
}
EMOTIONS = ("happy", "disgust", "fear", "anger", "sad", "surprise", "others")
_NEGATIVE = {"anger": "negative", "disgust": "negative", "fear": "negative", "sad": "negative"}
CLASS_MAPS = {
    "7class": ClassMap("7class", EMOTIONS, {e: e for e in EMOTIONS}),
    "4class": ClassMap("4class", ("negative", "positive", "surprise", "others"),
                       {**_NEGATIVE, "happy": "positive", "surprise": "surprise", "others": "others"}),
    "3class": ClassMap("3class", ("negative", "positive", "surprise"),
                       {**_NEGATIVE, "happy": "positive", "surprise": "surprise"}),
}


def _norm(name) -> str:
    return "".join(str(name).split()).lower()


def read_label_sheet(path: Path, sheet_name: str = SHEET_NAME) -> pd.DataFrame:
    """The ``label`` sheet renamed to ``subject, filename, onset, apex, offset, aus, objective, emotion``."""
    try:
        raw = pd.read_excel(path, sheet_name=sheet_name, dtype=object)
    except ValueError as err:
        raise ValueError(f"{path}: no sheet {sheet_name!r} ({err}); CAS(ME)^3 labels live in sheet 'label'") from err
    except Exception as err:
        raise ValueError(f"cannot read CAS(ME)^3 label sheet {path}: {err}") from err
    by_norm = {_norm(c): c for c in raw.columns}
    missing = [h for h in COLUMNS.values() if _norm(h) not in by_norm]
    if missing:
        raise ValueError(f"{path}[{sheet_name}]: expected headers {list(COLUMNS.values())}, missing {missing}")
    table = pd.DataFrame({ours: raw[by_norm[_norm(h)]].to_numpy(dtype=object) for ours, h in COLUMNS.items()})
    return table[table["filename"].notna()].reset_index(drop=True)


def load_casme3(root, *, kind: str = "micro", sheet_file: str = SHEET, sheet_name: str = SHEET_NAME,
                frames_dir: str | Path | None = None, class_map: str | ClassMap | None = None,
                on_error: str = "raise", check_images: str = "endpoints",
                report: LoadReport | None = None) -> list[ClipRecord]:
    """Load CAS(ME)^3 part A from ``root``: ClipRecords (dataset "casme3", subject "spNO.1", clip_id "a_123")."""
    check_on_error(on_error)
    if kind not in ("micro", "macro"):
        raise ValueError(f"kind must be 'micro' or 'macro', got {kind!r}")
    report = report if report is not None else LoadReport()
    root = check_root(root, "CAS(ME)^3")
    report.dataset, report.root = report.dataset or "casme3", report.root or str(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "CAS(ME)^3")
    sheet = find_file(root, [sheet_file], "CAS(ME)^3 part A label sheet")
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "CAS(ME)^3", frames_dir)
    records = []
    for row_no, row in enumerate(read_label_sheet(sheet, sheet_name).itertuples(index=False), start=2):
        subject = str(row.subject).strip()
        filename = str(row.filename).strip()
        label = f"casme3/row{row_no}/{subject}/{filename}"

        def make(row=row, subject=subject, filename=filename, label=label) -> ClipRecord:
            onset, apex, offset = parse_timing(row, label, "the label sheet", ("Onset", "Offset"))
            clip_id = f"{filename}_{onset}"
            key = f"casme3/{subject}/{clip_id}"
            video = frames_root / subject / filename
            frames, numbers = list_frames(video / "color" if (video / "color").is_dir() else video, key)
            aus, sides = parse_aus(row.aus)
            return build_record(
                dataset="casme3", subject=subject, clip_id=clip_id, frames=frames, numbers=numbers, onset=onset,
                apex=apex, offset=offset, emotion=clean_text(row.emotion), aus=aus, au_sides=sides, kind=kind,
                restrict=True, check_images=check_images,
            )

        record = guarded(report, on_error, label, make)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (natural_key(r.subject), natural_key(r.clip_id)))
    return finish(report, apply_class_map(records, class_map, report))
