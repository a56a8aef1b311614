"""The user's front door: ``microface COMMAND``. Each command is a thin wrapper over a package function."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="microface: 3D reconstruction and recognition of facial micro-expressions.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the package version."""
    from microface import __version__

    typer.echo(__version__)


@app.command()
def index(
    dataset: str = typer.Option(..., "--dataset", help="dataset name: casme2, samm, casme, smic, casme2x, casme3, megc2019, synth, bp4d"),
    root: Path = typer.Option(..., "--root", help="the folder the dataset was unpacked to"),
    out: Path = typer.Option(..., "--out", help="index CSV to write (one row per clip)"),
    on_error: str = typer.Option("raise", "--on-error", help="raise: stop at the first bad row; skip: count and report bad rows"),
    class_map: Optional[str] = typer.Option(None, "--class-map", help="a named class map of the dataset, e.g. 5class"),
    kind: Optional[str] = typer.Option(None, "--kind", help="micro / macro / all (synth, casme2x, casme3)"),
    check_images: str = typer.Option("endpoints", "--check-images", help="none / endpoints / all: decode frames to catch corrupt files"),
) -> None:
    """Index a dataset: one CSV row per clip (written atomically), and counts per class and subject."""
    import pandas as pd

    from microface.data.datasets import LoadReport, load_dataset
    from microface.data.datasets._common import natural_key
    from microface.utils.io import atomic_path

    options = {"on_error": on_error, "check_images": check_images}
    if class_map is not None:
        options["class_map"] = class_map
    if kind is not None:
        options["kind"] = kind
    report = LoadReport()
    try:
        records = load_dataset(dataset, root, report=report, **options)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    if not records:
        typer.echo(f"error: no clips loaded from {root} ({report.summary()})", err=True)
        raise typer.Exit(code=1)
    table = pd.DataFrame([r.to_row() for r in records])
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    typer.echo(report.summary())
    for reason_kind, items in (("skipped", report.skipped), ("excluded", report.excluded)):
        for clip, reason in items[:10]:
            typer.echo(f"  {reason_kind} {clip}: {reason}")
        if len(items) > 10:
            typer.echo(f"  ... {len(items) - 10} more {reason_kind}")
    column = "label" if table["label"].notna().any() else "emotion"
    typer.echo(f"clips per {column}:")
    for name, count in table[column].value_counts().sort_index().items():
        typer.echo(f"  {name}: {count}")
    typer.echo("clips per subject:")
    per_subject = table["subject"].astype(str).value_counts()
    for name in sorted(per_subject.index, key=natural_key):
        typer.echo(f"  {name}: {per_subject[name]}")
    typer.echo(f"wrote {len(table)} clips to {out}")


@app.command()
def synth(
    out: Path = typer.Option(..., help="Folder to write the dataset into (CASME II layout + ground truth)."),
    subjects: int = typer.Option(3, help="Number of synthetic subjects."),
    clips: int = typer.Option(4, help="Micro-expression clips per subject."),
    macro_clips: int = typer.Option(2, help="Macro-expression clips per subject (for DEM pretraining)."),
    seed: int = typer.Option(0, help="Dataset seed: the same seed gives byte-identical files."),
    profile: str = typer.Option("smoke", help="Size profile: smoke | cpu | full."),
    version: int = typer.Option(1, "--version", help="1: painted mask at the profile's image size; 2: real skin "
                                "(textures from real face photos) in a 640x480 CASME II frame."),
) -> None:
    """Generate the synthetic micro-expression benchmark with 3D ground truth."""
    from microface.data.synth import config_for_profile, generate

    try:
        config = config_for_profile(profile, subjects=subjects, clips=clips, macro_clips=macro_clips, seed=seed,
                                    version=version)
        generate(out, config)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"synthetic benchmark ready in {out} (config hash {config.digest()})")


