"""Projected Langevin sampling of the entropic worst-case distribution (SPEC section 1).

One step, for inputs ``x`` with labels ``y`` and current samples ``x_adv = x + delta``::

    x_adv <- x_adv + eta * dir(grad_x sum_i CE(f(x_adv_i), y_i))      dir = sign (l-inf) or g / ||g||_2 (l2)
    x_adv <- Proj_ball(x_adv + s * sqrt(2 * eta) * xi)                 xi uniform in [-1, 1] or standard Gaussian
    x_adv <- clip(x_adv, 0, 1)

``eta`` (step size) and ``s`` (noise scale) may be numbers or schedules of the training progress in epochs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attacks import input_gradient
from .errors import ConfigError
from .modes import check_mode, model_mode
from .schedules import Schedule, value_at
from .threat import ThreatModel

NOISES = ("uniform", "gaussian")


class LangevinSampler:
    """Projected Langevin dynamics in the threat ball.

    Args:
        threat: the ball the samples live in.
        step_size: eta, a number or a schedule ``t -> eta`` (t = progress in epochs).
        noise_scale: s, a number or a schedule. The noise added per step is ``s * sqrt(2 * eta) * xi``.
        steps: T, Langevin steps per call (the chain is warm-started from the given delta).
        noise: ``uniform`` (xi ~ U[-1, 1] per coordinate, the authors' code) or ``gaussian`` (xi ~ N(0, 1)).
        model_mode: ``train`` (default, as in the authors' code: dropout on, batch-norm in batch mode),
            ``eval``, or ``keep`` (leave the model as it is). The previous mode is restored afterwards.
    """

    def __init__(
        self,
        threat: ThreatModel,
        step_size: Schedule = 0.01,
        noise_scale: Schedule = 0.2,
        steps: int = 1,
        noise: str = "uniform",
        model_mode: str = "train",
    ):
        if noise not in NOISES:
            raise ConfigError(f"noise {noise!r} is not accepted; accepted: {', '.join(NOISES)}")
        if int(steps) < 1:
            raise ConfigError(f"Langevin steps (T) must be >= 1, got {steps!r}")
        self.threat = threat
        self.step_size = step_size
        self.noise_scale = noise_scale
        self.steps = int(steps)
        self.noise = noise
        self.model_mode = check_mode(model_mode)
        self._check_values(0.0)

    def _check_values(self, t: float) -> tuple[float, float]:
        eta, s = value_at(self.step_size, t), value_at(self.noise_scale, t)
        if not math.isfinite(eta) or eta <= 0:
            raise ConfigError(f"Langevin step size must be > 0, got {eta!r} at progress t={t:g}")
        if not math.isfinite(s) or s < 0:
            raise ConfigError(f"Langevin noise scale must be >= 0, got {s!r} at progress t={t:g}")
        return eta, s

    def _noise(self, like: torch.Tensor, amplitude: float, generator: torch.Generator | None) -> torch.Tensor:
        """``amplitude * xi``, xi uniform in [-1, 1] or standard Gaussian per coordinate. With a ``generator`` the
        draw happens on the CPU (reproducible across devices); without one, in one pass on ``like``'s device."""
        if generator is not None:
            if self.noise == "uniform":
                xi = torch.rand(like.shape, generator=generator, dtype=like.dtype) * 2 - 1
            else:
                xi = torch.randn(like.shape, generator=generator, dtype=like.dtype)
            return xi.to(like.device).mul_(amplitude)
        if self.noise == "uniform":
            return torch.empty_like(like).uniform_(-amplitude, amplitude)
        return torch.randn_like(like).mul_(amplitude)

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        delta: torch.Tensor,
        t: float = 0.0,
        generator: torch.Generator | None = None,
        threat: ThreatModel | None = None,
    ) -> torch.Tensor:
        """One Langevin step from ``x + delta``; returns the new delta (detached). The model mode is not changed.
        ``threat``: a smaller ball to sample in (an eps warm-up); eta then scales with its eps."""
        eta, s = self._check_values(t)
        if threat is None:
            threat = self.threat
        elif threat.eps != self.threat.eps:
            eta *= threat.eps / self.threat.eps
        x_adv = x + delta
        grad, _ = input_gradient(model, x_adv, y)
        # in place on tensors this step owns: each elementwise pass over the batch costs as much as a small layer
        x_adv = x_adv.detach()
        x_adv.add_(grad.sign_() if threat.norm == "linf" else threat.direction(grad), alpha=eta)
        if s > 0:
            x_adv.add_(self._noise(x_adv, s * math.sqrt(2.0 * eta), generator))
        return threat.delta_to(x, x_adv)

    def sample(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        delta: torch.Tensor | None = None,
        t: float = 0.0,
        generator: torch.Generator | None = None,
        threat: ThreatModel | None = None,
    ) -> torch.Tensor:
        """Advance the chains ``x + delta`` (clean start when ``delta`` is None) by T steps; returns the new delta."""
        x = x.detach()
        delta = torch.zeros_like(x) if delta is None else delta.detach()
        with model_mode(model, self.model_mode):
            for _ in range(self.steps):
                delta = self.step(model, x, y, delta, t, generator, threat)
        return delta

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta=None, t: float = 0.0) -> torch.Tensor:
        """Adversarial inputs ``x + delta`` after T steps (convenience for using the sampler as an attack)."""
        return (x + self.sample(model, x, y, delta, t)).detach()
