"""Intensity-aware emotion loss (FIELDS-style): class cross-entropy weighted by clip intensity + VA regression."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def intensity_weights(intensity: torch.Tensor, floor: float = 0.25) -> torch.Tensor:
    """Per-clip weights ``floor + (1 - floor) * intensity``. intensity (B,) in [0, 1] -> (B,).

    A faint clip still counts (``floor``), but a clearer expression counts more, since its label is more
    trustworthy; the weight does not depend on the rest of the batch.
    """
    if intensity.ndim != 1:
        raise ValueError(f"intensity: expected (B,), got {tuple(intensity.shape)}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor: expected a value in [0, 1], got {floor}")
    return floor + (1.0 - floor) * intensity.clamp(0.0, 1.0)


def emotion_loss(logits: torch.Tensor, labels: torch.Tensor, valence_arousal: torch.Tensor | None = None,
                 va_target: torch.Tensor | None = None, intensity: torch.Tensor | None = None,
                 va_weight: float = 1.0, floor: float = 0.25) -> dict[str, torch.Tensor]:
    """Intensity-weighted cross-entropy plus valence/arousal MSE.

    logits (B,K), labels (B,) long class indices (-1 = unlabelled, ignored); valence_arousal (B,2) predicted and
    va_target (B,2) (NaN = unknown, ignored), both optional; intensity (B,) in [0,1] or None (weight 1).
    Returns {"emotion": total, "emotion_ce": ..., "emotion_va": ...}, all scalars.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits (B, K) and labels (B,): got {tuple(logits.shape)} and {tuple(labels.shape)}")
    labelled = labels >= 0
    weights = torch.ones_like(logits[:, 0]) if intensity is None else intensity_weights(intensity.to(logits), floor)
    weights = weights * labelled.to(logits.dtype)
    per_clip = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    ce = (per_clip * weights).sum() / weights.sum().clamp_min(1e-12)
    va = logits.new_zeros(())
    if valence_arousal is not None and va_target is not None:
        if valence_arousal.shape != va_target.shape or valence_arousal.shape[-1] != 2:
            raise ValueError(f"valence_arousal and va_target: expected the same (B, 2), got "
                             f"{tuple(valence_arousal.shape)} and {tuple(va_target.shape)}")
        known = torch.isfinite(va_target)
        if bool(known.any()):
            va = (valence_arousal - torch.nan_to_num(va_target)).pow(2)[known].mean()
    return {"emotion": ce + va_weight * va, "emotion_ce": ce, "emotion_va": va}
