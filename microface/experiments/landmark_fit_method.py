"""The landmark fit as a scored method of the synthetic benchmark: the open face model fitted to each clip's
detected MediaPipe meshes (``microface.fit.landmark_fit``), read out in the benchmark's expression space.

Per clip: the offline landmarker's 468-point meshes of every frame (``microface.data.clip_landmarks``, cached beside
the benchmark; frames without a face are marked invalid, never held), one identity for the clip, default
``FitSettings``; the output is the fit's AU expression at the clip's kept frames
(``microface.data.clips.subsample_indices``), which the main table scores like any method: ground-truth shape +
predicted expression at zero pose against the ground truth.

Which expression: the rest-referenced activation ``clip(expression - rest, 0, 1)`` (the AU range), not the
absolute ``expression``. The fit's 12 identity modes cannot hold every face's rest shape, so the AUs take up the
rest: the absolute expression of a neutral frame is far from zero (AUs of 0.4-1.0 on the smoke benchmark's neutral
lead-in), and on the ground-truth shape, which already holds the identity, that bias is an error of its own. The
benchmark's ground-truth expression is zero at rest (every clip starts and ends neutral), the activation's
convention. ``rest`` is the median of the fit's expression over the clip's valid frames up to its onset (the
coding sheet's onset is a neutral frame, the ME convention; the first valid frame after it when none is), rather
than ``FitSettings``' default read-out (the 10th percentile over the clip, meant for long videos of any content):
the fit itself runs with the default ``FitSettings``, only the read-out differs. Measured on the smoke benchmark
(results/smoke/synth, v1, 96 px renders; ground-truth shape + predicted expression at zero pose vs the ground truth,
mean per-vertex error at the apex, all vertices / moving vertices (> 0.1 mm), mm):

    ===============================  ==================  ==================
    expression read-out              15 micro clips      6 macro clips
    ===============================  ==================  ==================
    neutral face (zero expression)   0.125 / 0.862       0.652 / 1.958
    absolute ``expression``          0.699 / 1.648       0.727 / 1.737
    activation, 10th-percentile rest 0.244 / 0.914       0.596 / 1.698
    activation, first-frame rest     0.191 / 0.894       0.607 / 1.783
    activation, onset-median rest    0.175 / 0.859       0.619 / 1.807
    ===============================  ==================  ==================

The onset-median rest is the best read-out on the micro clips (the ones the table scores); on the macro ones it is
0.02 mm (all) / 0.11 mm (moving) behind the percentile rest, and every activation beats the neutral face there. On
the smoke micro clips (0.5-3 mm apex motion seen at 96 px) no read-out beats the neutral face on the all-vertex
error.

No ground truth is read: the function sees the records' frames (through the landmark cache) and their
onset / apex / offset indices, which every ME dataset's coding sheet gives.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from microface.data.clip import ClipRecord
from microface.data.clip_landmarks import NoFaceInClipError, clip_landmarks
from microface.data.clips import subsample_indices
from microface.face.open_model import OpenFaceModel
from microface.fit.landmark_fit import FitSettings, fit_landmarks
from microface.utils.runtime import progress

log = logging.getLogger(__name__)

METHOD_NAME = "landmark fit"


def onset_rest(expression: np.ndarray, valid: np.ndarray, onset: int) -> np.ndarray:
    """A clip's neutral expression: the median over its valid frames up to and including the onset.

    Args:
        expression: (T, E) fitted expression.
        valid: (T,) bool, frames with a detected face (at least one).
        onset: the coding sheet's onset frame index.

    Returns:
        (E,): the median of ``expression[t]`` over valid t <= onset; the first valid frame's when none is.
    """
    before = np.flatnonzero(valid[: onset + 1])
    if len(before) == 0:
        return expression[int(np.flatnonzero(valid)[0])].copy()
    return np.median(expression[before], axis=0)


def fit_clip_expression(meshes: np.ndarray, valid: np.ndarray, onset: int, kept: np.ndarray, model: OpenFaceModel,
                        settings: FitSettings | None = None, key: str = "") -> np.ndarray:
    """The landmark fit of one clip, read out at its kept frames relative to its neutral onset.

    Args:
        meshes: (T, 468, 3) MediaPipe meshes in source-image pixels (NaN allowed where ``valid`` is False).
        valid: (T,) bool, the frames where a face was detected (at least one).
        onset: the clip's onset frame index in [0, T).
        kept: (K,) frame indices in [0, T).
        model: the open face model.
        settings: the fit's weights (None: ``FitSettings()``).
        key: the clip's name, for errors.

    Returns:
        (K, E) float32: ``clip(expression - onset_rest, au_range)`` at the kept frames, in the open model's
        expression space (E = len(model.au_names)).
    """
    kept = np.asarray(kept)
    T = len(meshes)
    if not 0 <= onset < T:
        raise ValueError(f"clip {key!r}: onset must lie in [0, {T}), got {onset}")
    if kept.size and (kept.min() < 0 or kept.max() >= T):
        raise ValueError(f"clip {key!r}: kept frames must lie in [0, {T}), got {kept.min()}..{kept.max()}")
    settings = settings or FitSettings()
    fit = fit_landmarks(meshes, model, valid=valid, settings=settings)
    expression = fit.expression.numpy().astype(np.float64)
    activation = np.clip(expression - onset_rest(expression, fit.valid.numpy(), onset), *settings.au_range)
    return activation[kept].astype(np.float32)


def fit_clip_expressions(records: list[ClipRecord], max_frames: int, cache_dir: str | Path | None,
                         show_progress: bool = True) -> list[np.ndarray]:
    """The landmark fit's AU expression at each clip's kept frames.

    Args:
        records: synthetic-benchmark clips (``load_dataset("synth", root, kind=...)``), or any clips with frames and
            onset / apex / offset.
        max_frames: kept frames per clip (``subsample_indices(record.onset, record.apex, record.offset,
            max_frames)``), as the other methods of the table.
        cache_dir: the detected-landmark cache (``landmark_cache_dir(synth_root)``); None: detect without caching.
        show_progress: a progress bar over the clips.

    Returns:
        One (K_i, E) float32 array per record, K_i = len(subsample_indices(...)), E = 17 (the open model's AUs, the
        space of the benchmark's ground-truth ``expression``): the activation relative to the clip's onset (module
        doc, ``fit_clip_expression``). A clip where the landmarker finds no face in any frame gets zeros (the
        neutral face), with a warning.

    Raises:
        FileNotFoundError: the face landmarker is unavailable.
    """
    model = OpenFaceModel()
    settings = FitSettings()
    out = []
    for record in progress(records, desc="landmark fit", disable=not show_progress):
        kept = subsample_indices(record.onset, record.apex, record.offset, max_frames)
        try:
            detected = clip_landmarks(record, cache_dir)
        except NoFaceInClipError as err:
            log.warning("%s; the landmark fit predicts the neutral face for it", err)
            out.append(np.zeros((len(kept), len(model.au_names)), np.float32))
            continue
        out.append(fit_clip_expression(detected.meshes, detected.valid, record.onset, kept, model, settings,
                                       record.key))
    return out
