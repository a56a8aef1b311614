"""Networks: per-frame encoders, DEM, DGMD, and the micro-expression recognisers (FDP, MOL, trajectory)."""
