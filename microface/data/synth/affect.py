"""Affect targets of a synthetic clip: valence/arousal and intensity, from its emotion label and AU schedule.

FIELDS' emotion head regresses valence/arousal and weights its cross-entropy by the clip's intensity
(``microface.losses.emotion.emotion_loss``). The synthetic benchmark draws a label and an AU schedule per clip
(``microface.data.synth.schedules``); this module writes down how those become targets.

Valence/arousal prototypes: the pleasure and arousal means of Russell & Mehrabian (1977), "Evidence for a
three-factor theory of emotions", J. Research in Personality 11, 273-294, Table 4 (each term rated on
[-1, 1] scales; the dominance column is not used). The term read for each emotion word of the benchmark
(CASME II's vocabulary, ``schedules.MICRO_EMOTIONS`` and ``MACRO_EMOTIONS``):

=========== ============ ======= =======
emotion     Table 4 term valence arousal
=========== ============ ======= =======
happiness   happy          0.81    0.51
surprise    surprised      0.40    0.67
disgust     disgusted     -0.60    0.35
sadness     sad           -0.63   -0.27
anger       angry         -0.51    0.59
fear        fearful       -0.64    0.60
repression  (none)          NaN     NaN
others      (none)          NaN     NaN
=========== ============ ======= =======

"repression" (CASME II: an emotion held back; the benchmark shows it with AU14/15/17/24) and "others"
(the Davison et al. classes III, V, VII pooled) name no one affective state, so they have no placement: NaN,
which the VA loss ignores. Their clips still carry an intensity, so the intensity weighting covers them.

Intensity: the clip's peak AU activation, the largest value of its AU schedule over frames and action units
(``expression`` (T, E), the sum of ``schedules.intensity_profile`` per AU), divided by the benchmark's
maximum AU activation and clipped to [0, 1]. The maximum is that of the full-intensity macro prototypes:
``SynthConfig.macro_peak[1]`` (their largest clip scale) times ``AU_PEAK_JITTER`` (``schedules.plan_events``
draws each AU's peak within +-15 % of the clip's scale), 1.2 x 1.15 = 1.38 for every profile's benchmark.
AU activations are in FACS-like units (1 = the blendshape's full action, as intensity E is judged per AU), so
the ratio is a per-AU intensity on one scale for all clips. A micro-expression lands at about 0.1-1 (its
activations are scaled so the apex moves 0.5-3 mm), a macro-expression at about 0.6-1.

The VA target is the prototype scaled toward neutral (0, 0) by the intensity: ``intensity * prototype``, so
a faint micro-expression's target lies near the origin and a full one's on the prototype.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

# emotion word -> (valence, arousal): Russell & Mehrabian (1977), Table 4 pleasure and arousal means (module docstring)
PROTOTYPE_VALENCE_AROUSAL: dict[str, tuple[float, float]] = {
    "happiness": (0.81, 0.51),  # happy
    "surprise": (0.40, 0.67),  # surprised
    "disgust": (-0.60, 0.35),  # disgusted
    "sadness": (-0.63, -0.27),  # sad
    "anger": (-0.51, 0.59),  # angry
    "fear": (-0.64, 0.60),  # fearful
}
# emotion words that name no single affective state: valence/arousal unknown (NaN)
NO_AFFECT: tuple[str, ...] = ("repression", "others")
# schedules.plan_events draws each AU's peak in [0.85, 1.15] x the clip's scale
AU_PEAK_JITTER = 1.15
MANIFEST_NAME = "synth_manifest.json"


def prototype_valence_arousal(emotion: str) -> np.ndarray:
    """The circumplex placement of an emotion word at full intensity.

    Args:
        emotion: the clip's emotion word (a ``ClipRecord.emotion`` of the synthetic benchmark, lower case).

    Returns:
        (2,) float64 (valence, arousal) in [-1, 1]; NaN for the words of ``NO_AFFECT``.

    Raises:
        ValueError: a word that is in neither table.
    """
    if emotion in PROTOTYPE_VALENCE_AROUSAL:
        return np.array(PROTOTYPE_VALENCE_AROUSAL[emotion], dtype=np.float64)
    if emotion in NO_AFFECT:
        return np.full(2, np.nan)
    raise ValueError(f"emotion {emotion!r}: no valence/arousal placement; expected one of "
                     f"{sorted(PROTOTYPE_VALENCE_AROUSAL) + sorted(NO_AFFECT)}")


def max_au_activation(macro_peak_max: float) -> float:
    """The benchmark's largest AU activation: its macro prototypes' largest scale times ``AU_PEAK_JITTER``.

    Args:
        macro_peak_max: ``SynthConfig.macro_peak[1]`` (unitless AU activation scale), > 0.

    Returns:
        the activation that maps to intensity 1.
    """
    if not macro_peak_max > 0:
        raise ValueError(f"macro_peak_max: expected > 0, got {macro_peak_max}")
    return float(macro_peak_max) * AU_PEAK_JITTER


def clip_intensity(expression: np.ndarray, reference: float) -> float:
    """A clip's intensity: its peak AU activation over ``reference``, clipped to [0, 1].

    Args:
        expression: (T, E) the clip's AU schedule (activations per frame and action unit, unitless, >= 0).
        reference: the benchmark's maximum AU activation (``max_au_activation``), > 0.

    Returns:
        the intensity in [0, 1].
    """
    expression = np.asarray(expression)
    if expression.ndim != 2 or expression.size == 0:
        raise ValueError(f"expression: expected a non-empty (T, E) AU schedule, got shape {expression.shape}")
    if not reference > 0:
        raise ValueError(f"reference: expected a maximum AU activation > 0, got {reference}")
    return float(np.clip(expression.max() / reference, 0.0, 1.0))


def clip_affect(emotion: str, expression: np.ndarray, reference: float) -> tuple[np.ndarray, float]:
    """A clip's affect targets: (valence, arousal) scaled toward neutral by its intensity, and the intensity.

    Args:
        emotion: the clip's emotion word (``prototype_valence_arousal``).
        expression: (T, E) its AU schedule.
        reference: the benchmark's maximum AU activation (``max_au_activation``).

    Returns:
        valence_arousal (2,) float64 in [-1, 1] (NaN for ``NO_AFFECT`` words) and intensity in [0, 1].
    """
    intensity = clip_intensity(expression, reference)
    return intensity * prototype_valence_arousal(emotion), intensity


def find_manifest(ground_truth: str | Path) -> Path:
    """The ``synth_manifest.json`` of the benchmark a ground-truth file belongs to (the nearest folder above it).

    Args:
        ground_truth: a clip's ground-truth ``.npz`` (``ClipRecord.ground_truth``).

    Returns:
        the manifest's path.

    Raises:
        FileNotFoundError: no folder above holds one.
    """
    path = Path(ground_truth).resolve()
    for folder in path.parents:
        if (folder / MANIFEST_NAME).is_file():
            return folder / MANIFEST_NAME
    raise FileNotFoundError(f"{ground_truth}: no {MANIFEST_NAME} in any folder above it; is it a synthetic "
                            "benchmark generated by `microface synth`?")


@functools.lru_cache(maxsize=16)
def _manifest_reference(manifest: Path, modified_ns: int) -> float:
    config = json.loads(manifest.read_text()).get("config", {})
    if "macro_peak" not in config:
        raise ValueError(f"{manifest}: its config has no macro_peak; regenerate the benchmark with `microface synth`")
    return max_au_activation(float(config["macro_peak"][1]))


def benchmark_reference(ground_truth: str | Path) -> float:
    """The maximum AU activation (``max_au_activation``) of the benchmark holding ``ground_truth``, from its
    manifest's ``config.macro_peak`` (read once per manifest version)."""
    manifest = find_manifest(ground_truth)
    reference = _manifest_reference(manifest, manifest.stat().st_mtime_ns)
    if not math.isfinite(reference):
        raise ValueError(f"{manifest}: macro_peak gives a non-finite maximum AU activation {reference}")
    return reference
