"""Optical flow at micro-expression scale: mean end-point error (px) and ms per pair, written to
benchmarks/results/flow.md.

Default input: the scikit-image astronaut's face (public domain) at 224 x 224 gray, warped by known smooth
local fields (``microface.data.flow.synthetic_flow``: Gaussian bumps, at most 0.8 px), several seeds.
Frame a = warp_image(face, flow_true), frame b = face, so ``flow_true`` is the forward flow a -> b.

With ``--synth ROOT``: the synthetic benchmark's ground truth instead, ROOT/ground_truth/sub*/EP*.npz key
"flow" (T-1, H, W, 2), the forward flow from frame t to t+1 in pixels, with frames
ROOT/subXX/EPxx_xx/img{N}.jpg, N = the key "frame_numbers" (T,) when present (the benchmark keeps CASME II's
numbering), else the folder's img*.jpg in numeric order; masked by key "flow_mask" (T-1, H, W) when present, else by
"mask" (T, H, W) of frame t, else unmasked.

    python benchmarks/bench_flow.py                       # astronaut, 8 seeds
    python benchmarks/bench_flow.py --synth data/synth --max-pairs 40
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from microface.utils.io import write_text_atomic
from microface.data.flow import compute_flow, endpoint_error, synthetic_flow, warp_pair

METHODS = [  # (row name, compute_flow kwargs or None for zero flow)
    ("zero flow (predict nothing)", None),
    ("DIS ultrafast, stock (finest scale 2)", dict(method="dis", dis_preset="ultrafast", dis_finest_scale=None)),
    ("DIS fast, stock (finest scale 2)", dict(method="dis", dis_preset="fast", dis_finest_scale=None)),
    ("DIS medium, stock (finest scale 1) (default)", dict(method="dis", dis_preset="medium", dis_finest_scale=None)),
    ("DIS ultrafast, finest scale 0", dict(method="dis", dis_preset="ultrafast", dis_finest_scale=0)),
    ("DIS fast, finest scale 0", dict(method="dis", dis_preset="fast", dis_finest_scale=0)),
    ("DIS medium, finest scale 0", dict(method="dis", dis_preset="medium", dis_finest_scale=0)),
    ("Dual TV-L1 (cv2.optflow)", dict(method="tvl1")),
]


def astronaut_pairs(n_seeds: int, size: int = 224, max_px: float = 0.8):
    """(frame_a, frame_b, flow_true, mask) for ``n_seeds`` fields on the astronaut's face."""
    import skimage.data

    face = cv2.resize(skimage.data.astronaut()[20:240, 120:330], (size, size), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    for seed in range(n_seeds):
        flow_true = synthetic_flow(size, size, max_px=max_px, seed=seed)
        frame_a, frame_b = warp_pair(gray, flow_true)
        yield frame_a, frame_b, flow_true, None


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"{path} is missing or unreadable; regenerate the benchmark with `microface synth`")
    return image


def synth_pairs(root: Path, max_pairs: int):
    """(frame_a, frame_b, flow_true, mask) from the synthetic benchmark's ground truth, up to ``max_pairs``."""
    files = sorted((root / "ground_truth").glob("sub*/EP*.npz"))
    if not files:
        raise FileNotFoundError(f"no ground truth under {root / 'ground_truth'}/sub*/EP*.npz; run `microface synth --out {root}`")
    count = 0
    for gt in files:
        with np.load(gt) as data:
            if "flow" not in data:
                raise KeyError(f"{gt} has no 'flow' (keys: {sorted(data.files)})")
            flows = data["flow"]
            numbers = [int(n) for n in data["frame_numbers"]] if "frame_numbers" in data else None
            # flow_mask (T-1, H, W) is the flow's own validity; else the mask of the source frame t
            masks = data["flow_mask"] if "flow_mask" in data else data["mask"][:-1] if "mask" in data else None
        clip = root / gt.parent.name / gt.stem
        if numbers is None:  # no numbering stored: the folder's frames in numeric order
            numbers = sorted(int(p.stem[3:]) for p in clip.glob("img*.jpg"))
        for t in range(flows.shape[0]):
            if count >= max_pairs:
                return
            frame_a, frame_b = _read_gray(clip / f"img{numbers[t]}.jpg"), _read_gray(clip / f"img{numbers[t + 1]}.jpg")
            yield frame_a, frame_b, flows[t].astype(np.float32), None if masks is None else masks[t].astype(bool)
            count += 1


def run(pairs) -> tuple[list[tuple[str, float, float]], int, tuple[int, int], float]:
    """Per method: (name, mean EPE px, ms per pair); plus the pair count, the frame size and the mean |flow_true|."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no frame pairs to benchmark")
    for _, options in METHODS[1:]:  # warm-up: first calls pay OpenCV's one-off set-up
        compute_flow(pairs[0][0], pairs[0][1], **options)
    rows = []
    for name, options in METHODS:
        errors, seconds = [], 0.0
        for frame_a, frame_b, flow_true, mask in pairs:
            start = time.perf_counter()
            flow = np.zeros_like(flow_true) if options is None else compute_flow(frame_a, frame_b, **options)
            seconds += time.perf_counter() - start
            errors.append(endpoint_error(flow, flow_true, mask))
        rows.append((name, float(np.mean(errors)), 1000 * seconds / len(pairs) if options is not None else 0.0))
    magnitude = float(np.mean([np.linalg.norm(p[2], axis=-1).mean() for p in pairs]))
    return rows, len(pairs), pairs[0][0].shape, magnitude


def write_markdown(path: Path, rows, n_pairs: int, shape, magnitude: float, source: str, command: str) -> None:
    lines = [
        "# Optical flow at micro-expression scale",
        "",
        f"Input: {source}; {n_pairs} pairs of {shape[1]}x{shape[0]} gray frames; mean |true flow| {magnitude:.3f} px.",
        "Score: mean end-point error (EPE, px) against the known flow; time: ms per pair, one process, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, OpenCV {cv2.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end (times on a shared machine are upper bounds; EPEs are deterministic).",
        "",
        "| method | ms per pair | EPE (px) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {ms:.1f} | {epe:.4f} |" for name, epe, ms in rows]
    lines += ["", f"Command: `{command}`", ""]
    write_text_atomic("\n".join(lines), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synth", type=Path, default=None, help="synthetic benchmark root (default: astronaut warps)")
    parser.add_argument("--seeds", type=int, default=8, help="astronaut: number of random fields")
    parser.add_argument("--max-pairs", type=int, default=40, help="--synth: frame pairs to score at most")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flow.md")
    args = parser.parse_args(argv)
    cv2.setRNGSeed(0)
    if args.synth is None:
        pairs = astronaut_pairs(args.seeds)
        source = f"scikit-image astronaut face (public domain) warped by {args.seeds} seeded smooth local fields, max 0.8 px"
    else:
        pairs = synth_pairs(args.synth, args.max_pairs)
        source = f"synthetic benchmark ground truth at {args.synth} (forward flow t -> t+1)"
    rows, n_pairs, shape, magnitude = run(pairs)
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    write_markdown(args.out, rows, n_pairs, shape, magnitude, source, command)
    for name, epe, ms in rows:
        print(f"{name:40s} {ms:8.1f} ms  EPE {epe:.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
