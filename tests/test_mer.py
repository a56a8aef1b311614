"""LOSO driver end to end on tiny synthetic samples, protocols, resume; and the trajectory classifier."""
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from microface.experiments.mer import MODELS, MERRunConfig, MERSamples, run_loso
from microface.models.trajectory import TrajectoryClassifier, TrajectoryConfig, trajectory_loss

CLASSES = ("negative", "positive", "surprise")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    torch.manual_seed(0)


def make_samples(n_subjects=3, per_subject=4, signal=3.0, seed=0) -> MERSamples:
    """Random tensors whose class shows as a class-specific offset (trajectory), a blob's position (clips,
    a class-specific motion, so every model has something to learn."""
    g = torch.Generator().manual_seed(seed)
    n = n_subjects * per_subject
    labels = torch.arange(n) % 3
    trajectory = torch.randn(n, 5, 4, generator=g)
    trajectory[torch.arange(n), :, labels] += signal * torch.linspace(0, 1, 5)
    clips = 0.1 * torch.rand(n, 3, 1, 16, 16, generator=g)
    for i, label in enumerate(labels.tolist()):
        clips[i, 1:, 0, 4 * label:4 * label + 4, 4:8] += torch.tensor([0.5, 1.0]).view(2, 1, 1)
    flow = torch.randn(n, 2, 2, 16, 16, generator=g) * 0.1
    landmarks = torch.rand(n, 3, 68, 2, generator=g) * 8 + 4
    landmarks[:, :, 36:42, 0] -= 3
    landmarks[:, :, 42:48, 0] += 3
    return MERSamples(
        inputs={"trajectory": trajectory, "clips": clips, "sequence_flow": flow, "sequence_landmarks": landmarks},
        labels=labels,
        subjects=[f"sub{i // per_subject + 1}" for i in range(n)],
        datasets=["synthA" if i // per_subject < 2 else "synthB" for i in range(n)],
        clip_ids=[f"clip{i:02d}" for i in range(n)],
        class_names=CLASSES,
    )


TRAJ_CONFIG = {"epochs": 2, "batch_size": 4, "lr": 1e-2, "seed": 3,
               "model": {"n_expression": 4, "hidden": 8, "layers": 1, "dropout": 0.0}}


def test_loso_writes_protocol_labelled_tables_and_fold_times(tmp_path):
    samples = make_samples()
    result = run_loso("trajectory", samples, TRAJ_CONFIG, tmp_path)
    run_dir = tmp_path / "trajectory" / "fixed-epoch"
    assert result.out_dir == run_dir
    for name in ("predictions", "folds", "metrics", "confusion"):
        table = pd.read_csv(run_dir / f"{name}.csv")
        assert set(table["protocol"]) == {"fixed-epoch"}, name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["group"]) == ["synthA", "synthB", "all"]
    assert {"acc", "uf1", "uar", "wf1", "n"} <= set(metrics.columns)
    assert int(metrics.loc[metrics["group"] == "all", "n"].iloc[0]) == 12
    folds = pd.read_csv(run_dir / "folds.csv")
    assert list(folds["test_subject"]) == ["sub1", "sub2", "sub3"]
    assert bool((folds["train_seconds"] > 0).all()) and bool((folds["n_test"] == 4).all())
    assert bool((folds["selected_epoch"] == 1).all())  # fixed-epoch reports the last epoch
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert sorted(predictions["clip_id"]) == sorted(samples.clip_ids)  # each clip tested once
    assert bool((predictions["fold"] == predictions["subject"]).all())
    probs = predictions[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # the pooled "all" row equals a direct computation from the predictions
    acc = float((predictions["truth"] == predictions["predicted"]).mean())
    assert float(metrics.loc[metrics["group"] == "all", "acc"].iloc[0]) == pytest.approx(acc)
    confusion = pd.read_csv(run_dir / "confusion.csv")
    assert int(confusion[list(CLASSES)].to_numpy().sum()) == 12
    assert (run_dir / "checkpoints" / "sub2.pt").is_file()


def _counting(monkeypatch, name, fail_after=None):
    """Wrap a model's loss and logits to count calls; optionally raise mid-run to simulate an interruption."""
    calls = {"loss": 0, "logits": 0}
    spec = MODELS[name]

    def loss(model, batch):
        calls["loss"] += 1
        if fail_after is not None and calls["loss"] > fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return spec.loss(model, batch)

    def logits(model, batch):
        calls["logits"] += 1
        return spec.logits(model, batch)

    monkeypatch.setitem(MODELS, name, dataclasses.replace(spec, loss=loss, logits=logits))
    return calls


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    samples = make_samples()
    config = {**TRAJ_CONFIG, "epochs": 3}
    reference = run_loso("trajectory", samples, config, tmp_path / "straight")
    # 3 folds x 3 epochs x 2 batches = 18 steps; stop inside fold 2, epoch 2
    with monkeypatch.context() as patch:
        _counting(patch, "trajectory", fail_after=9)
        with pytest.raises(KeyboardInterrupt):
            run_loso("trajectory", samples, config, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "trajectory" / "fixed-epoch" / "checkpoints" / "sub2.pt").is_file()
    assert not (tmp_path / "resumed" / "trajectory" / "fixed-epoch" / "metrics.csv").exists()
    calls = _counting(monkeypatch, "trajectory")
    resumed = run_loso("trajectory", samples, config, tmp_path / "resumed")
    assert calls["loss"] == 18 - 8  # fold 1 and fold 2's first epoch are not trained again
    cols = ["clip_id", "predicted"] + [f"p_{c}" for c in CLASSES]
    pd.testing.assert_frame_equal(resumed.predictions[cols], reference.predictions[cols])
    # a finished run is not trained again, and keeps its recorded fold times
    calls = _counting(monkeypatch, "trajectory")
    again = run_loso("trajectory", samples, config, tmp_path / "resumed")
    assert calls["loss"] == 0
    assert list(again.folds["train_seconds"]) == list(resumed.folds["train_seconds"])


def test_changed_config_does_not_mix_with_old_checkpoints(tmp_path):
    samples = make_samples()
    run_loso("trajectory", samples, TRAJ_CONFIG, tmp_path)
    changed = {**TRAJ_CONFIG, "lr": 5e-3}
    with pytest.raises(ValueError, match="different config"):
        run_loso("trajectory", samples, changed, tmp_path)


def _scored_subjects(monkeypatch, samples) -> list[tuple[str, str]]:
    """Record each ``predict_logits`` pass as (held-out subject, "train") when it scores the other subjects'
    clips, or (its subject, "test") when it scores one subject's clips."""
    import microface.experiments.mer as mer_module

    calls: list[tuple[str, str]] = []
    original = mer_module.predict_logits
    subjects = np.asarray(samples.subjects)

    def recording(model, spec, samples_, indices, batch_size, device):
        seen = set(subjects[np.asarray(indices)])
        held_out = sorted(set(subjects) - seen)[0] if len(seen) > 1 else None
        calls.append((held_out, "train") if held_out else (next(iter(seen)), "test"))
        return original(model, spec, samples_, indices, batch_size, device)

    monkeypatch.setattr(mer_module, "predict_logits", recording)
    return calls


def test_fixed_epoch_never_looks_at_the_test_subject_but_test_peek_does(tmp_path, monkeypatch):
    samples = make_samples()
    config = {**TRAJ_CONFIG, "epochs": 3}
    scored = _scored_subjects(monkeypatch, samples)
    run_loso("trajectory", samples, config, tmp_path)
    # per fold: its training subjects after every epoch (the learning curve), its test subject once, after training
    assert scored == [call for held_out in ("sub1", "sub2", "sub3")
                      for call in [(held_out, "train")] * 3 + [(held_out, "test")]]
    scored.clear()
    peek = run_loso("trajectory", samples, config, tmp_path, protocol="test-peek")
    assert scored.count(("sub1", "test")) == 3  # every epoch of every fold
    assert peek.out_dir == tmp_path / "trajectory" / "test-peek"
    for table in (peek.predictions, peek.folds, peek.metrics, peek.confusion):
        assert set(table["protocol"]) == {"test-peek"}
    for fold in peek.folds.itertuples():
        state = torch.load(peek.out_dir / "checkpoints" / f"{fold.test_subject}.pt", weights_only=False)
        accs = [h["test_acc"] for h in state["history"]]
        assert fold.selected_epoch == int(np.argmax(accs))
        assert fold.fold_acc == pytest.approx(max(accs))
    with pytest.raises(ValueError, match="protocol"):
        run_loso("trajectory", samples, config, tmp_path, protocol="best")


def test_trajectory_model_learns_the_signal_across_subjects(tmp_path):
    samples = make_samples(signal=4.0)
    config = {**TRAJ_CONFIG, "epochs": 25}
    result = run_loso("trajectory", samples, config, tmp_path)
    overall = result.metrics[result.metrics["group"] == "all"].iloc[0]
    assert overall["acc"] >= 0.75 and overall["uf1"] >= 0.7


@pytest.mark.parametrize("model_name,model_config", [
    ("fdp", {"image_size": 16, "dims": [8, 16], "depths": [1, 1], "heads": [1, 2], "sr_ratios": [2, 1],
             "stem_stride": 2, "decoder_dim": 8}),
    ("mol", {"image_size": 16, "stem_channels": [4, 8], "knn_k": 2, "n_frames": 3, "temporal_kernel": 2}),
])
def test_fdp_and_mol_run_end_to_end(tmp_path, model_name, model_config):
    samples = make_samples()
    config = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "model": model_config}
    result = run_loso(model_name, samples, config, tmp_path)
    assert len(result.predictions) == 12 and set(result.metrics["protocol"]) == {"fixed-epoch"}
    history = torch.load(result.out_dir / "checkpoints" / "sub1.pt", weights_only=False)["history"]
    expected = {"fdp": {"ce", "recon", "rank"}, "mol": {"ce", "flow_mse", "epe", "nme"}}[model_name]
    assert expected <= set(history[-1])


