"""Experiment drivers, one per notebook: they train, score and write the tables."""
