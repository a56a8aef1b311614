"""Shared machinery of the dataset loaders: frame listing, number parsing, error policy, class maps.

Every loader turns one spreadsheet row (or one folder) into a :class:`~microface.data.clip.ClipRecord`
through :func:`build_record`, which owns the checks (frames present, onset <= apex <= offset, images
readable) so that every dataset fails, or skips, the same way. A row problem raises :class:`ClipError`
naming the clip; with ``on_error="skip"`` the row is counted in a :class:`LoadReport` and logged instead,
so no row is ever dropped silently.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from microface.data.clip import ClipRecord

logger = logging.getLogger("microface.data.datasets")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
ON_ERROR = ("raise", "skip")
IMAGE_CHECKS = ("none", "endpoints", "all")

_TRAILING_INT = re.compile(r"(\d+)$")
_AU_TOKEN = re.compile(r"^(?:AU)?\s*(?P<side>[LRBTU])?\s*(?P<code>\d+)(?P<rest>.*)$", re.IGNORECASE)


class ClipError(ValueError):
    """A problem with one clip (one spreadsheet row or one folder). ``clip`` names it."""

    def __init__(self, clip: str, message: str):
        super().__init__(f"{clip}: {message}")
        self.clip = clip
        self.reason = message


@dataclass
class LoadReport:
    """What a loader did: rows seen, clips loaded, rows skipped (``on_error="skip"``) and clips excluded by a
    filter the caller chose (class map, kind, task), each with its clip name and reason. Pass one to a loader to receive it; loaders also log a
    warning with the counts whenever something was skipped."""

    dataset: str = ""
    root: str = ""
    rows: int = 0
    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, clip: str, reason: str) -> None:
        self.skipped.append((clip, reason))
        logger.warning("skipped %s: %s", clip, reason)

    def exclude(self, clip: str, reason: str) -> None:
        self.excluded.append((clip, reason))

    def summary(self) -> str:
        return (
            f"{self.dataset} at {self.root}: {self.rows} rows, {self.loaded} clips loaded, "
            f"{len(self.skipped)} skipped (errors), {len(self.excluded)} excluded (class map / kind / task filter)"
        )


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


def guarded(report: LoadReport, on_error: str, clip: str, make: Callable[[], ClipRecord | None]) -> ClipRecord | None:
    """Run ``make()`` for one row: re-raise its :class:`ClipError` (``on_error="raise"``) or count it as a skip."""
    report.rows += 1
    try:
        record = make()
    except ClipError as err:
        if on_error == "raise":
            raise
        report.skip(err.clip, err.reason)
        return None
    if record is not None:
        report.loaded += 1
    return record


def finish(report: LoadReport, records: list[ClipRecord]) -> list[ClipRecord]:
    """Log the report and warn with the skip count, so a skip is never silent."""
    logger.info(report.summary())
    if report.skipped:
        warnings.warn(
            f"{report.dataset}: skipped {len(report.skipped)} of {report.rows} rows "
            f"(first: {report.skipped[0][0]}: {report.skipped[0][1]}); see LoadReport.skipped",
            stacklevel=3,
        )
    return records


def natural_key(text: str) -> tuple:
    """Sort key putting ``sub2`` before ``sub10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text)))


def frame_number(path: Path) -> int | None:
    """The frame number at the end of a file's stem (``img46`` -> 46, ``006_05562`` -> 5562), else None."""
    match = _TRAILING_INT.search(Path(path).stem)
    return int(match.group(1)) if match else None


def list_frames(clip_dir: Path, clip: str) -> tuple[list[Path], list[int]]:
    """Image files of a clip folder sorted NUMERICALLY by their frame number.

    Returns (paths (T,), numbers (T,)). Raises ClipError if the folder is missing, holds no numbered image,
    or two files share a frame number.
    """
    clip_dir = Path(clip_dir)
    if not clip_dir.is_dir():
        raise ClipError(clip, f"frame folder {clip_dir} does not exist; check the dataset root and layout")
    numbered = []
    for path in clip_dir.iterdir():
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            number = frame_number(path)
            if number is not None:
                numbered.append((number, path))
    if not numbered:
        raise ClipError(clip, f"no numbered image ({'/'.join(IMAGE_EXTENSIONS)}) in {clip_dir}")
    numbered.sort(key=lambda item: item[0])
    numbers = [n for n, _ in numbered]
    if len(set(numbers)) != len(numbers):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})[:5]
        raise ClipError(clip, f"several files share frame numbers {dup} in {clip_dir}")
    return [p for _, p in numbered], numbers