@app.command()
def prepare(
    dataset: str = typer.Option(..., "--dataset", help="dataset name, as for `microface index`"),
    root: Path = typer.Option(..., "--root", help="the folder the dataset was unpacked to"),
    out: Path = typer.Option(..., "--out", help="cache folder: manifest.json + clips/<dataset>/<subject>/<clip>.npz"),
    size: int = typer.Option(224, "--size", help="aligned crop size in pixels (fdp 64, mol 144, reconstruction 224)"),
    gray: bool = typer.Option(False, "--gray/--rgb", help="store gray or RGB crops"),
    center_crop: Optional[int] = typer.Option(None, "--center-crop", help="keep only the centre N x N of the crop (mol: 128)"),
    flow: str = typer.Option("dis", "--flow", help="optical flow: dis | tvl1 | none"),
    flow_mode: str = typer.Option("onset", "--flow-mode", help="onset: onset -> every frame; consecutive: t -> t+1"),
    dis_preset: str = typer.Option("medium", "--dis-preset", help="DIS preset: ultrafast | fast | medium (run at full resolution)"),
    workers: int = typer.Option(1, "--workers", help="clips processed in parallel (processes)"),
    on_error: str = typer.Option("raise", "--on-error", help="raise: stop at the first bad clip; skip: count, log and go on"),
    kind: Optional[str] = typer.Option(None, "--kind", help="micro / macro / all (synth, casme2x, casme3)"),
) -> None:
    """Align and crop every clip on its onset frame, compute optical flow, and cache one .npz per clip (resumable)."""
    import logging

    from microface.data.datasets import load_dataset
    from microface.data.preprocess import ClipError
    from microface.data.preprocess import prepare as prepare_clips

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {"on_error": on_error} if kind is None else {"on_error": on_error, "kind": kind}
    try:
        records = load_dataset(dataset, root, **options)
        summary = prepare_clips(records, out, size=size, gray=gray, flow_method=None if flow == "none" else flow,
                                flow_mode=flow_mode, workers=workers, on_error=on_error, center_crop=center_crop,
                                dis_preset=dis_preset)
    except (ClipError, ValueError, FileNotFoundError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(str(summary))
    for key, reason in list(summary.skipped.items())[:10]:
        typer.echo(f"  skipped {key}: {reason}")


@app.command("mer-fold")
def mer_fold(
    config: Path = typer.Option(..., "--config", help="the run's config: results/<profile>/config.yaml, as the "
                                "Snakefile writes it (or any profile YAML)"),
    model: str = typer.Option(..., "--model", help="fdp | mol | trajectory (one of the config's mer.models)"),
    holdout: str = typer.Option(..., "--holdout", help="the held-out subject: <dataset>/<subject> (synth/sub01) or "
                                "its file name (synth_sub01)"),
    results: Optional[Path] = typer.Option(None, "--results", help="results/<profile> holding notebook 00's "
                                           "prepared/ (default: the config file's folder)"),
    preset: str = typer.Option("default", "--preset", help="default, or reference (mer.reference: FDP and MOL with "
                               "the public code's settings and its test-peek epoch choice)"),
) -> None:
    """Train and test ONE leave-one-subject-out fold of notebook 03 (MER) and write its predictions to
    RESULTS/mer/MODEL/fixed-epoch/folds/SUBJECT.json (--preset reference: RESULTS/mer/reference/MODEL/test-peek/
    folds/SUBJECT.json); notebook 03 merges the folds into the same table it makes alone."""
    from microface.config import load_config
    from microface.experiments.mer import run_mer_fold

    try:
        values = load_config(config)
        path = run_mer_fold(profile=values["profile"], seed=values["seed"], device=values["device"],
                            data=values["data"], mer=values["mer"], results_dir=results or config.parent,
                            model=model, holdout=holdout, preset=preset)
    except (ValueError, FileNotFoundError, KeyError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"wrote {path}")


@app.command("real-video")
def real_video(
    config: Path = typer.Option(..., "--config", help="the run's config: results/<profile>/config.yaml, as the "
                                "Snakefile writes it (or any profile YAML)"),
    video: str = typer.Option(..., "--video", help="one of real.videos by its name in the table (single_face) or "
                              "its file name"),
    results: Optional[Path] = typer.Option(None, "--results", help="results/<profile> whose trained models are "
                                           "scored (default: the config file's folder)"),
) -> None:
    """Reconstruct and score ONE video of notebook 07 (real footage) with every method and write its rows, overlay
    strip and AU curves to RESULTS/real/videos/VIDEO.json + .npz; notebook 07 merges the videos into the same table
    it makes alone."""
    from microface.config import load_config
    from microface.reconstruct.real_footage import run_real_video

    try:
        values = load_config(config)
        path = run_real_video(profile=values["profile"], seed=values["seed"], device=values["device"],
                              real=values["real"], results_dir=results or config.parent, video=video)
    except (ValueError, FileNotFoundError, KeyError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"wrote {path}")


@app.command()
def reconstruct(
    video: Path = typer.Argument(..., help="a video OpenCV can read (mp4, avi, mov, ...), a photo (.jpg, .png, ...) or "
                                           "a folder of frames (img1.jpg, img2.jpg, ... in numeric order, as in the "
                                           "ME datasets); one face"),
    out: Path = typer.Option(..., "--out", help="output folder, written atomically (a previous reconstruction there is replaced)"),
    stage: str = typer.Option("fit", "--stage", help="fit: the face model fit to the tracked landmarks (identity per "
                              "video, per-frame pose, camera, AUs, jaw); dem: + DEM's motion-driven change from the "
                              "fit's onset; dgmd: + DGMD's per-vertex refinement; encoder: the learned per-frame "
                              "encoder (the seed's baseline)"),
    start: str = typer.Option("0", "--start",
                              help="0: the first frame must hold a face; auto: start at the first frame that "
                                   "holds one"),
    fps: Optional[float] = typer.Option(None, "--fps", help="frames per second of a frame folder (default 200, the ME "
                                        "datasets' rate) or photo; overrides a video's own"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="model bundle (default: microface/assets/checkpoints/open_dem_dgmd.pt)"),
    face_model: str = typer.Option("open", "--face-model", help="open | flame (the one the checkpoint was trained for)"),
    flame: Optional[Path] = typer.Option(None, "--flame", help="FLAME model pickle, needed with --face-model flame"),
    flame_embedding: Optional[Path] = typer.Option(None, "--flame-embedding",
                                                   help="FLAME's mediapipe_landmark_embedding.npz, needed to fit "
                                                        "FLAME (all stages but encoder)"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames",
                                             help="reconstruct at most this many frames (from the start)"),
    window: int = typer.Option(16, "--window", help="frames per DEM clip; each window starts at its own onset"),
    mesh_format: str = typer.Option("obj", "--format", help="per-frame mesh files: obj | ply | none (params.npz holds every frame's vertices either way)"),
    device: str = typer.Option("cpu", "--device", help="torch device of the models: cpu, cuda, ..."),
) -> None:
    """Reconstruct a 3D face mesh per frame into OUT: preview.png (look at it first: the mesh over 6 frames),
    meshes/, params.npz (with vertices_px, every vertex in source pixels), landmarks.npz, viewer.html, summary.json."""
    from microface.reconstruct.pipeline import reconstruct_video, summary_lines

    try:
        summary = reconstruct_video(video, out, checkpoint=checkpoint, face_model=face_model, flame_path=flame,
                                    max_frames=max_frames, window=window, mesh_format=mesh_format, device=device,
                                    stage=stage, start=start, fps=fps, mediapipe_embedding=flame_embedding)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1)
    for line in summary_lines(summary, out):
        typer.echo(line)


if __name__ == "__main__":
    app()
