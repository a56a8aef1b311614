"""Notebook 03_mer's driver: the MER table (``microface.experiments.mer.run_mer_experiment``), then, with
``mer.mesh.enabled``, recognition from DEM + DGMD reconstructions of the same prepared clips
(``microface.reconstruct.dataset_recognition.run_mesh_recognition``).

Why it lives in ``reconstruct``: the mesh step runs the ``microface reconstruct`` stages, and the package's layers
let ``experiments`` import nothing from ``reconstruct`` (as for notebook 07's driver); a notebook makes one driver
call, so this one makes both.
"""
from __future__ import annotations

from microface.config import project_root, resolve
from microface.experiments.mer import run_mer_experiment as run_mer_table
from microface.experiments.mer_input_motion import input_motion_table
from microface.experiments.report import NotebookReport
from microface.reconstruct.dataset_recognition import run_mesh_recognition

MESH_OFF = "not run: mer.mesh.enabled is false in this profile"


def run_mer_experiment(profile: str, seed: int, device: str, data: dict, mer: dict, results_dir) -> NotebookReport:
    """Notebook 03_mer end to end: :func:`microface.experiments.mer.run_mer_experiment`'s report (same arguments),
    plus what the models see (``tables["input_motion"]``, ``notes["input_motion"]``:
    :func:`microface.experiments.mer_input_motion.input_motion_table` of the prepared clips), plus, when ``mer["mesh"]["enabled"]``, the mesh step's table (``tables["mesh_table"]``,
    ``notes["mesh_table"]``, ``notes["mesh_skipped"]``: the clips left out and any device fallback,
    ``paths["mesh_dir"]``); otherwise ``notes["mesh_table"]``
    says it did not run."""
    report = run_mer_table(profile=profile, seed=seed, device=device, data=data, mer=mer, results_dir=results_dir)
    if data.get("flow_method"):
        motion = input_motion_table(resolve(results_dir, project_root()) / "prepared")  # nbval runs from notebooks/
        report.tables["input_motion"] = motion
        report.notes["input_motion"] = motion.round(3).to_markdown(index=False)
    else:
        report.notes["input_motion"] = "not measured: data.flow_method is off in this profile (no prepared flow)"
    mesh = mer.get("mesh") or {}
    if not mesh.get("enabled"):
        report.notes["mesh_table"] = MESH_OFF
        report.notes["mesh_skipped"] = ""
        return report
    mesh_report = run_mesh_recognition(profile, seed, device, data, mer, results_dir, mesh.get("checkpoint"))
    report.tables["mesh_table"] = mesh_report.tables["mesh_table"]
    report.notes["mesh_table"] = mesh_report.notes["mesh_table"]
    notes = (mesh_report.notes["device"], mesh_report.notes["skipped"])
    report.notes["mesh_skipped"] = "\n".join(note for note in notes if note)
    report.paths["mesh_dir"] = mesh_report.paths["out_dir"]
    return report


__all__ = ["MESH_OFF", "run_mer_experiment"]
