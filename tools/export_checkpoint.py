"""Export trained DEM + DGMD checkpoints as one ``microface reconstruct`` bundle (``microface.reconstruct.save_bundle``).

Inputs, all from a finished training run (e.g. ``snakemake all --cores 2 --configfile config/cpu.yaml``):

- the profile config ``config/<profile>.yaml``: ``data.size`` (DEM's crop size), ``data.flow_method``, the
  ``dem:`` section's ``encoder`` and ``model`` subsections (how DEM was built), and ``dgmd.image_size`` (DGMD's
  own crop size, the bundle's ``refine_size``; absent or null: ``data.size``);
- the DEM training checkpoint, default ``results/<profile>/dem/checkpoints/dem.pt`` (``microface.training.loop`` format,
  notebook 01_dem_pretrain);
- a DGMD training checkpoint (``--dgmd-checkpoint``, e.g. ``results/<profile>/dgmd/checkpoints/dgmd.pt``) and its
  DGMD config: ``--dgmd-config FILE.json`` when given, else the config recorded in the checkpoint by
  ``train_dgmd``, else the profile's ``dgmd.model`` section.

Both models are rebuilt and the checkpoints loaded strictly, so a bundle that would not load is never written.
Usage::

    python tools/export_checkpoint.py --profile cpu --dgmd-checkpoint results/cpu/dgmd/checkpoints/dgmd.pt
    python tools/export_checkpoint.py --profile cpu --dgmd-checkpoint D.pt --dgmd-config dgmd.json --out my.pt
    python tools/export_checkpoint.py --face-model flame --flame ~/flame/generic_model.pkl ...

Default output: ``microface/assets/checkpoints/open_dem_dgmd.pt`` (the checkpoint ``microface reconstruct`` uses).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microface.reconstruct.export import export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", help="profile whose config and results to read (default: cpu)")
    parser.add_argument("--dgmd-checkpoint", type=Path, required=True, help="DGMD training checkpoint (microface.training.loop)")
    parser.add_argument("--dgmd-config", type=Path, default=None, help="DGMD config JSON (DGMDConfig keys)")
    parser.add_argument("--dem-checkpoint", type=Path, default=None,
                        help="DEM training checkpoint (default: results/<profile>/dem/checkpoints/dem.pt)")
    parser.add_argument("--config", type=Path, default=None, help="profile config (default: config/<profile>.yaml)")
    parser.add_argument("--face-model", default="open", choices=["open", "flame"])
    parser.add_argument("--flame", type=Path, default=None, help="FLAME model pickle (with --face-model flame)")
    parser.add_argument("--out", type=Path, default=None,
                        help="bundle to write (default: microface/assets/checkpoints/open_dem_dgmd.pt)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="compendium root (default: the current folder)")
    args = parser.parse_args(argv)
    try:
        path = export(args.profile, args.dgmd_checkpoint, root=args.root, config_path=args.config,
                      dem_checkpoint=args.dem_checkpoint, dgmd_config=args.dgmd_config, face_model=args.face_model,
                      flame=args.flame, out=args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
