"""Figures: mesh views, data figures, paper figures."""
