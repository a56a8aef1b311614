"""Metrics: geometry (per-vertex error, moving/static scores, jitter), recognition, image (Inception, FID)."""
