"""DEM, the dynamic-encoded module: temporally consistent expression codes for a whole clip.

Plug-and-play on any coarse encoder (a module mapping images ``(N, 3, H, W)`` to a ``CoarseParams``):

- static encoder, onset frame ``(B, 3, H, W)`` -> ``z0 (B, D)``: the coarse encoder's onset expression lifted to the
  code space plus a learned residual from a small CNN of its own;
- motion encoder, optical flow onset->t ``(B, T, 2, H, W)`` (pixels) -> motion features ``m(t) (B, T, M)``, shifted so
  that zero flow gives exactly ``m = 0``;
- residual fusion, the per-frame code ``z_frame(t) = z0 + r(t)``, ``r(t) = g([z0, m(t)]) - g([z0, 0])``: the
  static code plus a motion residual that is exactly zero without motion;
- a Neural ODE over normalised clip time ``tau in [0,1]`` (frame times may be irregular), ``z(0) = z0``, that
  evolves the code conditioned on the fusion's residual (``ode_condition = "fusion"``, the default, as the seed
  describes it: the fused code is what the ODE follows):
  ``dz/dtau = f_theta(z, r(tau), tau) - f_theta(z, 0, tau)``, so the vector field vanishes without motion and a
  still clip keeps its onset code; ``r(tau)`` is linearly interpolated between the frames. Integrated by
  ``torchdiffeq`` (dopri5 / rk4 / euler; adjoint optional). ``ode_condition = "motion"`` is the wiring before
  issue 18 (kept so that checkpoints trained with it load and reproduce): the ODE reads the motion features
  ``m(tau)`` directly, the fusion is off the output path (tied to it only by the consistency loss), and its
  field vanishes without motion only with ``still_field``;
- a linear head decoding codes ``(B, T, D)`` to the face model's expression parameters ``(B, T, E)``.

``config.temporal = "ode"`` returns the ODE trajectory (consistent in time by construction); ``"residual"``
returns the per-frame fused codes (the no-ODE ablation). Both are always in the output, so a consistency
loss can tie them. Frame 0 of every clip is the onset.

Shapes: B clips, T frames, N images, H/W image size, D code size, M motion feature size, E expression size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from microface.models.encoder import CoarseParams, ConvBackbone
from microface.utils.checks import config_from_dict

SOLVERS = ("dopri5", "rk4", "euler")
FIXED_STEP_SOLVERS = ("rk4", "euler")
ODE_CONDITIONS = ("fusion", "motion")


@dataclass
class DEMConfig:
    """Sizes and solver settings of DEM.

    Args:
        code_dim: D, the code size.
        motion_dim: M, the motion feature size.
        hidden: MLP width.
        static_channels: conv blocks of the static encoder's small CNN.
        motion_channels: conv blocks of the motion encoder's small CNN.
        flow_scale: pixels of flow mapped to 1.0 before the motion CNN (micro-expression flow is sub-pixel).
        temporal: "ode" or "residual".
        solver: dopri5 | rk4 | euler.
        rtol: adaptive-solver relative tolerance.
        atol: adaptive-solver absolute tolerance.
        step_size: step of fixed-step solvers in normalised time.
        adjoint: integrate with ``odeint_adjoint`` (memory O(1) in the number of steps).
        freeze_coarse: run the coarse encoder without gradients.
        ode_condition: what the ODE's vector field reads besides the code and time: "fusion" (the residual
            fusion's motion residual r(tau); the field and the residual are both exactly zero without motion) or
            "motion" (the motion features m(tau): the wiring of checkpoints trained before issue 18).
        still_field: with ``ode_condition = "motion"``, make the vector field exactly zero where the motion features
            are zero, ``f(z, m, tau) = net([z, m, tau]) - net([z, 0, tau])``, so a clip with no motion keeps its
            onset code on every frame. It adds no parameter, so a checkpoint trained without it loads with it;
            ``microface reconstruct`` turns it on. With "fusion" the field always vanishes without motion.

    Raises:
        ValueError: an unknown ``temporal``, ``solver`` or ``ode_condition``, or ``step_size`` / ``flow_scale`` <= 0.
    """

    code_dim: int = 32
    motion_dim: int = 32
    hidden: int = 64
    static_channels: tuple[int, ...] = (16, 32, 32)
    motion_channels: tuple[int, ...] = (16, 32, 32)
    flow_scale: float = 1.0
    temporal: str = "ode"
    solver: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    step_size: float = 0.05
    adjoint: bool = False
    freeze_coarse: bool = False
    ode_condition: str = "fusion"
    still_field: bool = False

    def __post_init__(self) -> None:
        if self.temporal not in ("ode", "residual"):
            raise ValueError(f"DEM temporal: expected 'ode' or 'residual', got {self.temporal!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"DEM solver: expected one of {SOLVERS}, got {self.solver!r}")
        if self.ode_condition not in ODE_CONDITIONS:
            raise ValueError(f"DEM ode_condition: expected one of {ODE_CONDITIONS}, got {self.ode_condition!r}")
        if self.step_size <= 0 or self.flow_scale <= 0:
            raise ValueError(f"DEM step_size and flow_scale must be > 0, got {self.step_size}, {self.flow_scale}")

    @classmethod
    def from_dict(cls, values: dict) -> "DEMConfig":
        """The config from a mapping (the ``dem`` section of a profile).

        Lists become tuples, so configs stay hashable.

        Args:
            values: field name -> value; None or missing keys keep the defaults.

        Returns:
            the DEMConfig.

        Raises:
            ValueError: an unknown key (no setting is silently ignored).
        """
        return config_from_dict(cls, values, "dem")


@dataclass
class DEMOutput:
    """What DEM returns.

    Attributes:
        code: the codes DEM returns (ODE or fused, per ``config.temporal``), shape (B, T, D).
        expression: their decoded expression parameters, shape (B, T, E).
        frame_code: per-frame fused codes, shape (B, T, D).
        frame_expression: their decoded expression parameters, shape (B, T, E).
        z0: onset codes, shape (B, D).
        motion: motion features, shape (B, T, M).
        tau: normalised times, shape (B, T).
        coarse: the coarse encoder's per-frame output, fields (B, T, ...).
    """

    code: torch.Tensor
    expression: torch.Tensor
    frame_code: torch.Tensor
    frame_expression: torch.Tensor
    z0: torch.Tensor
    motion: torch.Tensor
    tau: torch.Tensor
    coarse: CoarseParams


def normalise_times(frame_times: torch.Tensor) -> torch.Tensor:
    """Clip times normalised to [0, 1].

    Args:
        frame_times: strictly increasing, any unit, shape (B, T), T >= 2.

    Returns:
        tau, shape (B, T), with tau[:, 0] = 0 and tau[:, -1] = 1 exactly.

    Raises:
        ValueError: a wrong shape, or times that do not increase.

    Example:
        >>> normalise_times(torch.tensor([[0.0, 1.0, 4.0]])).tolist()
        [[0.0, 0.25, 1.0]]
    """
    if frame_times.ndim != 2 or frame_times.shape[1] < 2:
        raise ValueError(f"frame_times: expected (B, T) with T >= 2, got {tuple(frame_times.shape)}")
    if not bool((frame_times[:, 1:] > frame_times[:, :-1]).all()):
        raise ValueError("frame_times: expected strictly increasing times in every clip, found a repeat or a step back")
    start = frame_times[:, :1]
    tau = (frame_times - start) / (frame_times[:, -1:] - start)
    # the ODE grid needs exact end points; division may leave 1 - 1e-16
    tau[:, 0] = 0.0
    tau[:, -1] = 1.0
    return tau


def interpolate_linear(knot_times: torch.Tensor, knot_values: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation per batch element, clamped outside the knots.

    Args:
        knot_times: increasing, shape (B, T).
        knot_values: shape (B, T, M).
        tau: where to read, a scalar or shape (B,).

    Returns:
        interpolated values, shape (B, M).
    """
    batch, n_knots = knot_times.shape
    tau = tau.reshape(-1).expand(batch).to(knot_times.dtype)
    upper = torch.searchsorted(knot_times, tau[:, None].contiguous()).squeeze(1).clamp(1, n_knots - 1)
    lower = upper - 1
    t0 = knot_times.gather(1, lower[:, None])
    t1 = knot_times.gather(1, upper[:, None])
    weight = ((tau[:, None] - t0) / (t1 - t0)).clamp(0.0, 1.0)
    index = lambda i: i[:, None, None].expand(-1, 1, knot_values.shape[-1])  # noqa: E731
    v0 = knot_values.gather(1, index(lower)).squeeze(1)
    v1 = knot_values.gather(1, index(upper)).squeeze(1)
    return v0 + weight * (v1 - v0)


