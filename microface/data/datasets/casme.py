"""CASME (Yan et al. 2013): 19 subjects, 60 fps, 195 micro-expression clips in sections A and B.

Layout read:

- label sheet(s): every ``.xlsx`` / ``.xls`` in ``ROOT`` whose header holds ``Subject, Filename, OnsetF,
  ApexF1, ApexF2, OffsetF, Emotion, Action Units`` (the release codes sections A and B in separate sheets:
  all matching sheets are read and concatenated; ``sheets=`` names them explicitly). Reading ``.xls`` needs
  the ``xlrd`` package; without it, save the sheet as ``.xlsx``.
- frames ``FRAMES/sub01/EP01_5/<name><N>.jpg`` with FRAMES the first of ``ROOT``, ``ROOT/CASME_raw_selected``,
  ``ROOT/CASME_RAW_selected``, ``ROOT/Cropped`` holding ``subNN`` folders (or ``frames_dir=``).
  ASSUMPTION: the frame file names are not pinned here (``reg_EP01_5-1.jpg``, ``EP01_5-1.jpg``, ``img1.jpg``
  are all accepted). Any image whose stem ends in digits is a frame, and the frame number is those trailing
  digits, sorted numerically. OnsetF/OffsetF must be those same numbers.

Quirks handled:

- Two apex columns: ApexF1 is the apex; ApexF2 (a second peak, often empty) is ignored. A missing ApexF1
  ('/', '-' or empty) is filled with the middle frame (``apex_source="middle"``).
- ``Subject`` 1 -> folder ``sub01``.

Class maps: ``"4class"`` = the CASME 4-class set used in the literature (tense, disgust, repression,
surprise; others excluded and counted).
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

FRAME_CANDIDATES = (".", "CASME_raw_selected", "CASME_RAW_selected", "Cropped")
SUBJECT_PATTERN = r"sub\d+"
COLUMNS = {
    "subject": "Subject",
    "filename": "Filename",
    "onset": "OnsetF",
    "apex": "ApexF1",
    "apex2": "ApexF2",
    "offset": "OffsetF",
    "emotion": "Emotion",
    "aus": "Action Units",
}
EMOTIONS = ("amusement", "contempt", "disgust", "fear", "repression", "sadness", "surprise", "tense")
CLASS_MAPS = {
    "4class": ClassMap(
        "4class", ("tense", "disgust", "repression", "surprise"),
        {"tense": "tense", "disgust": "disgust", "repression": "repression", "surprise": "surprise"},
    ),
}


def _norm(name) -> str:
    return "".join(str(name).split()).lower()


def _read_sheet(path: Path) -> pd.DataFrame | None:
    """The sheet renamed to our columns, or None when its header is not CASME's."""
    try:
        raw = pd.read_excel(path, dtype=object)
    except ImportError as err:
        raise ImportError(f"reading {path} needs a package pandas lacks ({err}); save it as .xlsx or pip install xlrd") from err
    except Exception as err:
        raise ValueError(f"cannot read CASME label sheet {path}: {err}") from err
    by_norm = {_norm(c): c for c in raw.columns}
    if any(_norm(h) not in by_norm for h in COLUMNS.values()):
        return None
    table = pd.DataFrame({ours: raw[by_norm[_norm(h)]].to_numpy(dtype=object) for ours, h in COLUMNS.items()})
    table["sheet"] = path.name
    return table[table["filename"].notna()].reset_index(drop=True)


def read_label_sheets(root: Path, sheets: list[str] | None = None) -> pd.DataFrame:
    paths = [root / s for s in sheets] if sheets else sorted(
        p for p in root.iterdir() if p.suffix.lower() in (".xlsx", ".xls") and not p.name.startswith("~$")
    )
    tables = [t for t in (_read_sheet(p) for p in paths if p.is_file()) if t is not None]
    if not tables:
        raise FileNotFoundError(
            f"CASME: no label sheet with headers {list(COLUMNS.values())} in {root} "
            f"(spreadsheets there: {[p.name for p in paths]}); pass the folder holding the coding sheet or sheets=[...]"
        )
    return pd.concat(tables, ignore_index=True)


def load_casme(root, *, frames_dir: str | Path | None = None, sheets: list[str] | None = None,
               class_map: str | ClassMap | None = None, on_error: str = "raise", check_images: str = "endpoints",
               report: LoadReport | None = None) -> list[ClipRecord]:
    """Load CASME from ``root``: ClipRecords (dataset "casme", subject "sub01", clip_id "EP01_5")."""
    check_on_error(on_error)
    report = report if report is not None else LoadReport()
    root = check_root(root, "CASME")
    report.dataset, report.root = report.dataset or "casme", report.root or str(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "CASME")
    table = read_label_sheets(root, sheets)
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "CASME", frames_dir)
    records = []
    for row in table.itertuples(index=False):
        filename = str(row.filename).strip()
        label = f"casme/{row.sheet}/{filename}"

        def make(row=row, filename=filename, label=label) -> ClipRecord:
            subject = f"sub{subject_number(row.subject, label):02d}"
            key = f"casme/{subject}/{filename}"
            onset, apex, offset = parse_timing(row, key, str(row.sheet), ("OnsetF", "OffsetF"))
            frames, numbers = list_frames(frames_root / subject / filename, key)
            aus, sides = parse_aus(row.aus)
            return build_record(
                dataset="casme", subject=subject, clip_id=filename, frames=frames, numbers=numbers, onset=onset,
                apex=apex, offset=offset, emotion=clean_text(row.emotion), aus=aus, au_sides=sides,
                check_images=check_images,
            )

        record = guarded(report, on_error, label, make)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (natural_key(r.subject), natural_key(r.clip_id)))
    return finish(report, apply_class_map(records, class_map, report))
