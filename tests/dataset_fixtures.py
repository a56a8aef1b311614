"""Tiny datasets in each REAL layout, written at test time (8x8 JPEG frames, spreadsheets with the real headers
and quirks). Each ``make_*`` returns the root and a dict of facts the tests check against.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from openpyxl import Workbook


def write_frames(folder: Path, numbers, name) -> list[Path]:
    """8x8 JPEGs ``folder/name(n)`` for each frame number; each frame's grey level encodes its number."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in numbers:
        path = folder / name(n)
        image = np.full((8, 8, 3), (n * 7) % 256, dtype=np.uint8)
        if not cv2.imwrite(str(path), image):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths


def write_sheet(path: Path, rows, sheet_title: str | None = None, extra_sheets: dict | None = None) -> Path:
    """An .xlsx whose first sheet holds ``rows`` exactly as given (None = empty cell), via openpyxl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wb = Workbook()
    ws = wb.active
    if sheet_title:
        ws.title = sheet_title
    for row in rows:
        ws.append(list(row))
    for title, extra in (extra_sheets or {}).items():
        other = wb.create_sheet(title)
        for row in extra:
            other.append(list(row))
    wb.save(path)
    return path


CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                 "Estimated Emotion"]
# (subject int, filename, onset, apex ('/' = the real quirk), offset, AUs, emotion)
CASME2_ROWS = [
    (1, "EP02_01f", 8, 10, 12, "L10+R12", "happiness"),
    (1, "EP03_02", 46, "/", 52, "4+7", "disgust"),
    (2, "EP01_11f", 1, 3, 5, "R4", "fear"),
    (2, "EP05_03", 100, 101, 104, "12", "others"),
    (10, "EP09_01", 1, 2, 4, "1+2", "surprise"),
    (10, "EP13_04", 20, 22, 24, 14, "repression"),
    (10, "EP15_05", 30, 31, 33, "15", "sadness"),
]


def make_casme2(root: Path, frames: str = ".", prefix: str = "img", rows=CASME2_ROWS,
                sheet_name: str = "CASME2-coding-20140508.xlsx") -> Path:
    """CASME II: coding sheet at root (two unnamed columns), frames ``frames/subNN/Filename/{prefix}N.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    table = [CASME2_HEADER]
    for subject, filename, onset, apex, offset, aus, emotion in rows:
        table.append([subject, filename, None, onset, apex, offset, None, aus, emotion])
        write_frames(root / frames / f"sub{subject:02d}" / filename, range(onset, offset + 1), lambda n: f"{prefix}{n}.jpg")
    write_sheet(root / sheet_name, table)
    return root


SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
               "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
SAMM_ROWS = [  # subject, filename, onset, apex, offset, AUs, emotion
    (6, "006_1_2", 5562, 5564, 5566, "R14A", "Anger"),
    (6, "006_1_5", 6000, 6002, 6004, "9+10", "Disgust"),
    (7, "007_3_1", 998, 1001, 1003, "12B+L2", "Happiness"),
    (11, "011_2_1", 40, 41, 43, "1+2", "Surprise"),
    (11, "011_2_4", 70, 72, 73, "4", "Other"),
    (20, "020_5_1", 10, 11, 12, "R12+R14", "Contempt"),
]


def make_samm(root: Path, rows=SAMM_ROWS) -> Path:
    """SAMM: 13 rows of release notes, header on sheet row 14, frames ``006/006_1_2/006_05562.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    notes = [["SAMM Micro-Movement Database"], ["FACS codes v2"]] + [[None]] * 10 + [["Coder notes below"]]
    assert len(notes) == 13
    table = notes + [SAMM_HEADER]
    for subject, filename, onset, apex, offset, aus, emotion in rows:
        table.append([subject, filename, 1, onset, apex, offset, offset - onset + 1, "Micro - 1/2", aus, emotion, "I", None])
        sub = f"{subject:03d}"
        write_frames(root / sub / filename, range(onset, offset + 1), lambda n, sub=sub: f"{sub}_{n:05d}.jpg")
    write_sheet(root / "SAMM_Micro_FACS_Codes_v2.xlsx", table)
    return root


CASME_HEADER = ["Subject", "Filename", "OnsetF", "ApexF1", "ApexF2", "OffsetF", "Emotion", "Action Units"]
CASME_ROWS = [  # subject, filename, onset, apex1, offset, emotion, AUs
    (1, "EP01_5", 1, 4, 9, "tense", "4"),
    (1, "EP03_2", 10, "/", 14, "surprise", "1+2"),
    (3, "EP08_1", 5, 6, 11, "disgust", "L9"),
]


def make_casme(root: Path) -> Path:
    """CASME: section sheet with OnsetF/ApexF1/ApexF2/OffsetF; frames ``subNN/EP01_5/reg_EP01_5-N.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    table = [CASME_HEADER]
    for subject, filename, onset, apex, offset, emotion, aus in CASME_ROWS:
        table.append([subject, filename, onset, apex, None, offset, emotion, aus])
        write_frames(root / f"sub{subject:02d}" / filename, range(onset, offset + 1),
                     lambda n, f=filename: f"reg_{f}-{n}.jpg")
    write_sheet(root / "CASME_A_Section_coding.xlsx", table)
    return root


