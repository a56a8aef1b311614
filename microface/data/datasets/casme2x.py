"""CAS(ME)^2 (Qu et al. 2018): 22 subjects, 30 fps long videos with 57 micro- and 300 macro-expressions.

Layout read:

- ``ROOT/CAS(ME)^2code_final.xlsx``, first sheet, HEADER-LESS columns in this order: participant, video,
  onset, apex, offset, AUs, emotion, type, self-report. ``type`` ("micro-expression" / "macro-expression")
  selects micro vs macro clips (``kind="micro" | "macro" | "all"``; rows of the other kind are counted in
  ``LoadReport.excluded``).
- frames (ASSUMED layout, documented because the release's folder names need its naming-rule sheets):
  ``FRAMES/s{PP}/{VIDEO}/img{N}.jpg`` where FRAMES is the first of ``ROOT/rawpic``, ``ROOT/rawpic_crop``,
  ``ROOT/selectedpic``, ``ROOT`` holding ``sNN`` folders (or ``frames_dir=``), PP is the participant number
  with 2 digits, and VIDEO is the sheet's video name without its expression index (``anger1_2`` ->
  ``anger1``). A folder whose name ends with ``_{VIDEO}`` (``15_anger1``) also matches. The real release names
  subject folders ``s15..s40`` and video folders like ``15_0101disgustingteeth``: pass
  ``subject_folders={participant: folder}`` and/or ``video_folders={video: folder}`` to map them.

Each row is a segment of a long video: frames are restricted to the numbers onset..offset (``restrict``),
so ``onset`` is index 0. ``clip_id`` is the sheet's video name (``anger1_2``), unique per participant.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import pandas as pd

from microface.data.clip import ClipRecord
from microface.data.datasets._common import (
    ClassMap,
    ClipError,
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

SHEET = "CAS(ME)^2code_final.xlsx"
FRAME_CANDIDATES = ("rawpic", "rawpic_crop", "selectedpic", ".")
SUBJECT_PATTERN = r"s\d+"
COLUMNS = ("participant", "video", "onset", "apex", "offset", "aus", "emotion", "type", "self_report")
KINDS = ("micro", "macro", "all")
CLASS_MAPS = {
    "4class": ClassMap(
        "4class", ("negative", "positive", "surprise", "others"),
        {"negative": "negative", "positive": "positive", "surprise": "surprise", "others": "others"},
    ),
}


def read_code_sheet(path: Path) -> pd.DataFrame:
    """The header-less code sheet with columns ``participant, video, onset, apex, offset, aus, emotion, type,
    self_report``. Raises ValueError when a sheet has fewer than 8 columns."""
    try:
        raw = pd.read_excel(path, header=None, dtype=object)
    except Exception as err:
        raise ValueError(f"cannot read CAS(ME)^2 code sheet {path}: {err}") from err
    if raw.shape[1] < 8:
        raise ValueError(f"{path}: expected the 9 header-less CAS(ME)^2 columns {COLUMNS}, found {raw.shape[1]} columns")
    raw = raw.iloc[:, : len(COLUMNS)]
    raw.columns = list(COLUMNS[: raw.shape[1]])
    if "self_report" not in raw:
        raw["self_report"] = None
    return raw[raw["video"].notna()].reset_index(drop=True)


def _video_folder(subject_dir: Path, video: str, key: str, video_folders: Mapping[str, str] | None) -> Path:
    stem = re.sub(r"_\d+$", "", video)
    if video_folders:
        name = video_folders.get(video, video_folders.get(stem))
        if name is not None:
            return subject_dir / name
    if not subject_dir.is_dir():
        raise ClipError(key, f"subject folder {subject_dir} does not exist")
    for cand in sorted(subject_dir.iterdir()):
        low = cand.name.lower()
        if cand.is_dir() and (low == stem.lower() or low.endswith("_" + stem.lower())):
            return cand
    raise ClipError(key, f"no video folder named {stem!r} (or '*_{stem}') in {subject_dir}; pass video_folders=")


def load_casme2x(root, *, kind: str = "micro", frames_dir: str | Path | None = None,
                 subject_folders: Mapping | None = None, video_folders: Mapping[str, str] | None = None,
                 class_map: str | ClassMap | None = None, on_error: str = "raise", check_images: str = "endpoints",
                 report: LoadReport | None = None) -> list[ClipRecord]:
    """Load CAS(ME)^2 from ``root``: ClipRecords (dataset "casme2x", subject "s15", kind micro/macro)."""
    check_on_error(on_error)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    report = report if report is not None else LoadReport()
    root = check_root(root, "CAS(ME)^2")
    report.dataset, report.root = report.dataset or "casme2x", report.root or str(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "CAS(ME)^2")
    sheet = find_file(root, [SHEET], "CAS(ME)^2 code sheet")
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "CAS(ME)^2", frames_dir)
    records = []
    for row_no, row in enumerate(read_code_sheet(sheet).itertuples(index=False), start=1):
        video = str(row.video).strip()
        row_kind = "macro" if "macro" in clean_text(row.type) else "micro" if "micro" in clean_text(row.type) else ""
        label = f"casme2x/row{row_no}/{video}"
        if kind != "all" and row_kind != kind:
            report.exclude(label, f"type {row.type!r} is not {kind}")
            continue

        def make(row=row, video=video, label=label, row_kind=row_kind) -> ClipRecord:
            if not row_kind:
                raise ClipError(label, f"type {row.type!r} is neither micro- nor macro-expression")
            number = subject_number(row.participant, label)
            folder = None
            if subject_folders:
                folder = subject_folders.get(number, subject_folders.get(str(row.participant).strip()))
            subject = folder or f"s{number:02d}"
            key = f"casme2x/{subject}/{video}"
            onset, apex, offset = parse_timing(row, key, "the code sheet")
            frames, numbers = list_frames(_video_folder(frames_root / subject, video, key, video_folders), key)
            aus, sides = parse_aus(row.aus)
            return build_record(
                dataset="casme2x", subject=subject, clip_id=video, frames=frames, numbers=numbers, onset=onset,
                apex=apex, offset=offset, emotion=clean_text(row.emotion), aus=aus, au_sides=sides, kind=row_kind,
                restrict=True, check_images=check_images,
            )

        record = guarded(report, on_error, label, make)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (natural_key(r.subject), natural_key(r.clip_id)))
    return finish(report, apply_class_map(records, class_map, report))
