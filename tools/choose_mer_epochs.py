"""How many epochs FDP or MOL needs to fit its training clips: the rule behind ``mer.<model>.epochs`` in a profile.

Trains the model, with the profile's ``mer:`` settings, on the clips of the reconstruction split's training subjects
(the first ``1 - dem.test_fraction`` of subjects by number, as notebook 01 splits them) and records its loss and
accuracy on those clips after each epoch; no other subject's clip is read by the model or scored. Prints the first
multiple of ``--every`` epochs at which the training loss is below ``--threshold`` and writes the curve to
``results/<profile>/mer/epoch_choice_<model>.csv``. Needs notebook 00's ``results/<profile>/prepared``.

    python tools/choose_mer_epochs.py --profile cpu --model fdp --epochs 300
    python tools/choose_mer_epochs.py --profile cpu --model mol --epochs 400

(The cpu profile's FDP 100 and MOL 300 came from this rule, threshold 0.3 every 50 epochs.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", help="the profile whose results/<profile>/ holds the prepared clips")
    parser.add_argument("--model", required=True, choices=("fdp", "mol"))
    parser.add_argument("--epochs", type=int, default=300, help="epochs to record (the largest count considered)")
    parser.add_argument("--threshold", type=float, default=0.3, help="training loss to get under")
    parser.add_argument("--every", type=int, default=50, help="epoch counts considered: multiples of this")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: results/<profile>)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import yaml

    from microface.data.folds import subject_split
    from microface.experiments.mer import _model_run
    from microface.experiments.mer_epochs import first_epoch_below, training_fit_curve
    from microface.experiments.mer_plan import mer_subjects

    results = args.results if args.results is not None else ROOT / "results" / args.profile
    config_path = results / "config.yaml"
    if not config_path.is_file():
        parser.error(f"{config_path} not found: run the profile's notebook 00 first (snakemake data)")
    config = yaml.safe_load(config_path.read_text())
    mer = {**config["mer"], args.model: {**config["mer"][args.model], "epochs": args.epochs}}
    subjects = [s.split("/")[-1] for s in mer_subjects(results)]
    train, held_out = subject_split(subjects, float(config["dem"]["test_fraction"]))
    samples, run_config = _model_run(args.model, args.profile, int(config["seed"]), mer, results / "prepared")
    curve = training_fit_curve(args.model, samples, run_config, train, args.device)
    out = results / "mer" / f"epoch_choice_{args.model}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    curve.to_csv(out, index=False)
    chosen = first_epoch_below(curve["loss"].tolist(), args.threshold, args.every)
    print(f"{args.model}: trained on {', '.join(train)} (not {', '.join(held_out)}); curve -> {out}")
    for epoch in range(args.every, args.epochs + 1, args.every):
        row = curve.iloc[epoch - 1]
        print(f"  epoch {epoch:4d}  loss {row['loss']:.3f}  train_acc {row['train_acc']:.2f}")
    print(f"first multiple of {args.every} epochs with training loss < {args.threshold}: "
          f"{chosen if chosen is not None else f'none within {args.epochs}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
