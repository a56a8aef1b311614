"""SMIC-HS (Li et al. 2013): 16 subjects, 100 fps, 164 micro-expression clips in 3 classes.

Layout read (the real release, no spreadsheet needed):
``FRAMES/s{NN}/micro/{negative,positive,surprise}/{clip}/image{NNNNNN}.jpg`` with FRAMES the first of
``ROOT``, ``ROOT/HS``, ``ROOT/SMIC-HS``, ``ROOT/SMIC_all_raw/HS`` holding ``sN`` folders (or
``frames_dir=``). ``.bmp`` frames are accepted too. Only the ``micro`` folder is read (``non_micro`` clips are
not expressions).

Quirks handled:

- The class is the folder name (``emotion`` = ``label`` = negative / positive / surprise).
- SMIC-HS codes no onset, apex or offset: onset = first frame, offset = last frame, apex = the middle frame
  (``apex_source="middle"``), as is usual for SMIC.
- Subject ids are kept as their folder names (``s1`` or ``s01``) so they match the release.
"""
from __future__ import annotations

import re
from pathlib import Path

from microface.data.clip import ClipRecord
from microface.data.datasets._common import (
    ClassMap,
    ClipError,
    LoadReport,
    apply_class_map,
    build_record,
    check_on_error,
    check_root,
    find_frames_root,
    finish,
    guarded,
    list_frames,
    natural_key,
    resolve_class_map,
)

FRAME_CANDIDATES = (".", "HS", "SMIC-HS", "SMIC_all_raw/HS")
SUBJECT_PATTERN = r"s\d+"
CLASSES = ("negative", "positive", "surprise")
CLASS_MAPS = {"3class": ClassMap("3class", CLASSES, {c: c for c in CLASSES})}


def load_smic(root, *, frames_dir: str | Path | None = None, class_map: str | ClassMap | None = "3class",
              on_error: str = "raise", check_images: str = "endpoints",
              report: LoadReport | None = None) -> list[ClipRecord]:
    """Load SMIC-HS from ``root``: ClipRecords (dataset "smic", subject "s1", clip_id the clip folder name).

    ``class_map`` defaults to "3class" (the folder classes; label = emotion); None leaves label None.
    An emotion folder other than negative / positive / surprise is a ClipError (or a counted skip).
    """
    check_on_error(on_error)
    report = report if report is not None else LoadReport()
    root = check_root(root, "SMIC-HS")
    report.dataset, report.root = report.dataset or "smic", report.root or str(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "SMIC-HS")
    frames_root = find_frames_root(root, FRAME_CANDIDATES, SUBJECT_PATTERN, "SMIC-HS", frames_dir)
    subject_re = re.compile(SUBJECT_PATTERN, re.IGNORECASE)
    records = []
    for subject_dir in sorted((p for p in frames_root.iterdir() if p.is_dir() and subject_re.fullmatch(p.name)),
                              key=lambda p: natural_key(p.name)):
        micro = subject_dir / "micro"
        if not micro.is_dir():
            # a subject folder without micro/ is reported, never passed over silently
            guarded(report, on_error, f"smic/{subject_dir.name}",
                    lambda d=subject_dir: _raise(f"smic/{d.name}", f"no micro/ folder in {d}"))
            continue
        for emotion_dir in sorted((p for p in micro.iterdir() if p.is_dir()), key=lambda p: p.name):
            for clip_dir in sorted((p for p in emotion_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
                key = f"smic/{subject_dir.name}/{clip_dir.name}"

                def make(clip_dir=clip_dir, emotion_dir=emotion_dir, subject=subject_dir.name, key=key) -> ClipRecord:
                    emotion = emotion_dir.name.lower()
                    if emotion not in CLASSES:
                        raise ClipError(key, f"class folder {emotion_dir.name!r} is not one of {CLASSES}")
                    frames, numbers = list_frames(clip_dir, key)
                    return build_record(
                        dataset="smic", subject=subject, clip_id=clip_dir.name, frames=frames, numbers=numbers,
                        onset=None, apex=None, offset=None, emotion=emotion, check_images=check_images,
                    )

                record = guarded(report, on_error, key, make)
                if record is not None:
                    records.append(record)
    return finish(report, apply_class_map(records, class_map, report))


def _raise(clip: str, message: str):
    raise ClipError(clip, message)