class CodeVectorField(nn.Module):
    """f_theta(z, c, tau) -> dz/dtau: an MLP on ``[z, c, tau]``, c the condition (the fusion's residual r, or the
    motion features m: ``DEMConfig.ode_condition``).

    Args:
        code_dim: D.
        motion_dim: the condition's size (D for the fusion residual, M for motion features).
        hidden: MLP width.
        still: return ``net([z, c, tau]) - net([z, 0, tau])``: exactly zero where c = 0.
        output_bias: give the last layer a bias (it cancels with ``still``; kept where checkpoints have one).
    """

    def __init__(self, code_dim: int, motion_dim: int, hidden: int, still: bool = False, output_bias: bool = True):
        super().__init__()
        self.still = bool(still)
        self.net = nn.Sequential(
            nn.Linear(code_dim + motion_dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, code_dim, bias=output_bias),
        )
        # a near-zero field keeps z(tau) ~ z0 at start, so DEM begins as the coarse encoder's onset estimate
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        if output_bias:
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor, motion: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The code's time derivative.

        Args:
            z: codes, shape (B, D).
            motion: the condition (fusion residual or motion features), shape (B, C).
            tau: normalised times, shape (B, 1).

        Returns:
            dz/dtau, shape (B, D); with ``still``, exactly 0 in the rows where ``motion`` is all zero.
        """
        field = self.net(torch.cat([z, motion, tau], dim=-1))
        if self.still:  # same shapes, same ops: net of the same row twice is bitwise equal, so m = 0 gives exactly 0
            field = field - self.net(torch.cat([z, torch.zeros_like(motion), tau], dim=-1))
        return field


class _MotionConditionedField(nn.Module):
    """Adapter to torchdiffeq's ``func(tau, z)``: looks up m(tau) by interpolating the frames' motion features."""

    def __init__(self, field: nn.Module, knot_times: torch.Tensor, knot_motion: torch.Tensor):
        super().__init__()
        self.field = field
        self.knot_times = knot_times
        self.knot_motion = knot_motion

    def forward(self, tau: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        motion = interpolate_linear(self.knot_times, self.knot_motion, tau)
        return self.field(z, motion, tau.reshape(1, 1).expand(z.shape[0], 1).to(z.dtype))


def integrate_codes(field: nn.Module, z0: torch.Tensor, tau: torch.Tensor, motion: torch.Tensor,
                    config: DEMConfig) -> torch.Tensor:
    """Solve dz/dtau = field(z, m(tau), tau), z(0) = z0, and read z at each clip's own (irregular) times.

    The clips of a batch share one solve on the union of their times, so every clip is read at exactly its
    own frame times.

    Args:
        field: module (z (B, D), c (B, C), tau (B, 1)) -> (B, D).
        z0: onset codes, shape (B, D).
        tau: normalised times, tau[:, 0] = 0, shape (B, T).
        motion: the field's condition at the frames (fusion residual or motion features), shape (B, T, C).
        config: solver settings.

    Returns:
        codes, shape (B, T, D).

    Raises:
        ValueError: shapes that do not match, or a clip whose tau does not start at 0.
    """
    if z0.ndim != 2 or tau.ndim != 2 or motion.ndim != 3 or motion.shape[:2] != tau.shape or z0.shape[0] != tau.shape[0]:
        raise ValueError(
            f"integrate_codes: expected z0 (B,D), tau (B,T), motion (B,T,M); got {tuple(z0.shape)}, "
            f"{tuple(tau.shape)}, {tuple(motion.shape)}"
        )
    tau = tau.to(z0.dtype)
    grid = torch.unique(tau.reshape(-1))  # sorted
    if float(grid[0]) != 0.0:
        raise ValueError(f"integrate_codes: tau must start at 0 in every clip, found minimum {float(grid[0])}")
    func = _MotionConditionedField(field, tau.contiguous(), motion)
    options = {"step_size": config.step_size} if config.solver in FIXED_STEP_SOLVERS else None
    kwargs = dict(method=config.solver, rtol=config.rtol, atol=config.atol, options=options)
    if config.adjoint:
        # motion features are not parameters of the field: list them so their gradients are computed too
        adjoint_params = tuple(field.parameters()) + ((motion,) if motion.requires_grad else ())
        solution = odeint_adjoint(func, z0, grid, adjoint_params=adjoint_params, **kwargs)
    else:
        solution = odeint(func, z0, grid, **kwargs)  # (G, B, D)
    grid_index = torch.searchsorted(grid, tau.contiguous())  # (B, T): exact matches by construction
    batch_index = torch.arange(tau.shape[0], device=tau.device)[:, None].expand_as(grid_index)
    return solution[grid_index, batch_index]


class StaticEncoder(nn.Module):
    """Onset image + coarse onset expression -> z0 = lift(expression) + residual(image).

    Args:
        n_expression: E.
        config: the DEMConfig.
    """

    def __init__(self, n_expression: int, config: DEMConfig):
        super().__init__()
        self.lift = nn.Linear(n_expression, config.code_dim, bias=False)
        nn.init.orthogonal_(self.lift.weight)
        self.backbone = ConvBackbone(3, config.static_channels)
        self.residual = nn.Sequential(nn.Linear(self.backbone.out_features, config.hidden), nn.SiLU(),
                                      nn.Linear(config.hidden, config.code_dim))
        nn.init.normal_(self.residual[-1].weight, std=1e-3)
        nn.init.zeros_(self.residual[-1].bias)

    def forward(self, onset_frame: torch.Tensor, coarse_expression: torch.Tensor) -> torch.Tensor:
        """Onset codes.

        Args:
            onset_frame: images in [0, 1], shape (B, 3, H, W).
            coarse_expression: the coarse encoder's onset expression, shape (B, E).

        Returns:
            z0, shape (B, D).
        """
        return self.lift(coarse_expression) + self.residual(self.backbone(onset_frame * 2.0 - 1.0))


class MotionEncoder(nn.Module):
    """Flow onset->t in pixels -> motion features m, with m = 0 exactly where the flow is zero.

    Args:
        config: the DEMConfig.
    """

    def __init__(self, config: DEMConfig):
        super().__init__()
        self.flow_scale = config.flow_scale
        self.backbone = ConvBackbone(2, config.motion_channels)
        self.head = nn.Linear(self.backbone.out_features, config.motion_dim, bias=False)  # a bias cancels in m(flow) - m(0)

    def forward(self, flow_onset_to_t: torch.Tensor) -> torch.Tensor:
        """Motion features of the flow from the onset to each frame.

        Args:
            flow_onset_to_t: flow in pixels, shape (B, T, 2, H, W).

        Returns:
            m, shape (B, T, M).

        Raises:
            ValueError: ``flow_onset_to_t`` is not (B, T, 2, H, W).
        """
        if flow_onset_to_t.ndim != 5 or flow_onset_to_t.shape[2] != 2:
            raise ValueError(f"flow_onset_to_t: expected (B, T, 2, H, W), got {tuple(flow_onset_to_t.shape)}")
        batch, frames = flow_onset_to_t.shape[:2]
        flow = flow_onset_to_t.flatten(0, 1) / self.flow_scale
        # append one zero field and subtract its features: no motion -> no motion feature
        stacked = torch.cat([flow, torch.zeros_like(flow[:1])], dim=0)
        features = self.head(self.backbone(stacked))
        return (features[:-1] - features[-1:]).reshape(batch, frames, -1)


class ResidualFusion(nn.Module):
    """Per-frame codes z0 + r, r = g([z0, m]) (``still``: minus g([z0, 0]), so no motion gives exactly z0).

    Args:
        config: the DEMConfig.
        still: subtract ``g([z0, 0])`` (the "fusion" wiring; its last layer then has no bias, which would cancel);
            off for checkpoints of the "motion" wiring.
    """

    def __init__(self, config: DEMConfig, still: bool = False):
        super().__init__()
        self.still = bool(still)
        self.net = nn.Sequential(nn.Linear(config.code_dim + config.motion_dim, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.code_dim, bias=not self.still))
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        if not self.still:
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, z0: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Per-frame fused codes.

        Args:
            z0: onset codes, shape (B, D).
            motion: motion features, shape (B, T, M).

        Returns:
            codes, shape (B, T, D); with ``still``, exactly z0 in the frames whose motion is all zero.
        """
        z0_frames = z0[:, None].expand(-1, motion.shape[1], -1)
        residual = self.net(torch.cat([z0_frames, motion], dim=-1))
        if self.still:  # same shapes, same ops: m = 0 gives a residual of exactly 0
            residual = residual - self.net(torch.cat([z0_frames, torch.zeros_like(motion)], dim=-1))
        return z0_frames + residual


