"""Clips per second of the synthetic benchmark generator, per profile size. Writes benchmarks/results/synth.md.

Usage: python benchmarks/bench_synth.py [--profiles smoke cpu]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from microface.utils.io import write_text_atomic
from microface.data.synth import config_for_profile, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", nargs="+", default=["smoke", "cpu"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synth.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for profile in args.profiles:
        config = config_for_profile(profile, subjects=2, clips=3, macro_clips=1, seed=0)
        work = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        try:
            started = time.perf_counter()
            generate(work / "ds", config, show_progress=False)
            seconds = time.perf_counter() - started
            n_clips = config.subjects * (config.clips + config.macro_clips)
            n_frames = sum(1 for _ in (work / "ds").rglob("img*.jpg"))
        finally:
            shutil.rmtree(work)
        rows.append((profile, config.image_size, n_clips, n_frames, seconds, n_clips / seconds, n_frames / seconds))
    lines = [
        "# Synthetic benchmark generation speed",
        "",
        f"`python benchmarks/bench_synth.py` on {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; rendering, ground-truth flow, JPEG + npz writing included.",
        "",
        "| profile | image | clips | frames | seconds | clips/s | frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {s}² | {c} | {f} | {t:.1f} | {cps:.2f} | {fps:.1f} |" for p, s, c, f, t, cps, fps in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
