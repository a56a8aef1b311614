"""Atomic file writes: write beside the target, then rename, so an interrupted run never leaves half a file.

One mechanism for every writer in the package, its tools and benchmarks (text, bytes, or anything that writes to a
path: ``torch.save``, ``DataFrame.to_csv``, ``Figure.savefig``, ``cv2.VideoWriter``).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer the format from it work); on
    success it is renamed onto ``path`` with ordinary permissions, on error it is removed and the error re-raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; results should be readable like any other file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically -> the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically -> the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