def parse_frame_value(value) -> int | None:
    """A spreadsheet frame cell as an int, or None for a missing mark ('/', '-', '', NaN, negative)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if value >= 0 else None
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if value != int(value):
            raise ValueError(f"frame number {value!r} is not an integer")
        return int(value) if value >= 0 else None
    text = str(value).strip()
    if text in {"", "/", "-", "nan", "NaN", "None"}:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"frame number {value!r} is neither an integer nor a missing mark ('/', '-')") from None
    return parse_frame_value(number)


def parse_aus(value) -> tuple[list[str], list[str]]:
    """FACS codes from a cell like ``'L10+R12'``, ``'4+7'``, ``'R14A'`` or ``12.0``.

    Returns (aus, sides) of equal length: codes without side prefix or intensity letter ('R12' -> '12', side
    'R'; '14A' -> '14', side ''). A token that is not a FACS code is kept whole with side '' so nothing is lost.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return [], []
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = str(int(value))
    aus, sides = [], []
    for token in re.split(r"[+,;]", str(value)):
        token = token.strip()
        if not token or token in {"/", "-"}:
            continue
        match = _AU_TOKEN.match(token)
        if match:
            aus.append(str(int(match.group("code"))))
            sides.append((match.group("side") or "").upper())
        else:
            aus.append(token)
            sides.append("")
    return aus, sides


def parse_timing(row, clip: str, where: str, names: tuple[str, str] = ("onset", "offset")) -> tuple[int, int | None, int]:
    """(onset, apex, offset) frame numbers of a sheet row with ``onset``/``apex``/``offset`` fields.

    apex may be None (a missing mark, filled later); a malformed value or a missing onset/offset raises a
    ClipError naming the clip, the column names as the sheet spells them (``names``) and the sheet (``where``).
    """
    try:
        onset, apex, offset = (parse_frame_value(v) for v in (row.onset, row.apex, row.offset))
    except ValueError as err:
        raise ClipError(clip, str(err)) from None
    if onset is None or offset is None:
        raise ClipError(clip, f"{names[0]} {row.onset!r} / {names[1]} {row.offset!r} missing in {where}")
    return onset, apex, offset


