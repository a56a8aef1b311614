"""Atomic file writes: write beside the target, then rename, so an interrupted run never leaves half a file.

One mechanism for every writer in the package, its tools and benchmarks (text, bytes, or anything that writes to a
path: ``torch.save``, ``DataFrame.to_csv``, ``Figure.savefig``, ``cv2.VideoWriter``). Whole folders the same way:
build them in a :func:`staging_folder` (files inside it need no rename of their own), then :func:`replace_folder`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


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


def staging_folder(path: str | Path) -> Path:
    """A new, empty folder beside ``path`` (hidden name, ordinary permissions) to build a folder's contents in
    before :func:`replace_folder` moves it onto ``path``. The caller removes it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; results are shared like any folder
    return staging


def replace_folder(staging: str | Path, path: str | Path) -> Path:
    """Move the finished folder ``staging`` onto ``path`` (same file system) by renames: a folder already at
    ``path`` is first renamed aside, removed only once ``staging`` is in place, and restored if that fails.
    -> the path."""
    staging, path = Path(staging), Path(path)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def portable_path(path: str | Path, root: str | Path | None = None) -> str:
    """How a record (a ``summary.json``, a checkpoint's provenance) names ``path`` so it reads the same on any
    machine: relative to the compendium root when inside it (``results/cpu/dem/checkpoints/dem.pt``), else
    ``~/...`` when inside the user's home, else the absolute path as is (a shared mount such as ``/data/CASME2``
    has no shorter name that means the same file elsewhere).

    Args:
        path: a file or folder; a relative path is taken from the current directory.
        root: the compendium root (default: ``microface.config.project_root()``, or none when the current
            directory is outside a compendium, e.g. an installed package used elsewhere).

    Returns:
        The path as a POSIX string.
    """
    path = Path(path).expanduser()
    absolute = Path(os.path.abspath(path))  # no symlink resolution: the name the user gave, made absolute
    if root is None:
        from microface.config import project_root

        try:
            root = project_root()
        except FileNotFoundError:
            root = None
    bases = [(Path(root), None)] if root is not None else []
    bases.append((Path.home(), "~"))
    for base, prefix in bases:
        for candidate, base_form in ((absolute, base), (absolute.resolve(), base.resolve())):
            if candidate.is_relative_to(base_form):
                relative = candidate.relative_to(base_form).as_posix()
                if prefix is None:
                    return relative
                return prefix if relative == "." else f"{prefix}/{relative}"
    return absolute.as_posix()


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


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json_atomic(obj: Any, path: Path) -> None:
    """json.dump to a temporary file, then rename."""
    write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str), path)


def write_csv_atomic(df: pd.DataFrame, path: Path, index: bool = False) -> None:
    """DataFrame.to_csv to a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def write_table(table: pd.DataFrame, out_dir: Path, name: str, markdown: bool = True) -> None:
    """``table`` as ``out_dir/name.csv`` (and ``name.md``), each written to a temp file and renamed."""
    write_text_atomic(table.to_csv(index=False), Path(out_dir) / f"{name}.csv")
    if markdown:
        write_text_atomic(markdown_table(table), Path(out_dir) / f"{name}.md")


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, floats with ``digits`` decimals)."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    align = ["---:" if pd.api.types.is_numeric_dtype(table[c]) else ":---" for c in table.columns]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
