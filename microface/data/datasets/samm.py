"""SAMM (Davison et al. 2018): 32 subjects, 200 fps, 159 micro-expression clips.

Layout read (the real release):

- ``ROOT/SAMM_Micro_FACS_Codes_v2.xlsx``: 13 rows of notes on top, the header on sheet row 14 (read with
  ``header=13``): ``Subject, Filename, Inducement Code, Onset Frame, Apex Frame, Offset Frame, Duration,
  Micro, Action Units, Estimated Emotion, Objective Classes, Notes``.
- frames ``FRAMES/006/006_1_2/006_05562.jpg`` with FRAMES = ``ROOT`` or ``ROOT/SAMM`` (or ``frames_dir=``);
  the frame number is the digits after the last underscore, sorted numerically.

Quirks handled:

- ``Subject`` is read as an integer (6) while the folder is ``006``: formatted ``{:03d}``.
- Emotions are capitalised ("Anger", "Other"): stored lower case ("anger", "other").
- An apex cell that is empty, '/', '-' or negative is filled with the middle frame (``apex_source="middle"``).

Class maps (``class_map=``): ``"5class"``, the common SAMM 5-class protocol (136 clips): happiness,
surprise, anger, contempt, others (SAMM's "Other"). Disgust (9), fear (8) and sadness (6) are EXCLUDED,
not merged into others (that is how the 136-clip count comes out of 159), and counted in
``LoadReport.excluded``. ``"3class"`` is the MEGC 2019 map (negative = anger, contempt, disgust, fear,
sadness; positive = happiness; surprise).
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
    subject_number,
)

SHEET = "SAMM_Micro_FACS_Codes_v2.xlsx"
HEADER_ROW = 13  # 0-based: the header sits on sheet row 14, under the release notes
FRAME_CANDIDATES = (".", "SAMM")
SUBJECT_PATTERN = r"\d{3}"
COLUMNS = {
    "subject": "Subject",
    "filename": "Filename",
    "onset": "Onset Frame",
    "apex": "Apex Frame",
    "offset": "Offset Frame",
    "aus": "Action Units",
    "emotion": "Estimated Emotion",
}
EMOTIONS = ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other")

FIVE_CLASS_ORDER = ("happiness", "surprise", "anger", "contempt", "others")
CLASS_MAPS = {
    "5class": ClassMap(
        "5class", FIVE_CLASS_ORDER,
        {"happiness": "happiness", "surprise": "surprise", "anger": "anger", "contempt": "contempt", "other": "others"},
    ),
    "3class": ClassMap(
        "3class", ("negative", "positive", "surprise"),
        {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
         "sadness": "negative", "happiness": "positive", "surprise": "surprise"},
    ),
}


def _norm(name) -> str:
    return "".join(str(name).split()).lower()


def read_codes_sheet(path: Path) -> pd.DataFrame:
    """The SAMM codes sheet (header on row 14) renamed to ``subject, filename, onset, apex, offset, aus, emotion``."""
    try:
        raw = pd.read_excel(path, header=HEADER_ROW, dtype=object)
    except Exception as err:
        raise ValueError(
            f"cannot read SAMM codes sheet {path} with its header on sheet row {HEADER_ROW + 1} "
            f"(13 rows of release notes above it): {err}"
        ) from err
    by_norm = {_norm(c): c for c in raw.columns}
    missing = [h for h in COLUMNS.values() if _norm(h) not in by_norm]
    if missing:
        raise ValueError(
            f"{path}: expected SAMM headers {list(COLUMNS.values())} on sheet row {HEADER_ROW + 1}, missing {missing}; "
            f"found {list(raw.columns)[:12]}"
        )
    table = pd.DataFrame({ours: raw[by_norm[_norm(h)]].to_numpy(dtype=object) for ours, h in COLUMNS.items()})
    # trailing blank rows under the table are formatting, not clips
    return table[table["filename"].notna()].reset_index(drop=True)


def load_samm(root, *, frames_dir: str | Path | None = None, class_map: str | ClassMap | None = None,
              on_error: str = "raise", check_images: str = "endpoints",
              report: LoadReport | None = None) -> list[ClipRecord]:
    """Load SAMM from ``root`` (the folder holding ``SAMM_Micro_FACS_Codes_v2.xlsx``).

    Returns ClipRecords (dataset "samm", subject "006", clip_id "006_1_2"), sorted by subject then clip.
    ``class_map``: None, "5class" or "3class" (module docstring). ``on_error``: "raise" or "skip".
    """
    check_on_error(on_error)
    report = report if report is not None else LoadReport()
    root = check_root(root, "SAMM")
    report.dataset, report.root = report.dataset or "samm", report.root or str(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "SAMM")
    sheet = find_file(root, [SHEET], "SAMM codes sheet")
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "SAMM", frames_dir)
    records = []
    for row_no, row in enumerate(read_codes_sheet(sheet).itertuples(index=False), start=HEADER_ROW + 2):
        filename = str(row.filename).strip()
        label = f"samm/row{row_no}/{filename}"

        def make(row=row, filename=filename, label=label) -> ClipRecord:
            subject = f"{subject_number(row.subject, label):03d}"
            key = f"samm/{subject}/{filename}"
            onset, apex, offset = parse_timing(row, key, "the codes sheet")
            frames, numbers = list_frames(frames_root / subject / filename, key)
            aus, sides = parse_aus(row.aus)
            return build_record(
                dataset="samm", subject=subject, clip_id=filename, frames=frames, numbers=numbers, onset=onset,
                apex=apex, offset=offset, emotion=clean_text(row.emotion), aus=aus, au_sides=sides,
                check_images=check_images,
            )

        record = guarded(report, on_error, label, make)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (natural_key(r.subject), natural_key(r.clip_id)))
    return finish(report, apply_class_map(records, class_map, report))