def clean_text(value) -> str:
    """A spreadsheet text cell, stripped and lower case ('' for an empty cell)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip().lower()


def subject_number(value, clip: str) -> int:
    """An integer subject id from 1, 1.0, '01', 'sub01' or 's1'."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and not math.isnan(value) and value == int(value):
        return int(value)
    match = _TRAILING_INT.search(str(value).strip())
    if not match:
        raise ClipError(clip, f"subject {value!r} holds no subject number")
    return int(match.group(1))


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` present in ``root`` (exact, then case-insensitive); else FileNotFoundError."""
    root = check_root(root, what)
    for name in names:
        if (root / name).is_file():
            return root / name
    lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    raise FileNotFoundError(
        f"{what}: looked for {' or '.join(repr(n) for n in names)} in {root} and found none; "
        f"pass the folder that holds it as root (files there: {sorted(lower)[:8]})"
    )


def check_root(root, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: dataset root {root} is not a folder; pass the folder the dataset was unpacked to")
    return root


def find_frames_root(root: Path, candidates: Sequence[str], subject_pattern: str, what: str,
                     frames_dir: str | Path | None = None) -> Path:
    """The folder holding the subject folders (names matching ``subject_pattern``).

    ``frames_dir`` (relative to root or absolute) overrides the search over ``candidates``.
    """
    pattern = re.compile(subject_pattern, re.IGNORECASE)
    tries = [frames_dir] if frames_dir is not None else list(candidates)
    for cand in tries:
        base = Path(cand) if Path(cand).is_absolute() else root / cand
        if base.is_dir() and any(p.is_dir() and pattern.fullmatch(p.name) for p in base.iterdir()):
            return base
    raise FileNotFoundError(
        f"{what}: no subject folders matching {subject_pattern!r} under {root} "
        f"(looked in {', '.join(str(c) for c in tries)}); pass frames_dir= to name the frame folder"
    )


def nearest_index(numbers: Sequence[int], target: int) -> int:
    """Index of the frame number closest to ``target`` (ties -> the earlier frame)."""
    arr = np.asarray(numbers)
    return int(np.argmin(np.abs(arr - target)))


def check_image(path: Path, clip: str) -> None:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ClipError(clip, f"image {path} cannot be read (corrupt or not an image); re-extract the frames")


def build_record(*, dataset: str, subject: str, clip_id: str, frames: list[Path], numbers: list[int],
                 onset: int | None, apex: int | None, offset: int | None, emotion: str,
                 aus: list[str] | None = None, au_sides: list[str] | None = None, kind: str = "micro",
                 restrict: bool = False, check_images: str = "endpoints") -> ClipRecord:
    """Validate one clip and convert the dataset's frame NUMBERS to 0-based indices into ``frames``.

    onset/offset None -> first/last frame; apex None -> middle frame number between onset and offset (nearest
    existing frame), ``apex_source="middle"``. ``restrict`` keeps only frames numbered onset..offset (long
    videos such as CAS(ME)^2 / CAS(ME)^3 / BP4D). ``check_images``: "none", "endpoints" (decode onset, apex and
    offset images) or "all".
    """
    key = f"{dataset}/{subject}/{clip_id}"
    if check_images not in IMAGE_CHECKS:
        raise ValueError(f"check_images must be one of {IMAGE_CHECKS}, got {check_images!r}")
    onset_n = numbers[0] if onset is None else onset
    offset_n = numbers[-1] if offset is None else offset
    if onset_n > offset_n:
        raise ClipError(key, f"onset frame {onset_n} is after offset frame {offset_n}; fix the label row")
    if restrict:
        keep = [i for i, n in enumerate(numbers) if onset_n <= n <= offset_n]
        frames = [frames[i] for i in keep]
        numbers = [numbers[i] for i in keep]
    position = {n: i for i, n in enumerate(numbers)}
    span = f"{numbers[0]}..{numbers[-1]}" if numbers else "none"
    for name, n in (("onset", onset_n), ("offset", offset_n)):
        if n not in position:
            folder = frames[0].parent if frames else "its folder"
            raise ClipError(key, f"{name} frame {n} is not among the clip's frames ({span}, {len(numbers)} files in {folder})")
    if apex is None:
        apex_idx = nearest_index(numbers, (onset_n + offset_n) // 2)
        apex_source = "middle"
    else:
        if not onset_n <= apex <= offset_n:
            raise ClipError(key, f"apex frame {apex} is outside onset..offset {onset_n}..{offset_n}")
        if apex not in position:
            raise ClipError(key, f"apex frame {apex} is not among the clip's frames ({span})")
        apex_idx = position[apex]
        apex_source = "annotated"
    record = ClipRecord(
        dataset=dataset, subject=subject, clip_id=clip_id, frames=list(frames),
        onset=position[onset_n], apex=apex_idx, offset=position[offset_n], emotion=emotion,
        aus=list(aus or []), au_sides=list(au_sides or []), frame_numbers=list(numbers),
        apex_source=apex_source, kind=kind,
    )
    if check_images == "endpoints":
        to_check = [frames[record.onset], frames[record.apex], frames[record.offset]]
    elif check_images == "all":
        to_check = frames
    else:
        to_check = []
    for path in dict.fromkeys(to_check):
        check_image(path, key)
    return record


@dataclass(frozen=True)
class ClassMap:
    """A named map from a dataset's emotion words to training classes, with a pinned class ORDER.

    Emotions not in ``mapping`` are excluded (counted in LoadReport.excluded, never dropped silently).
    """

    name: str
    order: tuple[str, ...]
    mapping: Mapping[str, str]

    def __post_init__(self):
        bad = sorted(set(self.mapping.values()) - set(self.order))
        if bad:
            raise ValueError(f"class map {self.name}: targets {bad} are not in its order {self.order}")


def resolve_class_map(class_map, known: Mapping[str, ClassMap], dataset: str) -> ClassMap | None:
    if class_map is None or isinstance(class_map, ClassMap):
        return class_map
    if class_map in known:
        return known[class_map]
    raise ValueError(f"{dataset}: unknown class_map {class_map!r}; choose one of {sorted(known)} or pass a ClassMap")


def apply_class_map(records: Iterable[ClipRecord], class_map: ClassMap | None, report: LoadReport) -> list[ClipRecord]:
    """Set ``record.label`` from ``class_map``; records whose emotion it does not map are excluded and counted."""
    records = list(records)
    if class_map is None:
        return records
    kept = []
    for record in records:
        label = class_map.mapping.get(record.emotion)
        if label is None:
            report.exclude(record.key, f"emotion {record.emotion!r} not in class map {class_map.name!r}")
            continue
        record.label = label
        kept.append(record)
    if report.excluded:
        logger.info("%s: class map %s excluded %d clips", report.dataset, class_map.name, len(report.excluded))
    return kept
