"""Affect targets of synthetic clips (microface.data.synth.affect) and what FIELDS' emotion loss makes of them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microface.data.clips import collate_clips, clip_tensors_from_synth
from microface.data.datasets import load_dataset
from microface.data.synth import SynthConfig, config_for_profile, generate
from microface.data.synth.affect import (AU_PEAK_JITTER, NO_AFFECT, PROTOTYPE_VALENCE_AROUSAL,
                                         benchmark_reference, clip_affect, clip_intensity, find_manifest,
                                         max_au_activation, prototype_valence_arousal)
from microface.data.synth.schedules import MACRO_EMOTIONS, MICRO_EMOTIONS, intensity_profile, plan_events
from microface.losses.emotion import emotion_loss

# Russell & Mehrabian (1977), Table 4, (pleasure, arousal): the numbers the module docstring cites
EXPECTED = {"happiness": (0.81, 0.51), "surprise": (0.40, 0.67), "disgust": (-0.60, 0.35),
            "sadness": (-0.63, -0.27), "anger": (-0.51, 0.59), "fear": (-0.64, 0.60)}


def schedule(peak: float, n_frames: int = 12, n_aus: int = 3) -> np.ndarray:
    """(T, E) AU schedule with one AU rising to ``peak`` and falling back."""
    expression = np.zeros((n_frames, n_aus))
    expression[:, 1] = intensity_profile(n_frames, 2, 5, 9, peak)
    return expression


def test_every_benchmark_emotion_has_its_placement_or_is_marked_without_one():
    for emotion, (valence, arousal) in EXPECTED.items():
        np.testing.assert_array_equal(prototype_valence_arousal(emotion), [valence, arousal])
    for emotion in NO_AFFECT:
        assert np.isnan(prototype_valence_arousal(emotion)).all()
    assert set(MICRO_EMOTIONS) | set(MACRO_EMOTIONS) <= set(PROTOTYPE_VALENCE_AROUSAL) | set(NO_AFFECT)
    # the circumplex quadrants: happiness pleasant and aroused, sadness unpleasant and calm
    assert prototype_valence_arousal("happiness")[0] > 0 > prototype_valence_arousal("sadness")[1]
    with pytest.raises(ValueError, match="'contempt'"):
        prototype_valence_arousal("contempt")


def test_the_reference_is_the_largest_activation_the_schedules_can_draw():
    reference = max_au_activation(SynthConfig().macro_peak[1])
    assert reference == pytest.approx(1.2 * 1.15)
    rng = np.random.default_rng(0)
    peaks = [event.peak for _ in range(200) for event in plan_events(rng, ("AU1", "AU2", "AU4"), 2, 5, 9, 1.0)]
    assert max(peaks) <= AU_PEAK_JITTER and max(peaks) > 0.95 * AU_PEAK_JITTER
    with pytest.raises(ValueError, match="macro_peak_max"):
        max_au_activation(0.0)


def test_a_stronger_clip_gets_a_larger_intensity_and_valence_arousal():
    reference = max_au_activation(1.2)
    faint_va, faint = clip_affect("happiness", schedule(0.1), reference)
    strong_va, strong = clip_affect("happiness", schedule(0.9), reference)
    assert faint == pytest.approx(0.1 / reference) and strong == pytest.approx(0.9 / reference)
    assert np.linalg.norm(strong_va) > np.linalg.norm(faint_va) > 0
    np.testing.assert_allclose(strong_va, strong * np.array(EXPECTED["happiness"]))
    # a faint micro-expression sits near neutral; a schedule beyond the reference is full intensity
    assert np.abs(faint_va).max() < 0.1
    assert clip_intensity(schedule(2.0), reference) == 1.0
    assert clip_intensity(np.zeros((4, 3)), reference) == 0.0
    va, intensity = clip_affect("others", schedule(0.5), reference)
    assert np.isnan(va).all() and intensity == pytest.approx(0.5 / reference)
    with pytest.raises(ValueError, match=r"\(T, E\)"):
        clip_intensity(np.zeros(5), reference)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    config = config_for_profile("smoke", subjects=1, clips=len(MICRO_EMOTIONS), macro_clips=1, image_size=48,
                                micro_duration_s=(0.05, 0.07), macro_duration_s=(0.3, 0.4))
    return generate(tmp_path_factory.mktemp("affect") / "synth", config, show_progress=False)


def test_clip_tensors_from_synth_fill_the_affect_targets(synth_root):
    manifest = json.loads((synth_root / "synth_manifest.json").read_text())
    reference = max_au_activation(manifest["config"]["macro_peak"][1])
    for kind in ("micro", "macro"):
        records = load_dataset("synth", synth_root, kind=kind)
        assert benchmark_reference(records[0].ground_truth) == pytest.approx(reference)
        assert find_manifest(records[0].ground_truth) == (synth_root / "synth_manifest.json").resolve()
        clips = clip_tensors_from_synth(records, 32, "gt", max_frames=4, show_progress=False, landmarks="oracle")
        for record, clip in zip(records, clips):
            expression = np.load(record.ground_truth)["expression"]  # the whole schedule, not the kept frames
            assert clip.intensity == pytest.approx(min(expression.max() / reference, 1.0))
            assert 0.0 < clip.intensity <= 1.0
            expected = clip.intensity * prototype_valence_arousal(record.emotion)
            torch.testing.assert_close(clip.valence_arousal, torch.tensor(expected, dtype=torch.float32),
                                       equal_nan=True)
    records = load_dataset("synth", synth_root, kind="micro")
    clips = clip_tensors_from_synth(records, 32, "gt", 4, False, landmarks="oracle")
    micro = {record.emotion: clip for record, clip in zip(records, clips)}
    assert set(micro) == set(MICRO_EMOTIONS)
    assert torch.isnan(micro["others"].valence_arousal).all() and torch.isnan(micro["repression"].valence_arousal).all()
    assert float(micro["happiness"].valence_arousal[0]) > 0 > float(micro["disgust"].valence_arousal[0])
    batch = collate_clips(list(micro.values()))
    assert not torch.all(batch.intensity == 1.0)  # the batch's intensity is the clips', not the "unknown" default


def test_emotion_loss_with_these_targets_is_not_plain_cross_entropy():
    reference = max_au_activation(1.2)
    emotions = ["happiness", "surprise", "disgust", "others"]
    targets = [clip_affect(e, schedule(peak), reference) for e, peak in zip(emotions, (0.15, 0.9, 0.4, 0.6))]
    va_target = torch.tensor(np.stack([va for va, _ in targets]), dtype=torch.float32)
    intensity = torch.tensor([i for _, i in targets], dtype=torch.float32)
    logits = torch.tensor([[2.0, 0.1, -1.0, 0.3], [0.2, 0.4, 0.1, 1.5], [-0.5, 0.0, 1.0, 0.2], [0.0, 0.3, 0.1, 0.9]])
    labels = torch.tensor([0, 1, 2, 3])
    predicted_va = torch.zeros(4, 2)
    terms = emotion_loss(logits, labels, predicted_va, va_target, intensity)
    plain = F.cross_entropy(logits, labels)
    assert abs(float(terms["emotion_ce"]) - float(plain)) > 1e-3  # the clips are weighted by their intensity
    known = va_target[torch.isfinite(va_target)]
    torch.testing.assert_close(terms["emotion_va"], known.pow(2).mean())  # "others" (NaN) left out
    assert float(terms["emotion_va"]) > 0
