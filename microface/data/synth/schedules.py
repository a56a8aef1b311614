"""Which action units a synthetic clip shows, and how their intensities rise and fall over time.

Micro-expression AU combinations follow the CASME II / SAMM objective classes (Davison et al., 2018,
"Objective classes for micro-facial expression recognition"), named with CASME II's emotion vocabulary so the
real CASME II loader and its 5-class map apply unchanged. Macro-expressions use the EMFACS prototypes of the
six basic emotions (Ekman and Friesen), at full intensity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Emotion -> AU combinations it may show (each a tuple of AU names; one is drawn per clip).
MICRO_EMOTION_AUS: dict[str, tuple[tuple[str, ...], ...]] = {
    "happiness": (("AU12",), ("AU6", "AU12"), ("AU7", "AU12"), ("AU6", "AU7", "AU12")),  # class I
    "surprise": (("AU1", "AU2"), ("AU5",), ("AU1", "AU2", "AU25"), ("AU25", "AU26")),  # class II
    "disgust": (("AU9",), ("AU10",), ("AU4", "AU9"), ("AU7", "AU10")),  # class IV
    "repression": (("AU14",), ("AU15",), ("AU17",), ("AU15", "AU17"), ("AU24",)),  # CASME II repression
    "others": (("AU4",), ("AU4", "AU7"), ("AU20",), ("AU1", "AU4"), ("AU23",)),  # classes III, V, VII
}
MICRO_EMOTIONS: tuple[str, ...] = tuple(MICRO_EMOTION_AUS)

MACRO_EMOTION_AUS: dict[str, tuple[str, ...]] = {
    "happiness": ("AU6", "AU12", "AU25"),
    "sadness": ("AU1", "AU4", "AU15", "AU17"),
    "surprise": ("AU1", "AU2", "AU5", "AU25", "AU26"),
    "fear": ("AU1", "AU2", "AU4", "AU5", "AU20", "AU25"),
    "anger": ("AU4", "AU5", "AU7", "AU23", "AU24"),
    "disgust": ("AU9", "AU10", "AU15", "AU17"),
}
MACRO_EMOTIONS: tuple[str, ...] = tuple(MACRO_EMOTION_AUS)


@dataclass(frozen=True)
class AUEvent:
    """One AU's activation inside a clip: frame indices (0-based) of onset, apex, offset and peak intensity."""

    au: str
    onset: int
    apex: int
    offset: int
    peak: float


def check_event_timing(onset: int, apex: int, offset: int, n_frames: int, where: str = "clip") -> None:
    """Raise ValueError unless 0 <= onset < apex < offset < n_frames."""
    if not (0 <= onset < apex < offset < n_frames):
        raise ValueError(
            f"{where}: impossible timing onset={onset}, apex={apex}, offset={offset} for {n_frames} frames "
            f"(need 0 <= onset < apex < offset < n_frames)"
        )


def intensity_profile(n_frames: int, onset: int, apex: int, offset: int, peak: float) -> np.ndarray:
    """Raised-cosine rise from onset to apex and fall to offset, zero outside. -> (T,) in [0, peak]."""
    check_event_timing(onset, apex, offset, n_frames)
    if peak < 0:
        raise ValueError(f"negative AU intensity {peak}: intensities must be >= 0")
    t = np.arange(n_frames, dtype=np.float64)
    profile = np.zeros(n_frames)
    rise = (t >= onset) & (t <= apex)
    fall = (t > apex) & (t <= offset)
    profile[rise] = 0.5 * (1 - np.cos(np.pi * (t[rise] - onset) / (apex - onset)))
    profile[fall] = 0.5 * (1 + np.cos(np.pi * (t[fall] - apex) / (offset - apex)))
    return peak * profile


def expression_trajectory(events: list[AUEvent], au_names: tuple[str, ...], n_frames: int) -> np.ndarray:
    """Sum of the events' profiles in the face model's AU order. -> (T, E)."""
    trajectory = np.zeros((n_frames, len(au_names)))
    for event in events:
        if event.au not in au_names:
            raise ValueError(f"unknown action unit {event.au!r}: the face model has {', '.join(au_names)}")
        trajectory[:, au_names.index(event.au)] += intensity_profile(
            n_frames, event.onset, event.apex, event.offset, event.peak
        )
    return trajectory


def plan_events(
    rng: np.random.Generator,
    aus: tuple[str, ...],
    onset: int,
    apex: int,
    offset: int,
    peak_scale: float,
    overlap_shift: float = 0.0,
) -> list[AUEvent]:
    """AU events for one clip; with ``overlap_shift`` > 0, every AU after the first starts later by that
    fraction of the rise time (partially overlapping activations), with its apex and offset clipped to fit.
    Peaks vary +-15 % around ``peak_scale`` per AU."""
    events = []
    for k, au in enumerate(aus):
        shift = int(round(overlap_shift * (apex - onset))) if k > 0 else 0
        a_on = min(onset + shift, apex - 1)
        a_apex = min(apex + shift, offset - 1)
        a_apex = max(a_apex, a_on + 1)
        events.append(AUEvent(au, a_on, a_apex, offset, float(peak_scale * rng.uniform(0.85, 1.15))))
    return events