SMIC_CLIPS = [  # subject folder, class folder, clip, first frame, count
    ("s01", "negative", "s1_ne_01", 106720, 5),
    ("s01", "positive", "s1_po_02", 9, 4),  # image000009 .. image000012: 10 after 9
    ("s02", "surprise", "s2_sur_01", 500, 7),
    ("s03", "negative", "s3_ne_03", 20, 3),
]


def make_smic(root: Path) -> Path:
    """SMIC-HS: ``HS/s01/micro/negative/s1_ne_01/image106720.jpg`` (no spreadsheet)."""
    for subject, emotion, clip, first, count in SMIC_CLIPS:
        write_frames(root / "HS" / subject / "micro" / emotion / clip, range(first, first + count),
                     lambda n: f"image{n:06d}.jpg")
    return root


CASME2X_ROWS = [  # participant, video, onset, apex, offset, AUs, emotion, type, self-report
    (15, "anger1_1", 3, 5, 8, "4+7", "negative", "micro-expression", "anger"),
    (15, "anger1_2", 10, 12, 15, "12", "positive", "macro-expression", "happy"),
    (16, "happy2_1", 2, 4, 6, "6+12", "positive", "micro-expression", "happy"),
]


def make_casme2x(root: Path) -> Path:
    """CAS(ME)^2: header-less code sheet; long videos ``rawpic/s15/anger1/imgN.jpg`` and ``rawpic/s16/16_happy2``."""
    write_frames(root / "rawpic" / "s15" / "anger1", range(1, 21), lambda n: f"img{n}.jpg")
    write_frames(root / "rawpic" / "s16" / "16_happy2", range(1, 11), lambda n: f"img{n}.jpg")
    write_sheet(root / "CAS(ME)^2code_final.xlsx", [list(r) for r in CASME2X_ROWS],
                extra_sheets={"naming rule1": [["anger1", "0401"]]})
    return root


CASME3_HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
CASME3_ROWS = [
    ("spNO.1", "a", 2, 4, 6, "4+7", 1, "disgust"),
    ("spNO.1", "a", 10, 12, 14, "12", 2, "happy"),
    ("spNO.2", "b", 3, 3, 5, "1+2", 3, "surprise"),
]


def make_casme3(root: Path) -> Path:
    """CAS(ME)^3 part A: sheet ``label``; frames ``part_A/spNO.1/a/color/N.jpg``."""
    write_frames(root / "part_A" / "spNO.1" / "a" / "color", range(0, 20), lambda n: f"{n}.jpg")
    write_frames(root / "part_A" / "spNO.2" / "b" / "color", range(0, 8), lambda n: f"{n}.jpg")
    write_sheet(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", [CASME3_HEADER] + [list(r) for r in CASME3_ROWS],
                sheet_title="label")
    return root


def make_bp4d(root: Path) -> Path:
    """BP4D: ``AUCoding/AU_OCC/F001_T1.csv`` (frame + AU columns, 9 = not coded), frames ``Sequences/F001/T1/NNNN.jpg``."""
    occ = root / "AUCoding" / "AU_OCC"
    occ.mkdir(parents=True, exist_ok=True)
    # frames 3..8 coded; frame 6 has most AUs (1, 2, 12); a 9 (not coded) must not count as active
    lines = ["0,1,2,4,12", "3,0,0,0,0", "4,1,0,0,0", "5,1,0,9,1", "6,1,1,0,1", "7,0,1,0,0", "8,0,0,0,0"]
    (occ / "F001_T1.csv").write_text("\n".join(lines) + "\n")
    (occ / "M002_T8.csv").write_text("0,1,4\n10,0,1\n11,1,1\n12,0,0\n")
    write_frames(root / "Sequences" / "F001" / "T1", range(0, 12), lambda n: f"{n:04d}.jpg")
    write_frames(root / "Sequences" / "M002" / "T8", range(10, 13), lambda n: f"{n:04d}.jpg")
    return root


SYNTH_MICRO = [(1, "EP01_01", 1, 3, 6, "12", "happiness"), (1, "EP01_02", 1, "/", 5, "4", "sadness"),
               (2, "EP02_01", 1, 2, 4, "1+2", "surprise")]
SYNTH_MACRO = [(1, "MA01_01", 1, 4, 8, "6+12", "happiness"), (2, "MA02_01", 1, 3, 5, "9", "disgust")]


def make_synth(root: Path) -> Path:
    """The synthetic benchmark in CASME II's layout + macro/ + ground_truth/ + synth_manifest.json."""
    make_casme2(root, rows=SYNTH_MICRO)
    make_casme2(root / "macro", rows=SYNTH_MACRO)
    for rows, gt in ((SYNTH_MICRO, root / "ground_truth"), (SYNTH_MACRO, root / "ground_truth" / "macro")):
        for subject, clip, *_ in rows:
            path = gt / f"sub{subject:02d}" / f"{clip}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, vertices=np.zeros((2, 3, 3), np.float32))
    (root / "synth_manifest.json").write_text(json.dumps({"format": "microface-synth", "version": 1, "seed": 0}))
    return root


def make_megc2019(root: Path) -> Path:
    """Umbrella root with CASME2/, SAMM/, SMIC/ in their real layouts."""
    make_casme2(root / "CASME2")
    make_samm(root / "SAMM")
    make_smic(root / "SMIC")
    return root
