"""Utilities every layer may use: atomic I/O and tables, runtime (seeds, progress), argument checks."""
