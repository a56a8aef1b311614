"""CASME II (Yan et al. 2014): 26 subjects, 200 fps, 255 coded micro-expression clips.

Layout read (the real release):

- ``ROOT/CASME2-coding-20140508.xlsx``, columns ``Subject, Filename, (unnamed), OnsetFrame, ApexFrame,
  OffsetFrame, (unnamed), Action Units, Estimated Emotion``. Columns are found by name (case and spaces
  ignored), so the two unnamed columns are simply not read.
- frames ``FRAMES/sub01/EP02_01f/img46.jpg`` where FRAMES is the first of ``ROOT``,
  ``ROOT/CASME2_RAW_selected``, ``ROOT/CASME2_RAW_selected/CASME2_RAW_selected``, ``ROOT/Cropped``,
  ``ROOT/CASME2_RAW`` that holds ``subNN`` folders (or ``frames_dir=``). The cropped release names frames
  ``reg_img46.jpg``: any file whose stem ends in the frame number is accepted, and frames are sorted by that
  number (``img10`` after ``img9``).

Quirks handled:

- ``Subject`` is an integer (1) while the folder is ``sub01``: formatted ``sub{:02d}``.
- 21 rows have ApexFrame ``/`` (no apex coded): apex is filled with the frame in the middle of onset and
  offset (frame number ``(onset + offset) // 2``, nearest existing frame) and ``apex_source="middle"``.
- Action Units like ``L10+R12`` are split into codes and sides (``aus=['10','12']``, ``au_sides=['L','R']``).

Class maps (``class_map=``): ``"5class"``, the usual 5-class protocol (happiness, surprise, disgust,
repression, others). The coding file also has fear (2 clips) and sadness (7 clips). Public 5-class code
keeps only those five emotion words (e.g. ``valid_classes = [happiness, repression, disgust, surprise,
others]``), and the published 5-class counts (about 246-247 clips, with others at about 99) do not include
fear or sadness. So ``"5class"`` EXCLUDES fear and sadness (counted in ``LoadReport.excluded``).
``"5class-merge"`` puts them in others instead, for studies that keep all 255 clips. ``"3class"`` is the
MEGC 2019 map (negative = disgust + repression, positive = happiness, surprise; others, fear and sadness are
excluded).
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

SHEET = "CASME2-coding-20140508.xlsx"
FRAME_CANDIDATES = (".", "CASME2_RAW_selected", "CASME2_RAW_selected/CASME2_RAW_selected", "Cropped", "CASME2_RAW")
SUBJECT_PATTERN = r"sub\d+"
COLUMNS = {  # our name -> header in the sheet
    "subject": "Subject",
    "filename": "Filename",
    "onset": "OnsetFrame",
    "apex": "ApexFrame",
    "offset": "OffsetFrame",
    "aus": "Action Units",
    "emotion": "Estimated Emotion",
}
EMOTIONS = ("happiness", "surprise", "disgust", "repression", "others", "fear", "sadness")

FIVE_CLASS_ORDER = ("happiness", "surprise", "disgust", "repression", "others")
CLASS_MAPS = {
    "5class": ClassMap("5class", FIVE_CLASS_ORDER, {c: c for c in FIVE_CLASS_ORDER}),
    "5class-merge": ClassMap(
        "5class-merge", FIVE_CLASS_ORDER, {**{c: c for c in FIVE_CLASS_ORDER}, "fear": "others", "sadness": "others"}
    ),
    "3class": ClassMap(
        "3class", ("negative", "positive", "surprise"),
        {"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise"},
    ),
}


def _norm(name) -> str:
    return "".join(str(name).split()).lower()


def read_coding_sheet(path: Path) -> pd.DataFrame:
    """The CASME II coding sheet with columns renamed to ``subject, filename, onset, apex, offset, aus, emotion``.

    Cells are kept as read (object dtype) so the '/' apex survives to :func:`clip_records`.
    Raises ValueError naming the file and the missing headers.
    """
    try:
        raw = pd.read_excel(path, dtype=object)
    except Exception as err:  # openpyxl raises many types for a broken file
        raise ValueError(f"cannot read CASME II coding sheet {path}: {err}") from err
    by_norm = {_norm(c): c for c in raw.columns}
    missing = [header for header in COLUMNS.values() if _norm(header) not in by_norm]
    if missing:
        raise ValueError(
            f"{path}: expected CASME II headers {list(COLUMNS.values())}, missing {missing}; found {list(raw.columns)}"
        )
    return pd.DataFrame({ours: raw[by_norm[_norm(header)]].to_numpy(dtype=object) for ours, header in COLUMNS.items()})


def clip_records(table: pd.DataFrame, frames_root: Path, *, dataset: str = "casme2", kind: str = "micro",
                 on_error: str = "raise", check_images: str = "endpoints", report: LoadReport) -> list[ClipRecord]:
    """One ClipRecord per row of a table from :func:`read_coding_sheet`, frames under ``frames_root/subNN/Filename``.

    Shared by the CASME II and synthetic-benchmark loaders (same layout).
    """
    records = []
    for row_no, row in enumerate(table.itertuples(index=False), start=2):  # sheet row numbers, header is row 1
        filename = str(row.filename).strip()
        label = f"{dataset}/row{row_no}/{filename}"

        def make(row=row, filename=filename, label=label) -> ClipRecord:
            subject = f"sub{subject_number(row.subject, label):02d}"
            key = f"{dataset}/{subject}/{filename}"
            onset, apex, offset = parse_timing(row, key, "the coding sheet")
            frames, numbers = list_frames(frames_root / subject / filename, key)
            aus, sides = parse_aus(row.aus)
            return build_record(
                dataset=dataset, subject=subject, clip_id=filename, frames=frames, numbers=numbers,
                onset=onset, apex=apex, offset=offset, emotion=clean_text(row.emotion), aus=aus, au_sides=sides,
                kind=kind, check_images=check_images,
            )

        record = guarded(report, on_error, label, make)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (natural_key(r.subject), natural_key(r.clip_id)))
    return records


def load_casme2(root, *, frames_dir: str | Path | None = None, class_map: str | ClassMap | None = None,
                on_error: str = "raise", check_images: str = "endpoints",
                report: LoadReport | None = None) -> list[ClipRecord]:
    """Load CASME II from ``root`` (the folder holding ``CASME2-coding-20140508.xlsx``).

    Returns one ClipRecord per coded clip (dataset "casme2", kind "micro"), sorted by subject then clip.
    ``class_map``: None (label left None), "5class", "5class-merge" or "3class" (see module docstring).
    ``on_error``: "raise" (default) or "skip" (bad rows counted in ``report.skipped`` and warned about).
    """
    check_on_error(on_error)
    report = report if report is not None else LoadReport()
    root = check_root(root, "CASME II")
    report.dataset, report.root = report.dataset or "casme2", report.root or str(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "CASME II")
    sheet = find_file(root, [SHEET], "CASME II coding sheet")
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "CASME II", frames_dir)
    records = clip_records(read_coding_sheet(sheet), frames_root, on_error=on_error,
                           check_images=check_images, report=report)
    return finish(report, apply_class_map(records, class_map, report))

