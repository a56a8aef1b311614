"""Mesh operations independent of any face model: topology, Laplacians, regions, geometry, mesh files."""
