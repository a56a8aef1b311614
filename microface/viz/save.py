"""Saving matplotlib figures atomically: PNG + PDF for the paper, or one file in the format of its suffix."""
from __future__ import annotations

from pathlib import Path

from microface.utils.io import atomic_path


def save_figure(figure, path: str | Path, suffixes: tuple[str, ...] | None = (".png", ".pdf"), dpi: int = 150,
                bbox_inches: str | None = "tight") -> list[Path]:
    """Write ``figure`` to ``path`` with each of ``suffixes`` (None: ``path`` as it is), each via a temporary file
    and a rename. dpi and bbox_inches go to ``Figure.savefig``. -> the paths written."""
    path = Path(path)
    written = []
    for target in ([path] if suffixes is None else [path.with_suffix(s) for s in suffixes]):
        with atomic_path(target) as tmp:
            figure.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches)
        written.append(target)
    return written
