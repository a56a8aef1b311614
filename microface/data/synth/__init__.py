"""The synthetic micro-expression benchmark with 3D ground truth (see ``generate``)."""
from microface.data.synth.dataset import PROFILES, SynthConfig, config_for_profile, generate, load_ground_truth

__all__ = ["PROFILES", "SynthConfig", "config_for_profile", "generate", "load_ground_truth"]
