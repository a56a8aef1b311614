"""The Snakefile's routes: a user's own config reaches every notebook, and the Slurm profile is one the executor
plugin accepts.

The dry runs use a scratch working directory (``-d``; the notebooks and configs linked in) so the parse-time config
handoff writes there, not into the repository's ``results/``, and never meets a real run's ``.snakemake/`` lock.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from microface.config import config_text, load_config, write_config

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
NOTEBOOK_RULES = ["data", "dem_pretrain", "dgmd_refine", "mer", "evaluate", "ablations", "figures", "real_footage"]
# mer_fold: one LOSO fold of notebook 03 per job, merged by rule mer; real_footage_video: one video of notebook 07
# per job, merged by rule real_footage
JOB_RULES = NOTEBOOK_RULES + ["mer_fold", "real_footage_video"]
GPU_RULES = {"dem_pretrain", "dgmd_refine", "mer_fold", "evaluate", "ablations", "figures", "real_footage_video"}

needs_snakemake = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (pip install -e .[notebooks])")


# a job's command as a -p dry run prints it, without the MICROFACE_PROGRESS=log prefix every job has
JOB_COMMAND = r"^\s*(?:Shell command:\s*)?(?:MICROFACE_PROGRESS=log )?(microface {} .*)$"

def workdir(tmp_path: Path) -> Path:
    """A scratch working directory holding links to the repository's notebooks and configs."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("notebooks", "config"):
        (work / name).symlink_to(ROOT / name)
    return work