def test_input_checks(tmp_path):
    samples = make_samples()
    with pytest.raises(ValueError, match="model_name"):
        run_loso("resnet", samples, TRAJ_CONFIG, tmp_path)
    no_traj = dataclasses.replace(samples, inputs={"clips": samples.inputs["clips"]})
    with pytest.raises(ValueError, match="missing"):
        run_loso("trajectory", no_traj, TRAJ_CONFIG, tmp_path)
    with pytest.raises(ValueError, match="n_classes"):
        run_loso("trajectory", samples, {**TRAJ_CONFIG, "model": {**TRAJ_CONFIG["model"], "n_classes": 4}}, tmp_path)
    with pytest.raises(ValueError, match="unknown keys"):
        MERRunConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="subjects"):
        MERSamples({}, torch.zeros(3, dtype=torch.long), ["a"], ["d"] * 3, ["c"] * 3, CLASSES)
    with pytest.raises(ValueError, match="labels must index"):
        MERSamples({}, torch.tensor([0, 3]), ["a", "b"], ["d"] * 2, ["c"] * 2, CLASSES)
    with pytest.raises(ValueError, match="inputs"):
        MERSamples({"clips": torch.zeros(3, 1)}, torch.tensor([0, 1]), ["a", "b"], ["d"] * 2, ["c"] * 2, CLASSES)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("use_displacement", [True, False])
