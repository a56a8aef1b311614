"""LOSO driver end to end on tiny synthetic samples, protocols, resume; and the trajectory classifier."""
import dataclasses

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
    pair) and a class-specific motion, so every model has something to learn."""
    g = torch.Generator().manual_seed(seed)
    n = n_subjects * per_subject
    labels = torch.arange(n) % 3
    trajectory = torch.randn(n, 5, 4, generator=g)
    trajectory[torch.arange(n), :, labels] += signal * torch.linspace(0, 1, 5)
    clips = 0.1 * torch.rand(n, 3, 1, 16, 16, generator=g)
    pair = 0.1 * torch.rand(n, 2, 32, 32, generator=g)
    for i, label in enumerate(labels.tolist()):
        clips[i, 1:, 0, 4 * label:4 * label + 4, 4:8] += torch.tensor([0.5, 1.0]).view(2, 1, 1)
        pair[i, 1, 8 * label:8 * label + 8, 8:16] += 1.0
    flow = torch.randn(n, 2, 32, 32, generator=g) * 0.1
    landmarks = torch.rand(n, 68, 2, generator=g) * 16 + 8
    landmarks[:, 36, 0] -= 6
    landmarks[:, 45, 0] += 6
    return MERSamples(
        inputs={"trajectory": trajectory, "clips": clips, "pair": pair, "flow": flow, "landmarks": landmarks},
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


def test_fixed_epoch_never_looks_at_the_test_subject_but_test_peek_does(tmp_path, monkeypatch):
    samples = make_samples()
    config = {**TRAJ_CONFIG, "epochs": 3}
    calls = _counting(monkeypatch, "trajectory")
    run_loso("trajectory", samples, config, tmp_path)
    assert calls["logits"] == 3  # one prediction pass per fold, after training
    calls = _counting(monkeypatch, "trajectory")
    peek = run_loso("trajectory", samples, config, tmp_path, protocol="test-peek")
    assert calls["logits"] == 3 * 3  # every epoch of every fold
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
    ("mol", {"image_size": 32, "stem_channels": [4, 8], "knn_k": 2}),
])
def test_fdp_and_mol_run_end_to_end(tmp_path, model_name, model_config):
    samples = make_samples()
    config = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "model": model_config}
    result = run_loso(model_name, samples, config, tmp_path)
    assert len(result.predictions) == 12 and set(result.metrics["protocol"]) == {"fixed-epoch"}
    history = torch.load(result.out_dir / "checkpoints" / "sub1.pt", weights_only=False)["history"]
    expected = {"fdp": {"ce", "recon", "rank"}, "mol": {"ce", "epe", "nme"}}[model_name]
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
    samples = samples_from_prepared(root, ["clips", "pair", "flow", "landmarks", "trajectory"], n_frames=4,
                                    image_size=8, gray=True, class_names=CLASSES)
    assert len(samples) == 3  # the unlabelled clip is left out
    assert samples.inputs["clips"].shape == (3, 4, 1, 8, 8)
    assert samples.inputs["pair"].shape == (3, 2, 8, 8)
    assert samples.inputs["flow"].shape == (3, 2, 8, 8)
    assert torch.allclose(samples.inputs["flow"][:, 0], torch.full((3, 8, 8), 2.0))  # 4 px at 16 px -> 2 px at 8 px
    assert samples.inputs["trajectory"].shape == (3, 4, 5)
    assert samples.inputs["trajectory"][0, :, 0].tolist() == [0.0, 4.0, 6.0, 8.0]  # rise 0, 4 (half of 4); fall 6, 8
    assert samples.subjects == ["synth/sub01", "synth/sub01", "synth/sub02"]
    assert [CLASSES[i] for i in samples.labels.tolist()] == ["positive", "negative", "surprise"]
    key = "synth/sub01/EP00"
    frames, landmarks = raw[key]
    gray_apex = (frames[4].astype(np.float32) / 255 * np.array([0.299, 0.587, 0.114])).sum(-1)
    expected = gray_apex.reshape(8, 2, 8, 2).mean((1, 3))
    assert np.allclose(samples.inputs["pair"][0, 1].numpy(), expected, atol=1e-5)
    assert np.allclose(samples.inputs["landmarks"][0].numpy(), landmarks[4] / 2, atol=1e-5)
    rgb = samples_from_prepared(root, ["pair"], gray=False, class_names=CLASSES)
    assert rgb.inputs["pair"].shape == (3, 6, 16, 16)
    with pytest.raises(ValueError, match="inputs"):
        samples_from_prepared(root, ["video"])
    with pytest.raises(ValueError, match="not in class_names"):
        samples_from_prepared(root, ["pair"], class_names=("positive", "negative"))


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
        assert kwargs == {"n_frames": mer["n_frames"], "image_size": mer[name].get("image_size"), "gray": True}
        run = mer_model_settings(name, profile, mer, run_config=True, seed=5, samples=samples)
        assert (run["epochs"], run["batch_size"], run["lr"], run["seed"]) == (mer["epochs"], mer["batch_size"],
                                                                              mer["lr"], 5)
        assert {k: v for k, v in run["model"].items() if k != "n_expression"} == mer[name]
        build(**run["model"])
        MERRunConfig.from_dict(run)
    assert run["model"]["n_expression"] == samples.inputs["trajectory"].shape[-1]
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