def dry_run(work: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake -n -p all ARGS`` from the repository root, working in ``work``."""
    command = [SNAKEMAKE, "-n", "-p", "all", "--cores", "1", "-s", str(ROOT / "Snakefile"), "-d", str(work), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def data_ran(work: Path, profile: str, subjects: dict[str, bool]) -> None:
    """Pretend rule ``data`` (a checkpoint) has run in ``work``: its notebook and an index.csv with two clips per
    subject, labelled or not (``subjects``: name -> labelled), newer than the config a first dry run wrote."""
    results = work / "results" / profile
    (results / "notebooks").mkdir(parents=True, exist_ok=True)
    rows = ["dataset,subject,clip_id,label"]
    rows += [f"synth,{name},EP0{i},{'happiness' if labelled else ''}" for name, labelled in subjects.items()
             for i in (1, 2)]
    (results / "index.csv").write_text("\n".join(rows) + "\n")
    (results / "notebooks" / "00_data.ipynb").write_text("{}")


def job_blocks(output: str) -> list[str]:
    """The job blocks a ``-p`` dry run prints, one per job (each from its ``rule`` / ``checkpoint`` line)."""
    return re.split(r"\n(?=\[|rule |checkpoint )", output)


def merge_job(output: str, rule: str) -> tuple[str, list[str]]:
    """The first ``rule`` job block of a ``-p`` dry run and its input paths."""
    block = next(block for block in job_blocks(output) if re.search(rf"^rule {rule}:", block, flags=re.M))
    return block, re.search(r"^\s*input: (.*)$", block, flags=re.M).group(1).split(", ")


def fold_jobs(output: str, rule: str = "mer_fold") -> list[tuple[str, str, str]]:
    """(model, holdout, shell command) of every ``rule`` job (mer_fold, mer_reference_fold) a ``-p`` dry run prints."""
    jobs = []
    for block in job_blocks(output):
        if re.search(rf"^rule {rule}:", block, flags=re.M):
            wildcards = dict(re.findall(r"(\w+)=([\w.-]+)", re.search(r"wildcards: (.*)", block).group(1)))
            command = re.search(JOB_COMMAND.format("mer-fold"), block, flags=re.M).group(1)
            jobs.append((wildcards["model"], wildcards["holdout"], command))
    return sorted(jobs)


def papermill_lines(output: str) -> list[str]:
    """The notebook command lines a ``-p`` dry run prints (``Shell command: papermill ...``)."""
    lines = (line.strip().removeprefix("Shell command:").strip() for line in output.splitlines())
    # every job's command starts with MICROFACE_PROGRESS=log (progress bars as whole lines in its log)
    lines = [line.removeprefix("MICROFACE_PROGRESS=log ") for line in lines]
    return [line for line in lines if line.startswith("papermill ")]


def user_config(tmp_path: Path, **changes) -> Path:
    """config/smoke.yaml with top-level ``changes`` (a None value drops that section), as tmp_path/my.yaml."""
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@needs_snakemake
def test_own_config_reaches_every_notebook(tmp_path):
    work = workdir(tmp_path)
    result = dry_run(work, "--configfile", str(user_config(tmp_path, profile="mine", seed=7)))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = papermill_lines(result.stdout)
    assert len(lines) == len(NOTEBOOK_RULES), result.stdout[-3000:]
    for line in lines:
        assert "-f results/mine/config.yaml" in line and "-p results_dir results/mine" in line, line
        assert "config/smoke.yaml" not in line and "my.yaml" not in line, line
    handed = load_config(work / "results" / "mine" / "config.yaml")
    assert handed["profile"] == "mine" and handed["seed"] == 7
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    assert {**handed, "profile": "smoke", "seed": smoke["seed"]} == smoke  # the rest exactly as the user wrote it


@needs_snakemake
def test_config_override_arrives_and_unchanged_config_is_not_rewritten(tmp_path):
    work = workdir(tmp_path)
    my = str(user_config(tmp_path, profile="mine", seed=7))
    result = dry_run(work, "--configfile", my, "--config", "seed=9")
    assert result.returncode == 0, result.stderr[-3000:]
    handed = work / "results" / "mine" / "config.yaml"
    assert load_config(handed)["seed"] == 9
    assert all("-f results/mine/config.yaml" in line for line in papermill_lines(result.stdout))
    stamp = handed.stat().st_mtime_ns
    assert dry_run(work, "--configfile", my, "--config", "seed=9").returncode == 0
    assert handed.stat().st_mtime_ns == stamp, "the same config rewrote results/mine/config.yaml"


@needs_snakemake
def test_config_missing_a_section_is_refused(tmp_path):
    work = workdir(tmp_path)
    result = dry_run(work, "--configfile", str(user_config(tmp_path, profile="mine", dem=None)))
    assert result.returncode != 0
    assert "'dem' is a required property" in result.stderr + result.stdout, result.stderr[-3000:]
    assert not (work / "results" / "mine").exists()


@needs_snakemake
def test_unsafe_profile_name_is_refused(tmp_path):
    work = workdir(tmp_path)
    result = dry_run(work, "--configfile", str(user_config(tmp_path, profile="../elsewhere")))
    assert result.returncode != 0
    assert "does not match" in result.stderr + result.stdout, result.stderr[-3000:]


def test_write_config_rewrites_only_on_change(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    path = tmp_path / "results" / "smoke" / "config.yaml"
    assert write_config(config, path) is True
    assert yaml.safe_load(path.read_text()) == config
    os.utime(path, ns=(1, 1))
    assert write_config(config, path) is False and path.stat().st_mtime_ns == 1
    assert write_config({**config, "seed": 3}, path) is True
    assert yaml.safe_load(path.read_text())["seed"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left beside it
    assert config_text(config).splitlines()[0] == "profile: smoke"  # keys keep the config's order


# ----------------------------------------------------------------------------------------------- Slurm
def slurm_plugin():
    """The installed executor plugin's registry entry, or skip naming what to install."""
    try:
        from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

        return ExecutorPluginRegistry().get_plugin("slurm")
    except Exception as err:  # noqa: BLE001 - any failure means: not installed here
        pytest.skip(f"snakemake-executor-plugin-slurm is not installed ({err}); pip install -e .[cluster]")


# Resources Snakemake itself knows (snakemake.resources / the docs' "Standard Resources")
SNAKEMAKE_RESOURCES = {"mem", "mem_mb", "mem_mib", "disk", "disk_mb", "disk_mib", "runtime", "tmpdir", "threads",
                       "_cores", "_nodes"}


def plugin_resources() -> set[str]:
    """Every resource name the installed slurm plugin reads (``resources.get("x")`` / ``resources.x``)."""
    import snakemake_executor_plugin_slurm as plugin

    names = set()
    for source in Path(plugin.__file__).parent.glob("*.py"):
        text = source.read_text()
        names |= set(re.findall(r'resources\.get\(\s*"(\w+)"', text))
        names |= set(re.findall(r"resources\.([a-z]\w*)\b(?!\()", text))
    return names


def profile() -> dict:
    return yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())