def test_trajectory_classifier_shapes_and_gradients(batch, use_displacement):
    config = TrajectoryConfig(n_classes=4, n_expression=6, hidden=8, layers=2, use_displacement=use_displacement)
    model = TrajectoryClassifier(config)
    logits = model(torch.randn(batch, 7, 6))
    assert logits.shape == (batch, 4)
    trajectory_loss(logits, torch.arange(batch) % 4)["loss"].backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    with pytest.raises(ValueError, match=r"\(B, T, 6\)"):
        model(torch.randn(batch, 7, 5))


def test_trajectory_displacement_removes_the_onset_offset():
    config = TrajectoryConfig(n_classes=2, n_expression=3, hidden=4, layers=1, use_displacement=True)
    model = TrajectoryClassifier(config).eval()
    trajectory = torch.randn(1, 5, 3)
    # the displacement channels are identical, only the raw channels differ: outputs differ, but a model with
    # its raw-input weights zeroed cannot tell the two apart
    with torch.no_grad():
        model.convs[0].weight[:, :3] = 0
        assert torch.allclose(model(trajectory), model(trajectory + 2.0), atol=1e-5)


def test_sample_frame_indices():
    from microface.experiments.mer import sample_frame_indices

    assert sample_frame_indices(0, 4, 8, 5).tolist() == [0, 2, 4, 6, 8]  # rise 0,2,4; fall 6,8
    assert sample_frame_indices(2, 2, 2, 3).tolist() == [2, 2, 2]
    assert sample_frame_indices(0, 6, 6, 4).tolist() == [0, 2, 4, 6]
    got = sample_frame_indices(3, 10, 30, 8)
    assert got[0] == 3 and got[-1] == 30 and 10 in got.tolist() and bool((np.diff(got) >= 0).all())
    with pytest.raises(ValueError, match="onset <= apex"):
        sample_frame_indices(5, 3, 8, 4)