class DEM(nn.Module):
    """DEM around a coarse encoder: ``forward(frames, flow_onset_to_t, frame_times) -> DEMOutput``.

    Args:
        coarse_encoder: any module (N, 3, H, W) -> CoarseParams with expression (N, E); it is a submodule (its
            weights are trained with DEM unless ``config.freeze_coarse``).
        n_expression: E.
        config: the DEMConfig.
    """

    def __init__(self, coarse_encoder: nn.Module, n_expression: int, config: DEMConfig):
        super().__init__()
        self.config = config
        self.coarse_encoder = coarse_encoder
        self.static_encoder = StaticEncoder(n_expression, config)
        self.motion_encoder = MotionEncoder(config)
        on_fusion = config.ode_condition == "fusion"
        self.fusion = ResidualFusion(config, still=on_fusion)
        condition_dim = config.code_dim if on_fusion else config.motion_dim
        self.vector_field = CodeVectorField(config.code_dim, condition_dim, config.hidden,
                                            still=on_fusion or config.still_field, output_bias=not on_fusion)
        self.decoder = nn.Linear(config.code_dim, n_expression)
        # decoder = lift^T: with D >= E, decode(lift(e)) = e, so an untrained DEM reproduces the coarse onset
        with torch.no_grad():
            self.decoder.weight.copy_(self.static_encoder.lift.weight.T)
            self.decoder.bias.zero_()

    def encode_frames(self, frames: torch.Tensor) -> CoarseParams:
        """The coarse encoder's per-frame output.

        Args:
            frames: images in [0, 1], shape (B, T, 3, H, W).

        Returns:
            CoarseParams with fields (B, T, ...).
        """
        batch, n_frames = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_coarse):
            return self.coarse_encoder(frames.flatten(0, 1)).reshape_batch(batch, n_frames)

    def evolve(self, onset_frame: torch.Tensor, onset_expression: torch.Tensor, flow_onset_to_t: torch.Tensor,
               tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The static branch from an onset expression, the motion branch, their fusion and the codes' evolution.

        ``forward`` feeds the coarse encoder's onset expression; ``reconstruct`` feeds the landmark fit's.

        Args:
            onset_frame: onset images in [0, 1], shape (B, 3, H, W).
            onset_expression: the onset's expression, shape (B, E).
            flow_onset_to_t: optical flow from the onset in pixels, shape (B, T, 2, H, W).
            tau: normalised frame times (``normalise_times``), shape (B, T).

        Returns:
            z0 (B, D), motion features (B, T, M), the residual fusion's codes (B, T, D), and the evolved codes
            (B, T, D): the ODE's with ``temporal == "ode"`` (conditioned on the fusion's residual, or on the
            motion features with ``ode_condition == "motion"``), else the fusion's.
        """
        z0 = self.static_encoder(onset_frame, onset_expression)
        motion = self.motion_encoder(flow_onset_to_t)
        frame_code = self.fusion(z0, motion)
        if self.config.temporal == "ode":
            condition = frame_code - z0[:, None] if self.config.ode_condition == "fusion" else motion
            code = integrate_codes(self.vector_field, z0, tau, condition, self.config)
        else:
            code = frame_code
        return z0, motion, frame_code, code

    def forward(self, frames: torch.Tensor, flow_onset_to_t: torch.Tensor, frame_times: torch.Tensor) -> DEMOutput:
        """Temporally consistent expressions of a batch of clips (frame 0 is the onset).

        Args:
            frames: images in [0, 1], shape (B, T, 3, H, W).
            flow_onset_to_t: optical flow from the onset to each frame in pixels, shape (B, T, 2, H, W).
            frame_times: strictly increasing frame times, any unit, shape (B, T).

        Returns:
            the DEMOutput.

        Raises:
            ValueError: shapes that do not match.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames: expected (B, T, 3, H, W), got {tuple(frames.shape)}")
        if flow_onset_to_t.shape[:2] != frames.shape[:2] or flow_onset_to_t.shape[-2:] != frames.shape[-2:]:
            raise ValueError(
                f"flow_onset_to_t: expected ({frames.shape[0]}, {frames.shape[1]}, 2, {frames.shape[3]}, "
                f"{frames.shape[4]}) to match frames, got {tuple(flow_onset_to_t.shape)}"
            )
        if frame_times.shape != frames.shape[:2]:
            raise ValueError(f"frame_times: expected {tuple(frames.shape[:2])}, got {tuple(frame_times.shape)}")
        coarse = self.encode_frames(frames)
        tau = normalise_times(frame_times.to(frames.dtype))
        z0, motion, frame_code, code = self.evolve(frames[:, 0], coarse.expression[:, 0], flow_onset_to_t, tau)
        return DEMOutput(
            code=code, expression=self.decoder(code), frame_code=frame_code,
            frame_expression=self.decoder(frame_code), z0=z0, motion=motion, tau=tau, coarse=coarse,
        )
