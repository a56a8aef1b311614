# microface: the reproduce chain. `snakemake all --cores 2` runs the smoke profile; choose another with
# `--configfile config/cpu.yaml`, your own copy of one, `--config key=value` overrides (or full.yaml on GPU nodes
# with `--profile profiles/slurm`).
import os
import re

from snakemake.utils import validate

from microface.config import write_config
from microface.experiments.mer_plan import PROTOCOL as MER_PROTOCOL, REFERENCE_DIR as MER_REFERENCE_DIR, \
    REFERENCE_MODELS as MER_REFERENCE_MODELS, REFERENCE_PROTOCOL as MER_REFERENCE_PROTOCOL, fold_file_name, \
    mer_fold_plan, mer_models, mer_reference_fold_plan
from microface.experiments.real_plan import real_video_plan, video_file_name

# config/smoke.yaml only when no --configfile is given: merged under the user's file it would fill a section the
# user left out with smoke values, where the schema should refuse the file instead
if not workflow.overwrite_configfiles:

    configfile: "config/smoke.yaml"


validate(config, "config/schema.yaml")

PROFILE = config["profile"]
RESULTS = f"results/{PROFILE}"
# The one handoff: the validated, merged config (config file(s) + --config overrides) that every notebook reads
# with `papermill -f`. Rewritten only when its text changes, so an unchanged config reruns nothing.
CONFIG_FILE = f"{RESULTS}/config.yaml"
write_config(config, CONFIG_FILE)
NOTEBOOKS = f"{RESULTS}/notebooks"
# MICROFACE_PROGRESS=log: every job (papermill notebooks, fold and video jobs below) writes its progress bars as
# whole lines, readable in its log (microface.utils.runtime.progress)
PAPERMILL = "MICROFACE_PROGRESS=log papermill --log-output --no-progress-bar -k microface"
# Every notebook rule claims all cores, so Snakemake runs them one at a time: two torch jobs sharing the cores,
# each with a thread per core, were measured 10-25x slower per step than one job alone (thread oversubscription).
ALL_CORES = max(1, min(workflow.cores or 1, os.cpu_count() or 1))  # profiles/slurm sets threads per rule


def results_folder(wildcards, output):
    """results/<profile>, inferred from the executed notebook's path (results/<profile>/notebooks/NAME)."""
    return os.path.dirname(os.path.dirname(output.notebook))


rule all:
    input:
        f"{NOTEBOOKS}/00_data.ipynb",
        f"{NOTEBOOKS}/01_dem_pretrain.ipynb",
        f"{NOTEBOOKS}/02_dgmd_refine.ipynb",
        f"{NOTEBOOKS}/03_mer.ipynb",
        f"{NOTEBOOKS}/04_evaluate.ipynb",
        f"{NOTEBOOKS}/05_ablations.ipynb",
        f"{NOTEBOOKS}/06_figures.ipynb",
        f"{NOTEBOOKS}/07_real_footage.ipynb",


# a checkpoint: the LOSO folds of notebook 03 (one job each, below) are the subjects of the index it writes
checkpoint data:
    threads: ALL_CORES
    input:
        notebook="notebooks/00_data.ipynb",
        config=CONFIG_FILE,
    output:
        notebook=f"{NOTEBOOKS}/00_data.ipynb",
        index=f"{RESULTS}/index.csv",
    log:
        f"{RESULTS}/logs/00_data.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


rule dem_pretrain:
    threads: ALL_CORES
    input:
        notebook="notebooks/01_dem_pretrain.ipynb",
        config=CONFIG_FILE,
        index=rules.data.output.index,
    output:
        notebook=f"{NOTEBOOKS}/01_dem_pretrain.ipynb",
        table=f"{RESULTS}/dem/coarse_table.csv",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/01_dem_pretrain.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


rule dgmd_refine:
    threads: ALL_CORES
    input:
        notebook="notebooks/02_dgmd_refine.ipynb",
        config=CONFIG_FILE,
        coarse=rules.dem_pretrain.output.table,
    output:
        notebook=f"{NOTEBOOKS}/02_dgmd_refine.ipynb",
        table=f"{RESULTS}/dgmd/refine_table.csv",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/02_dgmd_refine.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


MER_FOLD = f"{RESULTS}/mer/{{model}}/{MER_PROTOCOL}/folds/{{holdout}}.json"


def mer_fold_files(wildcards):
    """Every (model, held-out subject) fold file of notebook 03, once rule `data` has written the index."""
    results = os.path.dirname(checkpoints.data.get().output.index)
    plan = mer_fold_plan(config["data"], config["mer"], results)
    return [MER_FOLD.format(model=model, holdout=fold_file_name(subject)) for model, subject in plan]


MER_REFERENCE_FOLD = f"{RESULTS}/mer/{MER_REFERENCE_DIR}/{{model}}/{MER_REFERENCE_PROTOCOL}/folds/{{holdout}}.json"


def mer_reference_fold_files(wildcards):
    """The reference runs' fold files (mer.reference: FDP and MOL with the public code's settings, test-peek)."""
    results = os.path.dirname(checkpoints.data.get().output.index)
    plan = mer_reference_fold_plan(config["data"], config["mer"], results)
    return [MER_REFERENCE_FOLD.format(model=model, holdout=fold_file_name(subject)) for model, subject in plan]