def _write_prepared_clip(root, dataset, subject, clip_id, label, rng, gt_dir):
    """One clip in the documented ``microface prepare`` cache layout (frames, landmarks68, flow, meta)."""
    import json

    t, s = 9, 16
    frames = rng.integers(0, 255, (t, s, s, 3), dtype=np.uint8)
    landmarks = rng.uniform(2, 14, (t, 68, 2)).astype(np.float32)
    flow = np.zeros((t, s, s, 2), np.float16)
    flow[:, :, :, 0] = np.arange(t, dtype=np.float16)[:, None, None]  # onset->t flow: t px to the right
    gt = gt_dir / f"{subject}_{clip_id}.npz"
    np.savez(gt, expression=np.tile(np.arange(t, dtype=np.float32)[:, None], (1, 5)))
    record = {"dataset": dataset, "subject": subject, "clip_id": clip_id, "onset": 0, "apex": 4, "offset": 8,
              "label": label, "ground_truth": str(gt)}
    rel = f"clips/{dataset}/{subject}/{clip_id}.npz"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    np.savez(root / rel, frames=frames, landmarks68=landmarks, flow=flow, transform=np.eye(2, 3),
             meta=np.array(json.dumps({"record": record})))
    return f"{dataset}/{subject}/{clip_id}", {"file": rel}, frames, landmarks


def test_samples_from_prepared_reads_the_cache(tmp_path):
    import json

    from microface.experiments.mer import samples_from_prepared

    rng = np.random.default_rng(0)
    root, gt_dir = tmp_path / "prepared", tmp_path / "gt"
    gt_dir.mkdir()
    clips, raw = {}, {}
    for i, (subject, label) in enumerate([("sub01", "positive"), ("sub01", "negative"), ("sub02", "surprise"),
                                          ("sub02", None)]):
        key, entry, frames, landmarks = _write_prepared_clip(root, "synth", subject, f"EP0{i}", label, rng, gt_dir)
        clips[key], raw[key] = entry, (frames, landmarks)
    (root / "manifest.json").write_text(json.dumps({"clips": clips, "skipped": {}}))
    cache = tmp_path / "cache"
    samples = samples_from_prepared(root, ["clips", "sequence_flow", "sequence_landmarks", "trajectory"], n_frames=4,
                                    image_size=8, gray=True, class_names=CLASSES, cache_dir=cache)
    assert len(samples) == 3  # the unlabelled clip is left out
    assert samples.inputs["clips"].shape == (3, 4, 1, 8, 8)
    assert samples.inputs["sequence_flow"].shape == (3, 3, 2, 8, 8)
    assert len(list(cache.glob("flow_tvl1_*.npy"))) == 3  # cached, and read back alike
    again = samples_from_prepared(root, ["sequence_flow"], n_frames=4, image_size=8, class_names=CLASSES,
                                  cache_dir=cache)
    assert torch.equal(again.inputs["sequence_flow"], samples.inputs["sequence_flow"])
    assert samples.inputs["sequence_landmarks"].shape == (3, 4, 68, 2)
    assert samples.inputs["trajectory"].shape == (3, 4, 5)
    # the trajectory upper bound keeps the key frames; FDP and MOL sample the whole clip: 0, 3, 5, 8 of 9 frames
    assert samples.inputs["trajectory"][0, :, 0].tolist() == [0.0, 3.0, 5.0, 8.0]
    assert samples.subjects == ["synth/sub01", "synth/sub01", "synth/sub02"]
    assert [CLASSES[i] for i in samples.labels.tolist()] == ["positive", "negative", "surprise"]
    key = "synth/sub01/EP00"
    frames, landmarks = raw[key]
    gray = (frames[8].astype(np.float32) / 255 * np.array([0.299, 0.587, 0.114])).sum(-1)
    expected = gray.reshape(8, 2, 8, 2).mean((1, 3))
    assert np.allclose(samples.inputs["clips"][0, 3, 0].numpy(), expected, atol=1e-5)
    assert np.allclose(samples.inputs["sequence_landmarks"][0, 3].numpy(), landmarks[8] / 2, atol=1e-5)
    stride = samples_from_prepared(root, ["clips"], n_frames=4, class_names=CLASSES, sampling="stride", crop=0.5)
    assert stride.inputs["clips"].shape == (3, 4, 1, 8, 8)  # the centre 8 of 16 px, kept at 8
    gray = (frames[6].astype(np.float32) / 255 * np.array([0.299, 0.587, 0.114])).sum(-1)  # 3 * (9 // 4)
    assert np.allclose(stride.inputs["clips"][0, 3, 0].numpy(), gray[4:12, 4:12], atol=1e-5)
    rgb = samples_from_prepared(root, ["clips"], gray=False, class_names=CLASSES)
    assert rgb.inputs["clips"].shape == (3, 8, 3, 16, 16)
    with pytest.raises(ValueError, match="inputs"):
        samples_from_prepared(root, ["video"])
    with pytest.raises(ValueError, match="sampling"):
        samples_from_prepared(root, ["clips"], sampling="apex")
    with pytest.raises(ValueError, match="not in class_names"):
        samples_from_prepared(root, ["clips"], class_names=("positive", "negative"))


