"""Training loops: the generic loop (fit, checkpoints, resume) and DEM, DGMD, FIELDS training."""