# One LOSO fold of notebook 03: a cluster runs them side by side, a laptop in turn (each claims all cores); every
# fold seeds itself, so a fold gives the same predictions here as inside the notebook's loop.
rule mer_fold:
    threads: ALL_CORES
    input:
        config=CONFIG_FILE,
        index=rules.data.output.index,
    output:
        fold=MER_FOLD,
    wildcard_constraints:
        model="|".join(mer_models(config["data"], config["mer"])[0]),
        holdout=r"[A-Za-z0-9_.-]+",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/03_mer/{{model}}/{{holdout}}.log",
    shell:  # the fold reads notebook 00's prepared/ beside the config: results/<profile>
        "MICROFACE_PROGRESS=log microface mer-fold --config {input.config} --model {wildcards.model} --holdout {wildcards.holdout} "
        "> {log} 2>&1"


# With mer.reference: one fold of FDP or MOL with the public code's settings and its test-peek epoch choice (labelled).
rule mer_reference_fold:
    threads: ALL_CORES
    input:
        config=CONFIG_FILE,
        index=rules.data.output.index,
    output:
        fold=MER_REFERENCE_FOLD,
    wildcard_constraints:
        model="|".join(MER_REFERENCE_MODELS),
        holdout=r"[A-Za-z0-9_.-]+",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/03_mer/{MER_REFERENCE_DIR}/{{model}}/{{holdout}}.log",
    shell:
        "MICROFACE_PROGRESS=log microface mer-fold --config {input.config} --model {wildcards.model} --holdout {wildcards.holdout} "
        "--preset reference > {log} 2>&1"


# Notebook 03 merges the folds into the table (it trains a fold itself only when its file is missing, as when the
# notebook runs alone from JupyterLab), so it needs no GPU.
rule mer:
    threads: ALL_CORES
    input:
        notebook="notebooks/03_mer.ipynb",
        config=CONFIG_FILE,
        index=rules.data.output.index,
        folds=mer_fold_files,
        reference_folds=mer_reference_fold_files,
    output:
        notebook=f"{NOTEBOOKS}/03_mer.ipynb",
        table=f"{RESULTS}/mer/mer_table.csv",
    log:
        f"{RESULTS}/logs/03_mer.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


rule evaluate:
    threads: ALL_CORES
    input:
        notebook="notebooks/04_evaluate.ipynb",
        config=CONFIG_FILE,
        coarse=rules.dem_pretrain.output.table,
        refine=rules.dgmd_refine.output.table,
    output:
        notebook=f"{NOTEBOOKS}/04_evaluate.ipynb",
        table=f"{RESULTS}/evaluate/main_table.csv",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/04_evaluate.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


rule ablations:
    threads: ALL_CORES
    input:
        notebook="notebooks/05_ablations.ipynb",
        config=CONFIG_FILE,
        coarse=rules.dem_pretrain.output.table,
        refine=rules.dgmd_refine.output.table,
    output:
        notebook=f"{NOTEBOOKS}/05_ablations.ipynb",
        table=f"{RESULTS}/ablations/ablation_table.csv",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/05_ablations.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


rule figures:
    threads: ALL_CORES
    input:
        notebook="notebooks/06_figures.ipynb",
        config=CONFIG_FILE,
        main=rules.evaluate.output.table,
        ablations=rules.ablations.output.table,
        mer=rules.mer.output.table,
    output:
        notebook=f"{NOTEBOOKS}/06_figures.ipynb",
        sequence=f"figures/{PROFILE}/qualitative_sequence.png",
    resources:
        gpu=1,  # runs DEM and DGMD over the test clips on the config's device (cuda in config/full.yaml)
    log:
        f"{RESULTS}/logs/06_figures.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"


# Notebook 07's videos, known from the config (real.videos; a folder of videos is listed now), each a job of its own
REAL_VIDEOS = [video_file_name(name) for name, _ in real_video_plan(config["real"]["videos"], os.getcwd())]
REAL_VIDEO = f"{RESULTS}/real/videos/{{video}}"


# One video of notebook 07, every method on it: a cluster runs them side by side, a laptop in turn (each claims all
# cores); every video seeds itself and its FID uses its own frames only, so it gives the same rows as inside the
# notebook's loop. After evaluate, whose trained models (the profile's DEM, DGMD and FIELDS) it scores.
rule real_footage_video:
    threads: ALL_CORES
    input:
        config=CONFIG_FILE,
        main=rules.evaluate.output.table,
    output:
        record=f"{REAL_VIDEO}.json",
        arrays=f"{REAL_VIDEO}.npz",
    wildcard_constraints:
        video="|".join(re.escape(name) for name in REAL_VIDEOS),
    resources:
        gpu=1,  # runs the encoder, DEM, DGMD and the Inception network on the config's device
    log:
        f"{RESULTS}/logs/07_real_footage/{{video}}.log",
    shell:  # the video job scores the models of results/<profile>, the config's folder
        "MICROFACE_PROGRESS=log microface real-video --config {input.config} --video {wildcards.video} > {log} 2>&1"


# Notebook 07 merges the videos into the table, overlays and AU curves (it computes a video itself only when its
# files are missing, as when the notebook runs alone from JupyterLab), so it needs no GPU.
rule real_footage:
    threads: ALL_CORES
    input:
        notebook="notebooks/07_real_footage.ipynb",
        config=CONFIG_FILE,
        main=rules.evaluate.output.table,
        videos=expand(f"{REAL_VIDEO}.{{suffix}}", video=REAL_VIDEOS, suffix=("json", "npz")),
    output:
        notebook=f"{NOTEBOOKS}/07_real_footage.ipynb",
        table=f"{RESULTS}/real/real_table.csv",
    log:
        f"{RESULTS}/logs/07_real_footage.log",
    params:
        papermill=PAPERMILL,
        results=results_folder,
    shell:
        "{params.papermill} {input.notebook} {output.notebook} -f {input.config} -p results_dir {params.results} > {log} 2>&1"
