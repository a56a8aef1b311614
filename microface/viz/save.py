"""Saving matplotlib figures as PNG + PDF, atomically."""
from __future__ import annotations

from pathlib import Path

from microface.utils.io import atomic_path


def save_figure(figure, path: str | Path) -> list[Path]:
    """Write ``path`` (PNG) and its PDF twin, each via a temporary file and a rename. -> the two paths."""
    path = Path(path)
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        with atomic_path(target) as tmp:
            figure.savefig(tmp, dpi=150, bbox_inches="tight")
        written.append(target)
    return written