def test_clip_frame_indices_ignore_the_annotation():
    from microface.experiments.mer import clip_frame_indices

    assert clip_frame_indices(9, 4).tolist() == [0, 3, 5, 8]  # first to last
    assert clip_frame_indices(49, 8, "stride").tolist() == [0, 6, 12, 18, 24, 30, 36, 42]  # the public code's
    with pytest.raises(ValueError, match="n_frames"):
        clip_frame_indices(5, 8)


def test_mer_table_keeps_wall_clock_out_of_the_scores(tmp_path):
    from microface.experiments.mer_tables import write_mer_table

    table = pd.DataFrame({"protocol": ["fixed-epoch"], "model": ["fdp"], "group": ["all"], "uf1": [0.5],
                          "seconds": [12.3], "train_s_per_fold": [2.1]})
    shown = write_mer_table(table, {"acc_majority": 0.2, "uar_uniform": 0.2}, tmp_path / "mer_table.csv")
    scores = pd.read_csv(tmp_path / "mer_table.csv")
    assert "seconds" not in scores and "train_s_per_fold" not in scores and scores["chance_uar"].iloc[0] == 0.2
    assert "seconds" not in (tmp_path / "mer_table.md").read_text()
    timings = pd.read_csv(tmp_path / "mer_table_timings.csv")
    assert list(timings.columns) == ["protocol", "model", "group", "seconds", "train_s_per_fold"]
    assert shown["seconds"].iloc[0] == 12.3  # the notebook still shows them


@pytest.mark.parametrize("profile", ["smoke", "cpu", "full"])
def test_mer_model_settings_come_from_the_profile_config(profile):
    """Every model's sizes, batch and learning rate are the config's (nothing per profile in the code), and the sizes
    build the models they name."""
    from pathlib import Path

    import yaml

    from microface.experiments.mer_tables import mer_model_settings
    from microface.models.fdp import FDPConfig
    from microface.models.mol import MOLConfig

    mer = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / f"{profile}.yaml").read_text())["mer"]
    samples = make_samples()
    for name, build in (("fdp", FDPConfig), ("mol", MOLConfig), ("trajectory", TrajectoryConfig)):
        inputs, kwargs = mer_model_settings(name, profile, mer)
        assert kwargs["n_frames"] == mer["n_frames"] and kwargs["image_size"] == mer[name].get("image_size")
        assert kwargs["sampling"] == ("keyframes" if name == "trajectory" else "uniform")
        run = mer_model_settings(name, profile, mer, run_config=True, seed=5, samples=samples)
        assert (run["epochs"], run["batch_size"], run["lr"], run["seed"]) == (
            mer[name].get("epochs", mer["epochs"]), mer["batch_size"], mer[name].get("lr", mer["lr"]), 5)
        own = {k: v for k, v in mer[name].items()
               if k not in ("lr", "weight_decay", "batch_size", "epochs", "sampling", "crop")}
        assert {k: v for k, v in run["model"].items() if k not in ("n_expression", "n_frames")} == own
        build(**run["model"])
        MERRunConfig.from_dict(run)
        if name != "trajectory":  # the public code's settings on the profile's sizes build too
            reference = mer_model_settings(name, profile, mer, run_config=True, preset="reference")
            assert reference["lr"] == 1e-4 and reference["weight_decay"] == 1e-3
            build(**reference["model"])
            assert mer_model_settings(name, profile, mer, preset="reference")[1]["sampling"] == "stride"
    assert run["model"]["n_expression"] == samples.inputs["trajectory"].shape[-1]
    assert mer_model_settings("fdp", profile, {**mer, "fdp": {**mer["fdp"], "epochs": 7}}, run_config=True)[
        "epochs"] == 7  # a model's own epochs override the section's
    changed = {**mer, "batch_size": 3, "mol": {**mer["mol"], "knn_k": 1}}
    run = mer_model_settings("mol", profile, changed, run_config=True)
    assert run["batch_size"] == 3 and run["model"]["knn_k"] == 1


