"""MEGC 2019 composite database (See et al. 2019): SMIC-HS + CASME II + SAMM, 3 classes, 68 subjects, 442 clips.

Classes, in the pinned order :data:`LABELS` = ("negative", "positive", "surprise"):

- negative = SAMM anger, contempt, disgust, fear, sadness + CASME II disgust, repression + SMIC negative
- positive = happiness (CASME II, SAMM) + SMIC positive
- surprise = surprise (all three)
- everything else (CASME II others/fear/sadness, SAMM other) is excluded and counted in LoadReport.excluded.

On the full releases this gives 145 CASME II + 133 SAMM + 164 SMIC = 442 clips over 24 + 28 + 16 = 68 subjects.
``record.dataset`` keeps the source ("casme2", "samm", "smic") for per-dataset scores, and subjects are
prefixed by it (``casme2_sub01``, ``samm_006``, ``smic_s1``) so no two databases share a subject id in LOSO.
"""
from __future__ import annotations

from pathlib import Path

from microface.data.clip import ClipRecord
from microface.data.datasets import casme2, samm, smic
from microface.data.datasets._common import ClassMap, LoadReport, check_on_error, check_root, finish

LABELS: tuple[str, ...] = ("negative", "positive", "surprise")
SOURCES = ("casme2", "samm", "smic")
CLASS_MAPS = {
    "casme2": ClassMap("megc2019-casme2", LABELS, {"disgust": "negative", "repression": "negative",
                                                   "happiness": "positive", "surprise": "surprise"}),
    "samm": ClassMap("megc2019-samm", LABELS, {"anger": "negative", "contempt": "negative", "disgust": "negative",
                                               "fear": "negative", "sadness": "negative", "happiness": "positive",
                                               "surprise": "surprise"}),
    "smic": ClassMap("megc2019-smic", LABELS, {"negative": "negative", "positive": "positive", "surprise": "surprise"}),
}
# folder names tried under one umbrella root, per source
_SUBFOLDERS = {
    "casme2": ("CASME2", "CASME II", "CASMEII", "casme2"),
    "samm": ("SAMM", "samm"),
    "smic": ("SMIC", "SMIC-HS", "SMIC_HS", "smic"),
}


def _find_sub(root: Path, source: str) -> Path:
    for name in _SUBFOLDERS[source]:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"MEGC 2019: no {source} folder under {root} (looked for {list(_SUBFOLDERS[source])}); "
        f"pass casme2_root=, samm_root=, smic_root= instead"
    )


def load_megc2019(root=None, *, casme2_root=None, samm_root=None, smic_root=None, on_error: str = "raise",
                  check_images: str = "endpoints", report: LoadReport | None = None,
                  options: dict | None = None) -> list[ClipRecord]:
    """Load the MEGC 2019 composite set from three roots (or one ``root`` holding CASME2/, SAMM/, SMIC/).

    Returns ClipRecords with ``label`` in :data:`LABELS`, subjects prefixed by source, sorted by source, subject,
    clip. ``options`` = {"casme2": {...}, ...} passes extra keyword options (e.g. frames_dir) to one loader.
    """
    check_on_error(on_error)
    report = report if report is not None else LoadReport()
    report.dataset = report.dataset or "megc2019"
    roots = {"casme2": casme2_root, "samm": samm_root, "smic": smic_root}
    if any(r is None for r in roots.values()):
        if root is None:
            raise ValueError("MEGC 2019 needs root= (holding CASME2/, SAMM/, SMIC/) or all of casme2_root, samm_root, smic_root")
        base = check_root(root, "MEGC 2019")
        roots = {s: r if r is not None else _find_sub(base, s) for s, r in roots.items()}
    report.root = report.root or ", ".join(str(r) for r in roots.values())
    loaders = {"casme2": casme2.load_casme2, "samm": samm.load_samm, "smic": smic.load_smic}
    options = options or {}
    records: list[ClipRecord] = []
    for source in SOURCES:
        part = loaders[source](roots[source], class_map=CLASS_MAPS[source], on_error=on_error,
                               check_images=check_images, report=report, **options.get(source, {}))
        for record in part:
            record.subject = f"{source}_{record.subject}"
        records.extend(part)
    return finish(report, records)
