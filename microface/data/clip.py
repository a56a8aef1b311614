"""The one clip record every dataset loader yields."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ClipRecord:
    """One (micro- or macro-) expression clip, whatever dataset it came from.

    frames: the clip's frame image paths in temporal order (numeric sort of the frame numbers).
    onset, apex, offset: positions as 0-based indices into ``frames`` (not the dataset's frame numbers);
        ``frame_numbers`` keeps the dataset's own numbering for reference.
    apex_source: "annotated", or how a missing apex was filled ("middle", ...), so no fill is silent.
    aus: action units as FACS codes without side prefixes kept separately in ``au_sides`` (e.g. "12", "R12" -> "12");
        ``au_sides`` is aligned with ``aus`` ("L", "R", or "" when the code has no side).
    emotion: the dataset's own label, lower case; ``label`` is the class used for training once a class map
        is applied (None until then).
    ground_truth: path to per-clip ground truth (synthetic benchmark only), else None.
    """

    dataset: str
    subject: str
    clip_id: str
    frames: list[Path]
    onset: int
    apex: int
    offset: int
    emotion: str
    aus: list[str] = field(default_factory=list)
    au_sides: list[str] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    apex_source: str = "annotated"
    kind: str = "micro"
    label: str | None = None
    ground_truth: Path | None = None

    @property
    def key(self) -> str:
        """Unique id across datasets: ``dataset/subject/clip_id``."""
        return f"{self.dataset}/{self.subject}/{self.clip_id}"

    def to_row(self) -> dict:
        """Flat dict for an index CSV (frames stored as first/last path and count)."""
        row = asdict(self)
        row["frames"] = len(self.frames)
        row["first_frame"] = str(self.frames[0]) if self.frames else ""
        row["last_frame"] = str(self.frames[-1]) if self.frames else ""
        row["aus"] = "+".join(self.aus)
        row["au_sides"] = "+".join(self.au_sides)
        row["frame_numbers"] = ""
        row["ground_truth"] = str(self.ground_truth) if self.ground_truth else ""
        return row