def test_slurm_profile_keys_are_ones_snakemake_and_the_plugin_accept():
    plugin = slurm_plugin()
    from snakemake.cli import get_argument_parser

    options = {name for action in get_argument_parser()._actions for name in action.option_strings}
    settings = {f"--slurm-{field.name.replace('_', '-')}" for field in dataclasses.fields(plugin.settings_cls)}
    config = profile()
    for key in config:
        assert f"--{key}" in options, f"profiles/slurm/config.yaml: {key!r} is no snakemake option"
        if key.startswith("slurm-"):
            assert f"--{key}" in settings, f"profiles/slurm/config.yaml: {key!r} is no setting of the slurm plugin"
    assert config["executor"] == "slurm"

    accepted = SNAKEMAKE_RESOURCES | plugin_resources()
    assert {"slurm_partition", "gpu", "gpu_model", "slurm_extra", "cpus_per_task"} <= accepted  # the parse found them
    rules = set(re.findall(r"^(?:rule|checkpoint) (\w+):", (ROOT / "Snakefile").read_text(), flags=re.M))
    resources = [("default-resources", config["default-resources"])]
    resources += [(f"set-resources/{rule}", values) for rule, values in config.get("set-resources", {}).items()]
    for where, values in resources:
        unknown = set(values) - accepted
        assert not unknown, f"profiles/slurm/config.yaml {where}: {sorted(unknown)} are read by neither " \
                            f"snakemake nor the slurm plugin"
    assert set(config.get("set-resources", {})) <= rules and set(config.get("set-threads", {})) <= rules
    assert set(config["set-threads"]) == set(JOB_RULES), "every notebook and fold rule needs its threads on the cluster"


def test_slurm_profile_gpu_requests_pass_the_plugins_own_checks():
    slurm_plugin()
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    config = profile()
    for rule in JOB_RULES:
        values = {**config["default-resources"], **config.get("set-resources", {}).get(rule, {})}
        job = SimpleNamespace(resources=SimpleNamespace(**values, get=values.get))
        validate_slurm_extra(job)  # raises on --gres / --gpus / --partition ... in slurm_extra
        gres = set_gres_string(job)
        if rule in GPU_RULES:
            model = values.get("gpu_model")
            assert gres.strip() == f"--gpus={model + ':' if model else ''}{values['gpu']}", (rule, gres)
        else:
            assert "gpu" not in gres and "gpu" not in values, (rule, gres)


@needs_snakemake
def test_slurm_profile_plans_gpu_and_cpu_jobs(tmp_path):
    slurm_plugin()
    work = workdir(tmp_path)
    args = ("--profile", str(ROOT / "profiles" / "slurm"), "--configfile", str(ROOT / "config" / "full.yaml"))
    first = dry_run(work, *args)  # a fresh run: every notebook; the folds wait for the checkpoint `data`
    assert first.returncode == 0, first.stderr[-3000:]
    data_ran(work, "full", {"sub01": True, "sub02": True})
    second = dry_run(work, *args)  # rule data has run: the folds are jobs now
    assert second.returncode == 0, second.stderr[-3000:]
    planned = {}
    for block in job_blocks(first.stdout + "\n" + second.stdout):
        rule = re.search(r"^(?:rule|checkpoint) (\w+):", block, flags=re.M)
        resources = re.search(r"^\s*resources: (.*)$", block, flags=re.M)
        if rule and resources:
            planned[rule.group(1)] = dict(item.split("=", 1) for item in resources.group(1).split(", "))
    assert set(JOB_RULES) <= set(planned), (first.stdout + second.stdout)[-3000:]
    for rule in JOB_RULES:  # GPU jobs to the GPU partition with one GPU, the others to the CPU partition
        expected = ("gpu", "1") if rule in GPU_RULES else ("cpu", None)
        assert (planned[rule]["slurm_partition"], planned[rule].get("gpu")) == expected, (rule, planned[rule])
    assert all("-f results/full/config.yaml" in line for line in papermill_lines(first.stdout))
    assert [(model, holdout) for model, holdout, _ in fold_jobs(second.stdout)] == [
        (model, subject) for model in ("fdp", "mol", "trajectory") for subject in ("synth_sub01", "synth_sub02")]


@needs_snakemake
def test_mer_folds_are_jobs_of_their_own_merged_by_notebook_03(tmp_path):
    """Once rule data has written the index, every (model, labelled subject) is a fold job of its own that reads the
    handed config, and notebook 03 (rule mer) waits for all of them."""
    work = workdir(tmp_path)
    my = str(user_config(tmp_path, profile="mine"))
    assert dry_run(work, "--configfile", my).returncode == 0
    data_ran(work, "mine", {"sub01": True, "sub02": False, "sub10": True})  # sub02: no labelled clip, no fold
    result = dry_run(work, "--configfile", my)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = fold_jobs(result.stdout)
    expected = [(model, holdout) for model in ("fdp", "mol", "trajectory") for holdout in ("synth_sub01",
                                                                                        "synth_sub10")]
    assert [(model, holdout) for model, holdout, _ in jobs] == expected, result.stdout[-3000:]
    for model, holdout, command in jobs:
        assert command.startswith(f"microface mer-fold --config results/mine/config.yaml --model {model} "
                                   f"--holdout {holdout} "), command
    merge, inputs = merge_job(result.stdout, "mer")
    folds = sorted(path for path in inputs if "/folds/" in path and "/reference/" not in path)
    assert folds == sorted(f"results/mine/mer/{m}/fixed-epoch/folds/{h}.json" for m, h in expected), merge
    assert "gpu" not in re.search(r"^\s*resources: (.*)$", merge, flags=re.M).group(1)  # merging needs no GPU


