"""What a notebook's driver hands back for the notebook to show: named tables, figures, text and paths.

Every chain notebook calls one driver (``run_*_experiment``) that does all the work and writes every file; the
notebook only displays the report. The report holds nothing the notebook must compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class NotebookReport:
    """The results a driver returns to its notebook.

    Args:
        tables: name -> pandas DataFrame to display (already cut to the columns worth showing).
        figures: name -> matplotlib Figure (already saved and closed; ``display`` still renders it).
        notes: name -> text to print (splits, verdicts, where files were written).
        paths: name -> a file or folder the driver wrote.
        values: name -> anything else the notebook shows as it is (e.g. an IFrame's source).
    """

    tables: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