def test_mer_model_settings_name_the_missing_key():
    from microface.experiments.mer_tables import mer_model_settings

    mer = {"epochs": 2, "n_frames": 4, "batch_size": 4, "lr": 1e-3, "trajectory": {"hidden": 8, "layers": 1}}
    with pytest.raises(KeyError, match=r"config/cpu.yaml.*'fdp'"):
        mer_model_settings("fdp", "cpu", mer)
    with pytest.raises(KeyError, match=r"config/smoke.yaml.*'lr'"):
        mer_model_settings("trajectory", "smoke", {k: v for k, v in mer.items() if k != "lr"}, run_config=True,
                           samples=make_samples())
    with pytest.raises(ValueError, match="unknown MER model"):
        mer_model_settings("svm", "smoke", mer)


# ----------------------------------------------------------------------------------------------------------------
# One fold at a time (Snakemake rule mer_fold) and the merge (notebook 03)

FDP_TINY = {"image_size": 16, "dims": [8, 16], "depths": [1, 1], "heads": [1, 2], "sr_ratios": [2, 1],
            "stem_stride": 2, "decoder_dim": 8}


@pytest.mark.parametrize("model_name,config", [
    ("trajectory", {**TRAJ_CONFIG, "model": {**TRAJ_CONFIG["model"], "dropout": 0.3}}),
    ("fdp", {"epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 1, "model": FDP_TINY}),
])
def test_a_fold_run_alone_gives_the_rows_it_gives_inside_the_loop(tmp_path, model_name, config):
    import json

    from microface.experiments.mer import run_loso_fold

    samples = make_samples()
    loop = run_loso(model_name, samples, config, tmp_path / "loop")
    torch.rand(1000), np.random.rand(1000)  # a job of its own starts from another RNG state: the fold reseeds
    path = run_loso_fold(model_name, samples, config, tmp_path / "alone", "sub2")
    assert path == tmp_path / "alone" / model_name / "fixed-epoch" / "folds" / "sub2.json"
    alone = pd.DataFrame(json.loads(path.read_text())["predictions"])
    inside = loop.predictions[loop.predictions["fold"] == "sub2"].drop(columns="protocol").reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, inside, check_exact=True)
    # the loop reads that fold back and trains the other two: byte-identical tables
    merged = run_loso(model_name, samples, config, tmp_path / "alone")
    for name in ("predictions", "metrics", "confusion"):
        assert (merged.out_dir / f"{name}.csv").read_bytes() == (loop.out_dir / f"{name}.csv").read_bytes(), name
    columns = [c for c in loop.folds.columns if c != "train_seconds"]
    pd.testing.assert_frame_equal(merged.folds[columns], loop.folds[columns], check_exact=True)


def test_the_merge_reads_every_fold_file_and_trains_nothing(tmp_path, monkeypatch):
    from microface.experiments.mer import run_loso_fold

    samples = make_samples()
    for subject in ("sub1", "sub2", "sub3"):
        run_loso_fold("trajectory", samples, TRAJ_CONFIG, tmp_path, subject)
    calls = _counting(monkeypatch, "trajectory")
    result = run_loso("trajectory", samples, TRAJ_CONFIG, tmp_path)
    assert calls == {"loss": 0, "logits": 0}
    assert sorted(result.predictions["clip_id"]) == sorted(samples.clip_ids)
    assert bool((result.folds["train_seconds"] > 0).all())  # the times the fold jobs recorded
    run_loso_fold("trajectory", samples, TRAJ_CONFIG, tmp_path, "sub1")  # a finished fold is kept as it is
    assert calls == {"loss": 0, "logits": 0}


def test_a_fold_file_of_another_run_is_refused(tmp_path):
    from microface.experiments.mer import run_loso_fold

    samples = make_samples()
    run_loso_fold("trajectory", samples, TRAJ_CONFIG, tmp_path, "sub1")
    with pytest.raises(ValueError, match="sub1.json was written with a different config"):
        run_loso_fold("trajectory", samples, {**TRAJ_CONFIG, "lr": 5e-3}, tmp_path, "sub1")
    renamed = dataclasses.replace(samples, clip_ids=[f"other{i}" for i in range(len(samples))])
    with pytest.raises(ValueError, match="holds the clips"):
        run_loso("trajectory", renamed, TRAJ_CONFIG, tmp_path)
    with pytest.raises(ValueError, match=r"'sub9' is none of the samples' subjects \['sub1', 'sub2', 'sub3'\]"):
        run_loso_fold("trajectory", samples, TRAJ_CONFIG, tmp_path, "sub9")


def _prepared_results(results, rng, subjects=("sub01", "sub02", "sub10"), per_subject=2):
    """results/<profile> as notebook 00 leaves it for notebook 03: prepared/ (tiny clips) and index.csv."""
    import json

    gt_dir = results / "gt"
    gt_dir.mkdir(parents=True)
    clips, rows = {}, ["dataset,subject,clip_id,label"]
    for s, subject in enumerate(subjects):
        for i in range(per_subject):
            label = CLASSES[(s + i) % len(CLASSES)]
            key, entry, _, _ = _write_prepared_clip(results / "prepared", "synth", subject, f"EP0{i}", label, rng,
                                                    gt_dir)
            clips[key] = entry
            rows.append(f"synth,{subject},EP0{i},{label}")
    (results / "prepared" / "manifest.json").write_text(json.dumps({"clips": clips, "skipped": {}}))
    (results / "index.csv").write_text("\n".join(rows) + "\n")


def test_fold_jobs_then_notebook_03_give_the_table_notebook_03_gives_alone(tmp_path, monkeypatch):
    """The workflow's route (one `microface mer-fold` per planned fold, the reference runs' folds included, then
    notebook 03's driver merging them) writes byte-identical tables to notebook 03 run alone, for every model."""
    import shutil

    import yaml
    from typer.testing import CliRunner

    from microface.cli import app
    from microface.experiments.mer import run_mer_experiment
    from microface.experiments.mer_plan import fold_file_name, mer_fold_plan, mer_reference_fold_plan

    monkeypatch.setenv("MICROFACE_NO_PROGRESS", "1")
    MODELS_BEFORE = dict(MODELS)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "smoke.yaml").read_text())
    config["mer"].update(epochs=1, n_frames=4, fdp=FDP_TINY, reference=True,
                         mol={"image_size": 32, "stem_channels": [4, 8], "knn_k": 2, "temporal_kernel": 2})
    alone, jobs = tmp_path / "alone", tmp_path / "jobs"
    _prepared_results(alone, np.random.default_rng(0))
    shutil.copytree(alone, jobs)
    (jobs / "config.yaml").write_text(yaml.safe_dump(config))
    settings = {key: config[key] for key in ("profile", "seed", "device", "data", "mer")}

    plan = mer_fold_plan(config["data"], config["mer"], jobs)
    assert plan == [(m, s) for m in config["mer"]["models"] for s in ("synth/sub01", "synth/sub02", "synth/sub10")]
    for model, subject in plan:
        result = CliRunner().invoke(app, ["mer-fold", "--config", str(jobs / "config.yaml"), "--model", model,
                                          "--holdout", fold_file_name(subject)])
        assert result.exit_code == 0, result.output
        assert (jobs / "mer" / model / "fixed-epoch" / "folds" / f"{fold_file_name(subject)}.json").is_file()
    from microface.experiments import mer_tables

    # the reference MOL's 128 px input, made small for a test (the preset's other settings are kept)
    monkeypatch.setitem(mer_tables.REFERENCE, "mol", {**mer_tables.REFERENCE["mol"], "image_size": 32})
    reference_plan = mer_reference_fold_plan(config["data"], config["mer"], jobs)
    assert reference_plan == [(m, s) for m in ("fdp", "mol") for s in ("synth/sub01", "synth/sub02", "synth/sub10")]
    for model, subject in reference_plan:
        result = CliRunner().invoke(app, ["mer-fold", "--config", str(jobs / "config.yaml"), "--model", model,
                                          "--holdout", fold_file_name(subject), "--preset", "reference"])
        assert result.exit_code == 0, result.output
        assert (jobs / "mer" / "reference" / model / "test-peek" / "folds" / f"{fold_file_name(subject)}.json").is_file()
    calls = _counting(monkeypatch, "fdp")
    run_mer_experiment(**settings, results_dir=jobs)
    assert calls == {"loss": 0, "logits": 0}  # the merge trained nothing
    monkeypatch.setitem(MODELS, "fdp", MODELS_BEFORE["fdp"])
    run_mer_experiment(**settings, results_dir=alone)
    for name in ("mer_table.csv", "mer_table.md", "learning_curves.csv"):
        assert (jobs / "mer" / name).read_bytes() == (alone / "mer" / name).read_bytes(), name
    assert "test-peek" in (jobs / "mer" / "mer_table.csv").read_text()  # the reference rows, labelled
    for model in config["mer"]["models"]:
        for name in ("predictions.csv", "metrics.csv", "confusion.csv", "run.json"):
            path = Path("mer") / model / "fixed-epoch" / name
            assert (jobs / path).read_bytes() == (alone / path).read_bytes(), path
    bad = CliRunner().invoke(app, ["mer-fold", "--config", str(jobs / "config.yaml"), "--model", "svm",
                                   "--holdout", "synth_sub01"])
    assert bad.exit_code == 1 and "model 'svm'" in bad.output
    bad = CliRunner().invoke(app, ["mer-fold", "--config", str(jobs / "config.yaml"), "--model", "trajectory",
                                   "--holdout", "synth_sub01", "--preset", "reference"])
    assert bad.exit_code == 1 and "preset 'reference'" in bad.output


