"""Each notebook calls one driver and holds no logic of its own; the drivers run on tiny inputs.

The notebooks' code cells (all but ``parameters``) may import, make ONE call to a ``microface.experiments`` or
``microface.reconstruct`` driver, passing the parameters by their own names, and display what it returns.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DRIVER_PACKAGES = ("microface.experiments", "microface.reconstruct")
LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.comprehension)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")


def _cells(path: Path) -> tuple[ast.Module, list[ast.Module]]:
    """(the parameters cell, the other code cells), parsed."""
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    parameters = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1, f"{path.name}: expected one cell tagged parameters, found {len(parameters)}"
    others = [ast.parse("".join(c["source"]), filename=path.name) for c in code if c not in parameters]
    return ast.parse("".join(parameters[0]["source"])), others


def _drivers(cells: list[ast.Module]) -> dict[str, str]:
    """Names imported from the driver packages -> their module."""
    names = {}
    for node in (n for cell in cells for n in ast.walk(cell)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(DRIVER_PACKAGES):
            names.update({alias.asname or alias.name: node.module for alias in node.names})
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_calls_one_driver_and_holds_no_logic(path):
    parameters, cells = _cells(path)
    nodes = [n for cell in cells for n in ast.walk(cell)]
    loops = [type(n).__name__ for n in nodes if isinstance(n, LOOPS)]
    assert not loops, f"{path.name}: loops {loops} belong in the driver"
    assert not [n for n in nodes if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)], \
        f"{path.name}: builds a path (/): the driver writes and returns its paths"
    assert not [n for n in nodes if isinstance(n, (ast.FunctionDef, ast.Lambda, ast.If, ast.ClassDef))], \
        f"{path.name}: defines or branches; that belongs in the driver"
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert module.startswith(DRIVER_PACKAGES + ("IPython.display",)), f"{path.name} imports {module}"
    drivers = _drivers(cells)
    calls = [n for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in drivers]
    assert len(calls) == 1, f"{path.name}: expected one driver call, found {[ast.unparse(c) for c in calls]}"
    call = calls[0]
    # the parameters go in by their own names, and the driver takes exactly the ones passed
    names = {t.id for n in ast.walk(parameters) if isinstance(n, ast.Assign) for t in n.targets}
    assert not call.args
    for keyword in call.keywords:
        assert isinstance(keyword.value, ast.Name) and keyword.value.id == keyword.arg in names, ast.unparse(keyword)
    driver = getattr(importlib.import_module(drivers[call.func.id]), call.func.id)
    assert list(inspect.signature(driver).parameters) == [k.arg for k in call.keywords]


def test_the_rule_catches_a_notebook_with_logic(tmp_path):
    """The check above is not vacuous: the old 03_mer cell (a loop over models) fails it."""
    notebook = json.loads((ROOT / "notebooks" / "03_mer.ipynb").read_text())
    cell = next(c for c in notebook["cells"]
                if c["cell_type"] == "code" and "run_mer_experiment(" in "".join(c["source"]))
    cell["source"] = "rows = []\nfor name in mer['models']:\n    rows.append(run_mer_experiment(profile=profile))\n"
    path = tmp_path / "03_mer.ipynb"
    path.write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match="loops"):
        test_notebook_calls_one_driver_and_holds_no_logic(path)


# ------------------------------------------------------------------------------------------------ 03: MER
def _write_prepared(results: Path, n_subjects: int = 3, per_subject: int = 3) -> None:
    """A tiny ``results/prepared`` cache (the ``microface prepare`` layout) with ground-truth expressions."""
    rng = np.random.default_rng(0)
    prepared, truth_dir = results / "prepared", results / "gt"
    truth_dir.mkdir(parents=True)
    labels = ("negative", "positive", "surprise")
    clips = {}
    t, s = 9, 16
    for i in range(n_subjects * per_subject):
        subject, clip_id, label = f"sub{i // per_subject + 1:02d}", f"EP{i:02d}", labels[i % 3]
        frames = rng.integers(0, 255, (t, s, s, 3), dtype=np.uint8)
        truth = truth_dir / f"{subject}_{clip_id}.npz"
        expression = rng.normal(size=(t, 5)).astype(np.float32)
        expression[:, i % 3] += np.linspace(0, 3, t)
        np.savez(truth, expression=expression)
        record = {"dataset": "synth", "subject": subject, "clip_id": clip_id, "onset": 0, "apex": 4, "offset": 8,
                  "label": label, "ground_truth": str(truth)}
        rel = f"clips/synth/{subject}/{clip_id}.npz"
        (prepared / rel).parent.mkdir(parents=True, exist_ok=True)
        np.savez(prepared / rel, frames=frames, landmarks68=rng.uniform(2, 14, (t, 68, 2)).astype(np.float32),
                 flow=np.zeros((t, s, s, 2), np.float16), transform=np.eye(2, 3),
                 meta=np.array(json.dumps({"record": record})))
        clips[f"synth/{subject}/{clip_id}"] = {"file": rel}
    (prepared / "manifest.json").write_text(json.dumps({"clips": clips, "skipped": {}}))


TINY_MER = {"epochs": 2, "n_frames": 4, "models": ["trajectory"], "batch_size": 4, "lr": 1e-2,
            "fdp": {"image_size": 16, "dims": [4, 8], "depths": [1, 1], "heads": [1, 1], "sr_ratios": [2, 1],
                    "decoder_dim": 8},
            "mol": {"image_size": 16, "stem_channels": [4, 8], "knn_k": 2, "temporal_kernel": 3},  # n_frames 4: 3 pairs
            "trajectory": {"hidden": 8, "layers": 1}}


def test_mer_driver_writes_the_table_the_loop_did(tmp_path):
    from microface.experiments.mer import MERRunConfig, run_loso, run_mer_experiment, samples_from_prepared
    from microface.experiments.mer_tables import chance_level, mer_model_settings

    _write_prepared(tmp_path)
    report = run_mer_experiment(profile="smoke", seed=0, device="cpu", data={"dataset": "synth"}, mer=TINY_MER,
                                results_dir=tmp_path)
    table = pd.read_csv(tmp_path / "mer" / "mer_table.csv")
    assert list(table["group"]) == ["synth", "all"] and set(table["model"]) == {"trajectory"}
    assert "seconds" not in table and "seconds" in report.tables["mer_table"]
    assert report.notes["skipped"] == "" and "| trajectory" in report.notes["mer_table"]
    assert list(pd.read_csv(tmp_path / "mer" / "mer_table_timings.csv")["model"]) == ["trajectory"] * 2
    # the same run by hand (notebook 03's former loop) scores the same, to the last digit
    inputs, sample_kwargs = mer_model_settings("trajectory", "smoke", TINY_MER)
    samples = samples_from_prepared(tmp_path / "prepared", inputs, **sample_kwargs)
    config = MERRunConfig.from_dict(mer_model_settings("trajectory", "smoke", TINY_MER, run_config=True, seed=0,
                                                       samples=samples))
    by_hand = run_loso("trajectory", samples, config, tmp_path / "by_hand", protocol="fixed-epoch")
    for name in ("predictions", "metrics", "confusion"):
        driven = tmp_path / "mer" / "trajectory" / "fixed-epoch" / f"{name}.csv"
        assert driven.read_bytes() == (by_hand.out_dir / f"{name}.csv").read_bytes(), name
    metrics = pd.read_csv(by_hand.out_dir / "metrics.csv")
    pd.testing.assert_frame_equal(table[metrics.columns], metrics, check_exact=True)
    chance = chance_level(samples)
    assert table["chance_uar"].iloc[0] == round(chance["uar_uniform"], 4)


def test_mer_driver_skips_the_trajectory_bound_off_the_synthetic_benchmark(tmp_path):
    from microface.experiments.mer import run_mer_experiment

    _write_prepared(tmp_path)
    mer = {**TINY_MER, "epochs": 1, "models": ["mol", "trajectory"]}
    report = run_mer_experiment(profile="smoke", seed=0, device="cpu", data={"dataset": "casme2"}, mer=mer,
                                results_dir=tmp_path)
    assert "skipped" in report.notes["skipped"]
    assert set(pd.read_csv(tmp_path / "mer" / "mer_table.csv")["model"]) == {"mol"}
    assert not (tmp_path / "mer" / "trajectory").exists()


# ----------------------------------------------------------------------------------------------- 00: data
def test_data_driver_on_a_one_subject_benchmark(tmp_path):
    from microface.data.datasets import load_dataset
    from microface.experiments.data import run_data_experiment

    synth = {"subjects": 1, "clips": 1, "macro_clips": 0}
    data = {"dataset": "synth", "root": None, "size": 32, "class_map": "5class", "flow_method": "dis",
            "flow_mode": "onset", "workers": 1}
    report = run_data_experiment(profile="smoke", seed=0, synth=synth, data=data, results_dir=tmp_path)
    records = load_dataset("synth", tmp_path / "synth", class_map="5class")
    index = pd.read_csv(tmp_path / "index.csv")
    assert len(index) == len(records) == 1 and int(report.tables["clips_per_subject"].to_numpy().sum()) == 1
    assert not (tmp_path / "index.tmp").exists()
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert len(manifest["clips"]) == 1
    for name in ("prepared_clips", "open_model_aus"):
        assert (tmp_path / "figures" / f"{name}.png").is_file() and (tmp_path / "figures" / f"{name}.pdf").is_file()
        assert report.figures[name].axes
    assert (tmp_path / "figures" / "mesh_sequence.html").is_file() and "mesh_sequence.html" in report.notes["viewer"]
    # a rerun prepares nothing and writes the same index
    before = (tmp_path / "index.csv").read_bytes()
    again = run_data_experiment(profile="smoke", seed=0, synth=synth, data=data, results_dir=tmp_path)
    assert again.notes["prepare"].startswith("nothing to do: 1 of 1 clips already prepared")
    assert (tmp_path / "index.csv").read_bytes() == before


# ----------------------------------------------------------------------------------------------- the rest
@pytest.mark.parametrize("module, name", [("microface.experiments.coarse", "run_coarse_experiment"),
                                          ("microface.experiments.refine", "run_refine_experiment"),
                                          ("microface.experiments.main_table", "run_main_table_experiment"),
                                          ("microface.experiments.ablations", "run_ablations_experiment"),
                                          ("microface.experiments.figures", "run_figures_experiment")])
def test_training_drivers_need_their_inputs(module, name, tmp_path):
    """The drivers that train (minutes even at smoke size; the chain runs them) fail on a missing input, naming it."""
    driver = getattr(importlib.import_module(module), name)
    data = {"dataset": "synth", "root": str(tmp_path / "nowhere"), "size": 32, "class_map": "5class",
            "flow_method": "dis"}
    kwargs = {p: {} for p in inspect.signature(driver).parameters}
    kwargs.update(profile="smoke", seed=0, device="cpu", data=data, results_dir=tmp_path, figures_dir=tmp_path)
    kwargs = {k: v for k, v in kwargs.items() if k in inspect.signature(driver).parameters}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        driver(**kwargs)
