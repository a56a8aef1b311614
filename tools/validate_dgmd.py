"""Score DGMD settings on a held-out TRAINING subject, so that settings are chosen without the test subjects.

Needs notebook 01's split (``results/<profile>/dem/split.json``) and its synthetic benchmark; only the training
subjects' clips are read. One training subject is held out: a fold DEM (notebook 01's two DEM stages and settings) and
DGMD are trained on the other training subjects and scored on it
(``microface.experiments.refine.validate_on_training_subject``); nothing under ``results/`` is written. The fold
DEM takes most of the time: ``--dem-dir DIR`` keeps its checkpoints, so later runs with other DGMD settings train
only DGMD.

    python tools/validate_dgmd.py --profile cpu
    python tools/validate_dgmd.py --profile cpu --set model.temporal_rank=0 --set model.landmark_sigma_mm=8
    python tools/validate_dgmd.py --profile cpu --holdout sub03 --out validation.csv
    python tools/validate_dgmd.py --profile cpu --dem-dir /tmp/fold_dem_sub04 --set model.gate_scale_px=2

``--set KEY=VALUE`` overrides a key of the profile's ``dgmd:`` section (dotted path, VALUE parsed as YAML).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "moving_apex_mm", "moving_clip_mm", "static_apex_mm", "static_clip_mm", "gate_moving",
           "gate_static", "n_test_clips"]


def with_overrides(section: dict, assignments: list[str]) -> dict:
    """A copy of a config section with ``a.b=value`` assignments applied (values parsed as YAML)."""
    section = copy.deepcopy(section)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. model.temporal_rank=0")
        *parents, leaf = key.split(".")
        target = section
        for name in parents:
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {assignment!r}: {name!r} is not a section")
        target[leaf] = yaml.safe_load(raw)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="config/<profile>.yaml (default cpu)")
    parser.add_argument("--results", type=Path, help="results folder (default results/<profile>)")
    parser.add_argument("--holdout", help="training subject to hold out (default: the last training subject)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the dgmd: section, e.g. model.temporal_rank=0 (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    parser.add_argument("--dem-dir", type=Path, help="keep the fold DEM's checkpoints here and resume from them "
                        "(one folder per profile and held-out subject; default: trained in memory)")
    args = parser.parse_args(argv)

    from microface.experiments import coarse as coarse_benchmark, refine as refine_benchmark
    from microface.utils.io import write_text_atomic
    from microface.config import load_config, resolve
    from microface.utils.runtime import seed_everything

    config_path = ROOT / "config" / f"{args.profile}.yaml"
    config = load_config(config_path)
    results = resolve(args.results or Path("results") / args.profile, ROOT)
    synth_root = coarse_benchmark.benchmark_root(results, config["data"], config["synth"], config["profile"],
                                                 config["seed"])
    dgmd = with_overrides(config["dgmd"], args.assignments)
    seed_everything(config["seed"])
    table = refine_benchmark.validate_on_training_subject(
        synth_root, results / "dem", config["dem"], dgmd, seed=config["seed"], image_size=config["data"]["size"],
        flow_method=config["data"]["flow_method"], device=config["device"], holdout=args.holdout,
        dem_dir=args.dem_dir)
    print(table["split"].iloc[0])
    print(f"overrides: {args.assignments or 'none'}")
    print(table[COLUMNS].to_string(index=False, float_format=lambda x: f"{x:.6f}"))
    if args.out:
        write_text_atomic(table.to_csv(index=False), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