@needs_snakemake
def test_reference_folds_are_jobs_too_when_mer_reference_is_on(tmp_path):
    """mer.reference: FDP's and MOL's reference folds (the public code's settings, test-peek) are jobs of their own,
    in their own folder, and notebook 03 waits for them too; with it off there are none."""
    import yaml

    work = workdir(tmp_path)
    mer = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["mer"]
    for reference in (True, False):
        my = str(user_config(tmp_path, profile="mine", mer={**mer, "reference": reference}))
        assert dry_run(work, "--configfile", my).returncode == 0
        data_ran(work, "mine", {"sub01": True, "sub10": True})
        result = dry_run(work, "--configfile", my)
        assert result.returncode == 0, result.stderr[-3000:]
        jobs = fold_jobs(result.stdout, "mer_reference_fold")
        expected = [(m, h) for m in ("fdp", "mol") for h in ("synth_sub01", "synth_sub10")] if reference else []
        assert [(model, holdout) for model, holdout, _ in jobs] == expected, result.stdout[-3000:]
        for model, holdout, command in jobs:
            assert command.startswith(f"microface mer-fold --config results/mine/config.yaml --model {model} "
                                      f"--holdout {holdout} --preset reference"), command
        merge, inputs = merge_job(result.stdout, "mer")
        assert sorted(path for path in inputs if "/reference/" in path) == sorted(
            f"results/mine/mer/reference/{m}/test-peek/folds/{h}.json" for m, h in expected), merge


@needs_snakemake
def test_real_footage_videos_are_jobs_of_their_own_merged_by_notebook_07(tmp_path):
    """Every video of real.videos (a folder of videos listed at parse time) is a job of its own that reads the
    handed config, and notebook 07 (rule real_footage) waits for all of them without a GPU."""
    work = workdir(tmp_path)
    shelf = tmp_path / "shelf"
    (shelf / "sub02").mkdir(parents=True)
    (shelf / "sub02" / "img1.jpg").write_bytes(b"")
    (shelf / "talk 1.mp4").write_bytes(b"")
    real = {**yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["real"],
            "videos": ["pyfeat:single_face.mp4", str(shelf)]}
    result = dry_run(work, "--configfile", str(user_config(tmp_path, profile="mine", real=real)))
    assert result.returncode == 0, result.stderr[-3000:]
    commands = sorted(re.search(JOB_COMMAND.format("real-video"), block, flags=re.M).group(1)
                      for block in job_blocks(result.stdout) if re.search(r"^rule real_footage_video:", block, flags=re.M))
    expected = ["single_face", "sub02", "talk_1"]
    assert commands == [f"microface real-video --config results/mine/config.yaml --video {name} > "
                        f"results/mine/logs/07_real_footage/{name}.log 2>&1" for name in sorted(expected)], commands
    merge, inputs = merge_job(result.stdout, "real_footage")
    assert sorted(path for path in inputs if "/videos/" in path) == sorted(
        f"results/mine/real/videos/{name}.{suffix}" for name in expected for suffix in ("json", "npz")), merge
    assert "gpu" not in re.search(r"^\s*resources: (.*)$", merge, flags=re.M).group(1)  # merging needs no GPU


def test_any_profile_name_uses_the_synth_preset_it_names(tmp_path, monkeypatch):
    """A user's profile `mine` generates the synthetic benchmark of the preset its config names (not of its name)."""
    import microface.data.synth as synth_package
    from microface.data.synth import PROFILES
    from microface.experiments.coarse import benchmark_root

    made = {}
    monkeypatch.setattr(synth_package, "generate", lambda root, config, **_: made.setdefault("config", config) and root)
    synth = {"preset": "cpu", "subjects": 2, "clips": 1, "macro_clips": 0}
    benchmark_root(tmp_path, {"dataset": "synth", "root": None}, synth, "mine", seed=3, show_progress=False)
    config = made["config"]
    assert config.image_size == PROFILES["cpu"]["image_size"] and config.seed == 3 and config.subjects == 2
