"""Losses: photometric, perceptual, landmark, regularisers, emotion, identity (one concept per file)."""
