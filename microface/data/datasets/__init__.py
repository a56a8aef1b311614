"""Dataset loaders: every one returns ``list[ClipRecord]`` (see :mod:`microface.data.clip`).

``load_dataset(name, root, **options)`` dispatches by name; :data:`DATASETS` lists the names. Common options:
``on_error="raise" | "skip"`` (bad rows raise a ClipError naming the clip, or are counted and warned about),
``report=LoadReport()`` (receives rows / loaded / skipped / excluded), ``check_images="none" | "endpoints" |
"all"``, ``class_map=`` (a dataset's named map, e.g. "5class"), ``frames_dir=`` (where the subject folders are).
Each loader's module docstring names the exact layout it reads and the quirks it handles.
"""
from __future__ import annotations

import inspect
from typing import Callable

from microface.data.clip import ClipRecord
from microface.data.datasets._common import ClassMap, ClipError, LoadReport
from microface.data.datasets.bp4d import load_bp4d
from microface.data.datasets.casme import load_casme
from microface.data.datasets.casme2 import load_casme2
from microface.data.datasets.casme2x import load_casme2x
from microface.data.datasets.casme3 import load_casme3
from microface.data.datasets.composite import LABELS as MEGC2019_LABELS
from microface.data.datasets.composite import load_megc2019
from microface.data.datasets.samm import load_samm
from microface.data.datasets.smic import load_smic
from microface.data.datasets.synth import load_synth

LOADERS: dict[str, Callable[..., list[ClipRecord]]] = {
    "casme2": load_casme2,
    "samm": load_samm,
    "casme": load_casme,
    "smic": load_smic,
    "casme2x": load_casme2x,
    "casme3": load_casme3,
    "megc2019": load_megc2019,
    "synth": load_synth,
    "bp4d": load_bp4d,
}
DATASETS: tuple[str, ...] = tuple(LOADERS)
ALIASES = {"casme_ii": "casme2", "casme^2": "casme2x", "cas(me)^2": "casme2x", "cas(me)^3": "casme3",
           "composite": "megc2019", "megc": "megc2019", "smic-hs": "smic"}


def load_dataset(name: str, root, **options) -> list[ClipRecord]:
    """Load dataset ``name`` (one of :data:`DATASETS` or an alias) from ``root``; ``options`` go to its loader."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS} (aliases {sorted(ALIASES)})")
    loader = LOADERS[key]
    accepted = set(inspect.signature(loader).parameters) - {"root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"dataset {key!r} does not take option(s) {unknown}; it takes {sorted(accepted)}")
    return loader(root, **options)


__all__ = [
    "ALIASES", "ClassMap", "ClipError", "DATASETS", "LOADERS", "LoadReport", "MEGC2019_LABELS", "load_bp4d",
    "load_casme", "load_casme2", "load_casme2x", "load_casme3", "load_dataset", "load_megc2019", "load_samm",
    "load_smic", "load_synth",
]
