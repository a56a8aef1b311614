"""The synthetic micro-expression benchmark (``microface synth``), written in CASME II's own layout.

Layout read:

- ``ROOT/synth_manifest.json`` with ``{"format": "microface-synth", ...}`` (checked, so a real CASME II root
  is never mistaken for the benchmark);
- micro clips: ``ROOT/CASME2-coding-20140508.xlsx`` (CASME II columns) + ``ROOT/sub01/EP01_01/img1.jpg``;
  emotions in CASME II's vocabulary (happiness, surprise, disgust, repression, fear, sadness, others);
- macro clips: ``ROOT/macro/CASME2-coding-20140508.xlsx`` + ``ROOT/macro/sub01/MA01_01/img1.jpg``; emotions
  anger, disgust, fear, happiness, sadness, surprise;
- ground truth: ``ROOT/ground_truth/sub01/EP01_01.npz`` (micro) and ``ROOT/ground_truth/macro/sub01/MA01_01.npz``
  (macro), stored in ``record.ground_truth``. A missing ground-truth file is a ClipError (or a counted skip).

Both parts are read by the CASME II code path (:func:`microface.data.datasets.casme2.clip_records`), so the
benchmark exercises exactly the loader real data goes through; records get ``dataset="synth"``.
"""
from __future__ import annotations

import json
from pathlib import Path

from microface.data.clip import ClipRecord
from microface.data.datasets import casme2
from microface.data.datasets._common import (
    ClassMap,
    ClipError,
    LoadReport,
    apply_class_map,
    check_on_error,
    check_root,
    find_file,
    finish,
    resolve_class_map,
)

MANIFEST = "synth_manifest.json"
FORMAT = "microface-synth"
KINDS = ("micro", "macro", "all")
MICRO_EMOTIONS = casme2.EMOTIONS
MACRO_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
CLASS_MAPS = casme2.CLASS_MAPS


def read_manifest(root: Path) -> dict:
    """The benchmark's manifest; ValueError if it is not a microface-synth manifest."""
    path = find_file(root, [MANIFEST], "synthetic benchmark manifest")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); regenerate the benchmark with `microface synth`") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: expected format {FORMAT!r}, found {found!r}")
    return manifest


def load_synth(root, *, kind: str = "micro", class_map: str | ClassMap | None = None, on_error: str = "raise",
               check_images: str = "endpoints", report: LoadReport | None = None) -> list[ClipRecord]:
    """Load the synthetic benchmark at ``root``: micro clips, macro clips, or both (``kind``).

    ``class_map`` (CASME II maps, e.g. "5class") applies to micro clips only; macro clips keep label None.
    """
    check_on_error(on_error)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    report = report if report is not None else LoadReport()
    root = check_root(root, "synthetic benchmark")
    report.dataset, report.root = report.dataset or "synth", report.root or str(root)
    read_manifest(root)
    class_map = resolve_class_map(class_map, CLASS_MAPS, "synth")
    parts = [("micro", root, root / "ground_truth")] if kind in ("micro", "all") else []
    if kind in ("macro", "all"):
        parts.append(("macro", root / "macro", root / "ground_truth" / "macro"))
    micro: list[ClipRecord] = []
    macro: list[ClipRecord] = []
    for part_kind, part_root, gt_root in parts:
        if not part_root.is_dir():
            raise FileNotFoundError(f"synthetic benchmark: {part_kind} folder {part_root} is missing; "
                                    f"regenerate with `microface synth` or load kind='micro'")
        sheet = find_file(part_root, [casme2.SHEET], f"synthetic benchmark {part_kind} coding sheet")
        part = casme2.clip_records(casme2.read_coding_sheet(sheet), part_root, dataset="synth", kind=part_kind,
                                   on_error=on_error, check_images=check_images, report=report)
        for record in part:
            gt = gt_root / record.subject / f"{record.clip_id}.npz"
            if not gt.is_file():
                err = ClipError(record.key, f"ground truth {gt} is missing; regenerate with `microface synth`")
                if on_error == "raise":
                    raise err
                report.skip(err.clip, err.reason)
                report.loaded -= 1  # counted as loaded by clip_records; it is a skip after all
                continue
            record.ground_truth = gt
            (micro if part_kind == "micro" else macro).append(record)
    # micro clips come first, as parts are read
    records = apply_class_map(micro, class_map, report) + macro
    return finish(report, records)