def test_the_fold_plan_holds_out_labelled_prepared_subjects(tmp_path):
    import json

    from microface.experiments.mer_plan import mer_fold_plan, mer_models, mer_subjects

    with pytest.raises(FileNotFoundError, match="index.csv not found: notebook 00_data writes it"):
        mer_subjects(tmp_path)
    (tmp_path / "index.csv").write_text("dataset,subject,clip_id,label\ncasme2,sub01,EP01,happiness\n"
                                        "casme2,sub02,EP01,\ncasme2,sub03,EP01,surprise\nsamm,006,EP01,anger\n")
    assert mer_subjects(tmp_path) == ["casme2/sub01", "casme2/sub03", "samm/006"]  # sub02 has no label
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.json").write_text(json.dumps({"clips": {"casme2/sub01/EP01": {},
                                                                                "samm/006/EP01": {}}}))
    assert mer_subjects(tmp_path) == ["casme2/sub01", "samm/006"]  # sub03's clip was not prepared
    mer = {"models": ["fdp", "trajectory", "mol"]}
    assert mer_models({"dataset": "casme2"}, mer)[0] == ["fdp", "mol"]
    assert mer_models({"dataset": "synth"}, mer) == (["fdp", "trajectory", "mol"], [])
    assert mer_fold_plan({"dataset": "casme2"}, mer, tmp_path) == [
        ("fdp", "casme2/sub01"), ("fdp", "samm/006"), ("mol", "casme2/sub01"), ("mol", "samm/006")]


