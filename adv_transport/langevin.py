"""Projected Langevin sampling of the entropic worst-case distribution.

The distribution is ``p*(x_adv | x, y) ∝ exp(lambda * CE(f(x_adv), y)) * 1{x_adv in the threat ball around x}``: the
adversary's best response when it pays an entropy price ``1 / lambda`` for concentrating its mass.

One step, for inputs ``x`` with labels ``y`` and current samples ``x_adv = x + delta``::

    x_adv <- x_adv + eta * dir(grad_x sum_i CE(f(x_adv_i), y_i))      dir = sign (l-inf) or g / ||g||_2 (l2)
    x_adv <- Proj(x_adv + s * sqrt(2 * eta) * c * xi)                  xi uniform in [-1, 1] or standard Gaussian
                                                                       per coordinate; c = 1 (l-inf), 1/sqrt(d) (l2)

where ``Proj`` is the Euclidean projection onto the threat ball around ``x`` intersected with the box [0, 1]^d
(:meth:`ThreatModel.delta_to`) and d is the number of input values of one example.
``eta`` (the step size; the sampler's argument ``eta``) and ``s`` (noise scale) may be numbers or schedules of the
training progress in epochs.

The noise parametrisation. The drift has norm eta in the threat norm: sign(g) moves every coordinate by eta (l-inf),
g / ||g||_2 moves the point by eta in l2. The noise is scaled so that it is measured in the same norm:

- l-inf: every coordinate gets ``s * sqrt(2 eta) * xi_i`` (the authors' code), so per coordinate the noise-to-drift
  ratio is ``s * sqrt(2 / eta)`` in any dimension.
- l2: every coordinate gets ``s * sqrt(2 eta) * xi_i / sqrt(d)``, so the noise vector's l2 norm is about
  ``s * sqrt(2 eta)`` (exactly so in mean square for Gaussian xi, ``/ sqrt(3)`` for uniform xi) in any dimension, and
  the noise-to-drift ratio of the l2 norms is ``s * sqrt(2 / eta)`` (Gaussian) or ``s * sqrt(2 / (3 eta))`` (uniform),
  independent of d. Without the ``1 / sqrt(d)`` the noise norm grows like sqrt(d) (about 1.1 against a drift of
  0.016 for CIFAR-10 at eta = 8/255/2) and the chain is noise plus projection.

Relation to the temperature ``1 / lambda`` of ``p* ∝ exp(lambda * loss)``. A Langevin step of size h on the energy
``-lambda * loss`` reads ``x <- x + h * lambda * g + sqrt(2 h) * N(0, I)`` with g the loss gradient. Matching the
noise (Gaussian xi) gives ``h = s^2 * eta * c^2``. In l2 the drift ``eta * g / ||g||_2`` is collinear with g, and
matching it gives ``lambda = eta / (h * ||g||_2) = d / (s^2 * ||g||_2)``: the normalised step samples p* at a
temperature ``1 / lambda = s^2 * ||g||_2 / d`` that follows the local gradient norm (so ``s`` fixes the
noise-to-drift ratio, not lambda). In l-inf the sign step is not collinear with g; matching its component along g
gives ``lambda = ||g||_1 / (s^2 * ||g||_2^2)``. ``s = 0`` is the zero-temperature limit (projected normalised
gradient ascent). With uniform xi (variance 1/3 per coordinate) replace s^2 by s^2 / 3.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from .attacks import input_gradient
from .errors import ConfigError
from .modes import check_model_mode, model_mode
from .schedules import Schedule, value_at
from .threat import ThreatModel

NOISES = ("uniform", "gaussian")


class LangevinSampler:
    """Projected Langevin dynamics in the threat ball.

    Args:
        threat: the ball the samples live in.
        eta: the step size, a number or a schedule ``t -> eta`` (t = progress in epochs). (``step_size=``: its former
            name, deprecated; attacks keep calling their step ``step_size``/alpha.)
        noise_scale: s, a number or a schedule. The noise added per step is ``s * sqrt(2 * eta) * xi`` per coordinate
            for l-inf and ``s * sqrt(2 * eta) * xi / sqrt(d)`` for l2 (d input values per example), so that its norm
            keeps the same ratio to the drift (of norm eta) in any dimension; see the module docstring.
        steps: T, Langevin steps per call (the chain is warm-started from the given delta).
        noise: ``uniform`` (xi ~ U[-1, 1] per coordinate, the authors' code) or ``gaussian`` (xi ~ N(0, 1)).
        model_mode: ``train`` (default, as in the authors' code: dropout on, batch-norm normalises with the batch's
            statistics and updates its running statistics at every step), ``batch-stats`` (the same, but batch-norm
            running statistics are left untouched), ``eval``, or ``keep`` (leave the model as it is). Submodules in
            eval mode under a model in train mode stay in eval mode; every mode is restored afterwards
            (:mod:`adv_transport.modes`).
    """

    def __init__(
        self,
        threat: ThreatModel,
        eta: Schedule = 0.01,
        noise_scale: Schedule = 0.2,
        steps: int = 1,
        noise: str = "uniform",
        model_mode: str = "train",
        *,
        step_size: Schedule | None = None,
    ):
        if step_size is not None:
            warnings.warn("LangevinSampler(step_size=...) is deprecated: use eta=...", DeprecationWarning, stacklevel=2)
            eta = step_size
        if noise not in NOISES:
            raise ConfigError(f"noise {noise!r} is not accepted; accepted: {', '.join(NOISES)}")
        if int(steps) < 1:
            raise ConfigError(f"Langevin steps (T) must be >= 1, got {steps!r}")
        self.threat = threat
        self.eta = eta
        self.noise_scale = noise_scale
        self.steps = int(steps)
        self.noise = noise
        self.model_mode = check_model_mode(model_mode)
        self._check_values(0.0)

    @property
    def step_size(self) -> Schedule:
        """Deprecated: :attr:`eta`."""
        warnings.warn("LangevinSampler.step_size is deprecated: use .eta", DeprecationWarning, stacklevel=2)
        return self.eta

    def _check_values(self, t: float) -> tuple[float, float]:
        eta, s = value_at(self.eta, t), value_at(self.noise_scale, t)
        if not math.isfinite(eta) or eta <= 0:
            raise ConfigError(f"Langevin eta: the step size must be > 0, got {eta!r} at progress t={t:g}")
        if not math.isfinite(s) or s < 0:
            raise ConfigError(f"Langevin noise scale must be >= 0, got {s!r} at progress t={t:g}")
        return eta, s

    def _noise(self, like: torch.Tensor, amplitude: float, generator: torch.Generator | None) -> torch.Tensor:
        """``amplitude * xi``, xi uniform in [-1, 1] or standard Gaussian per coordinate. With a ``generator`` the
        draw happens on the CPU (reproducible across devices); without one, in one pass on ``like``'s device. A
        per-example keyed source (:class:`adv_transport.rng.LangevinNoise`) draws xi from (seed, epoch, index)."""
        if hasattr(generator, "noise"):
            return generator.noise(like, self.noise).mul_(amplitude)
        if generator is not None:
            if self.noise == "uniform":
                xi = torch.rand(like.shape, generator=generator, dtype=like.dtype) * 2 - 1
            else:
                xi = torch.randn(like.shape, generator=generator, dtype=like.dtype)
            return xi.to(like.device).mul_(amplitude)
        if self.noise == "uniform":
            return torch.empty_like(like).uniform_(-amplitude, amplitude)
        return torch.randn_like(like).mul_(amplitude)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, t: float = 0.0,
             generator: torch.Generator | None = None, threat: ThreatModel | None = None) -> torch.Tensor:
        """One Langevin step from ``x + delta``; returns the new delta (detached). The model mode is not changed.
        ``threat``: a smaller ball to sample in (an eps warm-up); eta then scales with its eps."""
        grad, _ = input_gradient(model, x + delta, y)
        return self.move(x, delta, grad, t, generator, threat)

    def move(self, x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, t: float = 0.0,
             generator: torch.Generator | None = None, threat: ThreatModel | None = None) -> torch.Tensor:
        """The Langevin update of ``x + delta`` given the input gradient ``grad`` there (drift, noise, projection);
        returns the new delta. :meth:`step` computes the gradient first; free ATL takes it from the training pass.
        ``grad`` may be overwritten."""
        eta, s = self._check_values(t)
        if threat is None:
            threat = self.threat
        elif threat.eps != self.threat.eps:
            eta *= threat.eps / self.threat.eps
        # in place on tensors this step owns: each elementwise pass over the batch costs as much as a small layer
        x_adv = (x + delta).detach()
        x_adv.add_(grad.sign_() if threat.norm == "linf" else threat.direction(grad), alpha=eta)
        if s > 0:
            amplitude = s * math.sqrt(2.0 * eta)
            if threat.norm == "l2":  # noise of l2 norm ~ s * sqrt(2 eta) in any dimension (module docstring)
                amplitude /= math.sqrt(x_adv[0].numel())
            x_adv.add_(self._noise(x_adv, amplitude, generator))
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
