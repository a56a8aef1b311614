"""Fitting the face model to detected landmarks: the real-face coarse stage (see ``landmark_fit``)."""
from microface.fit.landmark_basis import (
    EMBEDDING_FILENAME,
    MediapipeEmbedding,
    landmark_basis,
    load_mediapipe_embedding,
)
from microface.fit.landmark_fit import FitSettings, LandmarkFit, fit_landmarks

__all__ = [
    "EMBEDDING_FILENAME",
    "FitSettings",
    "LandmarkFit",
    "MediapipeEmbedding",
    "fit_landmarks",
    "landmark_basis",
    "load_mediapipe_embedding",
]
