"""The LOSO folds of notebook 03_mer, known before any training: which models run, which subjects are held out, and
where each fold's predictions go.

The Snakefile reads this plan once notebook 00 has written ``results/<profile>/index.csv`` and runs each
(model, held-out subject) fold as a job of its own (rule ``mer_fold``, ``microface mer-fold``); notebook 03 then
merges the fold files (and computes any that are missing itself). Standard library only: the Snakefile imports it
at every parse.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

PROTOCOL = "fixed-epoch"  # the protocol of notebook 03's table (microface.data.folds.PROTOCOLS)
# mer.reference: these models again with the public code's settings (microface.experiments.mer_tables.REFERENCE) and
# its best-epoch-on-test choice, under the protocol named for it, in their own folder
REFERENCE_MODELS = ("fdp", "mol")
REFERENCE_PROTOCOL = "test-peek"
REFERENCE_DIR = "reference"
SYNTH_ONLY = {"trajectory": "trajectory upper bound needs ground-truth expressions: synthetic benchmark only; skipped"}


def fold_file_name(subject: str) -> str:
    """A subject id as a file name: ``"casme2/sub01"`` -> ``"casme2_sub01"`` (runs of characters outside
    ``[A-Za-z0-9_.-]`` become one ``_``; an id with none left becomes ``"subject"``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(subject)).strip("_") or "subject"


def fold_path(out_dir: str | Path, model: str, protocol: str, subject: str) -> Path:
    """The predictions file of one fold: ``out_dir/<model>/<protocol>/folds/<fold_file_name(subject)>.json``."""
    return Path(out_dir) / model / protocol / "folds" / f"{fold_file_name(subject)}.json"


def mer_models(data: dict, mer: dict) -> tuple[list[str], list[str]]:
    """The models notebook 03 runs, in the config's order, and why any are skipped.

    Args:
        data: the config's ``data`` section (``dataset``: the trajectory classifier needs the synthetic benchmark).
        mer: the config's ``mer`` section (``models``).

    Returns:
        (model names to run, one note per skipped model).
    """
    run, skipped = [], []
    for name in mer["models"]:
        if name in SYNTH_ONLY and data["dataset"] != "synth":
            skipped.append(SYNTH_ONLY[name])
        else:
            run.append(name)
    return run, skipped


def mer_subjects(results_dir: str | Path) -> list[str]:
    """The subjects LOSO holds out, ``"<dataset>/<subject>"``, sorted: those with a labelled clip in
    ``results_dir/index.csv`` that ``results_dir/prepared/manifest.json`` holds (when it exists), which are the
    subjects ``samples_from_prepared`` loads from a cache notebook 00 wrote.

    Raises FileNotFoundError naming the index when notebook 00 has not run, ValueError when no clip is labelled.
    """
    results_dir = Path(results_dir)
    index = results_dir / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: notebook 00_data writes it (snakemake rule `data`)")
    manifest_path = results_dir / "prepared" / "manifest.json"
    prepared = set(json.loads(manifest_path.read_text())["clips"]) if manifest_path.is_file() else None
    subjects = set()
    with index.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = f"{row['dataset']}/{row['subject']}/{row['clip_id']}"
            if row.get("label") and (prepared is None or key in prepared):
                subjects.add(f"{row['dataset']}/{row['subject']}")
    if not subjects:
        raise ValueError(f"{index}: no labelled clip (column `label`) among the prepared clips; MER needs labels")
    return sorted(subjects)


def mer_fold_plan(data: dict, mer: dict, results_dir: str | Path) -> list[tuple[str, str]]:
    """Every (model, held-out subject) fold of notebook 03, models in the config's order, subjects sorted."""
    models, _ = mer_models(data, mer)
    subjects = mer_subjects(results_dir)
    return [(model, subject) for model in models for subject in subjects]


def mer_reference_fold_plan(data: dict, mer: dict, results_dir: str | Path) -> list[tuple[str, str]]:
    """The (model, held-out subject) folds of the reference runs (``mer.reference``: FDP and MOL with the public
    code's settings, "test-peek"), models in the config's order, subjects sorted; empty when ``mer.reference`` is
    off."""
    if not mer.get("reference"):
        return []
    models = [model for model in mer_models(data, mer)[0] if model in REFERENCE_MODELS]
    subjects = mer_subjects(results_dir)
    return [(model, subject) for model in models for subject in subjects]