def test_learning_curves_score_training_clips_only(tmp_path):
    """Each fold records, per epoch, its loss and its accuracy on its own training clips; learning_curves averages
    them over folds. A learnable signal is fitted (training accuracy rises); a test clip is never scored before
    the end (the fixed-epoch predictions are the last epoch's)."""
    from microface.experiments.mer import learning_curves

    samples = make_samples(signal=6.0)
    config = {**TRAJ_CONFIG, "epochs": 6}
    result = run_loso("trajectory", samples, config, tmp_path)
    curve = learning_curves(result.out_dir)
    assert list(curve["epoch"]) == list(range(6)) and bool((curve["n_folds"] == 3).all())
    assert curve["train_acc"].between(0.0, 1.0).all()
    assert curve["train_acc"].iloc[-1] > curve["train_acc"].iloc[0] or curve["train_acc"].iloc[0] == 1.0
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]
    folds = pd.read_csv(result.out_dir / "folds.csv")
    assert np.allclose(folds["final_train_acc"].mean(), curve["train_acc"].iloc[-1])
    assert learning_curves(tmp_path / "nothing").empty


def test_training_fit_curve_trains_on_the_given_subjects_only_and_the_epoch_rule():
    from microface.experiments.mer_epochs import first_epoch_below, training_fit_curve

    samples = make_samples(n_subjects=3, per_subject=4)
    config = MERRunConfig.from_dict({**TRAJ_CONFIG, "epochs": 30})
    seen = []
    original = samples.batch

    def spy(indices, keys, device):
        seen.extend(samples.subjects[i] for i in np.asarray(indices))
        return original(indices, keys, device)

    samples.batch = spy
    curve = training_fit_curve("trajectory", samples, config, ["sub1", "sub2"])
    assert set(seen) == {"sub1", "sub2"}  # sub3 never reaches the optimiser (nor the recorded accuracy)
    assert list(curve["epoch"]) == list(range(1, 31)) and curve["loss"].iloc[-1] < curve["loss"].iloc[0]
    assert curve["train_acc"].iloc[-1] == 1.0
    assert first_epoch_below([0.9, 0.5, 0.2, 0.1], threshold=0.3, every=2) == 4  # epoch 3 is not a multiple of 2
    assert first_epoch_below([0.9, 0.5, 0.2, 0.1], threshold=0.05, every=2) is None
    with pytest.raises(ValueError, match="no clip"):
        training_fit_curve("trajectory", samples, config, ["sub9"])
