"""Threat models: the norm ball B_eps(x) intersected with the image box [0, 1]^d.

A :class:`ThreatModel` knows how to take an ascent direction from a gradient (``sign`` for l-inf, ``g / ||g||_2``
for l2), how to project a perturbation onto its ball, and how to keep ``x + delta`` inside [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError, DataRangeError

NORMS = ("linf", "l2")
_NORM_ALIASES = {"linf": "linf", "Linf": "linf", "inf": "linf", "l2": "l2", "L2": "l2", "2": "l2"}
_TINY = 1e-12


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norm, shaped to broadcast against ``t``."""
    n = t.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """An l-inf or l2 ball of radius ``eps`` around each input, inputs living in [0, 1].

    >>> ThreatModel("linf", 0.3)
    ThreatModel(norm='linf', eps=0.3)
    """

    norm: str
    eps: float

    def __post_init__(self):
        norm = _NORM_ALIASES.get(str(self.norm))
        if norm is None:
            raise ConfigError(f"unknown norm {self.norm!r}; accepted: {', '.join(NORMS)}")
        object.__setattr__(self, "norm", norm)
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ConfigError(f"eps must be a number, got {self.eps!r}") from None
        if not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}")
        if norm == "linf" and eps >= 1:
            raise ConfigError(
                f"l-inf eps={eps} is out of range for inputs in [0, 1]: accepted 0 < eps < 1 "
                "(for 8/255 write 0.0314, not 8)"
            )
        object.__setattr__(self, "eps", eps)

    def check_input_dim(self, d: int) -> None:
        """Reject an l2 radius larger than the diameter of the [0, 1]^d box (a likely unit mistake)."""
        if self.norm == "l2" and self.eps >= math.sqrt(d):
            raise ConfigError(
                f"l2 eps={self.eps} is out of range for inputs of {d} values in [0, 1]: accepted 0 < eps < sqrt(d) = "
                f"{math.sqrt(d):.3g}"
            )

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit norm (dual norm): ``sign(g)`` or ``g / ||g||_2`` (0 where g = 0)."""
        if self.norm == "linf":
            return grad.sign()
        return grad / _flat_norm(grad).clamp_min(_TINY)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``delta`` onto the ball (clipping for l-inf, radial scaling for l2)."""
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        norm = _flat_norm(delta)
        return delta * torch.clamp(self.eps / norm.clamp_min(_TINY), max=1.0)

    def clip(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` onto the ball around ``x``, then onto the box [0, 1]."""
        return (x + self.project(x_adv - x)).clamp(0.0, 1.0)

    def delta_to(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """``clip(x, x_adv) - x``, the feasible perturbation nearest ``x_adv`` (detached; may reuse ``x_adv``'s
        memory). For l-inf, ball and box are intervals per coordinate that both contain 0, so clamping to the box
        first and then to the ball is the same projection, in three passes instead of five."""
        x_adv = x_adv.detach()
        if self.norm == "linf":
            return x_adv.clamp_(0.0, 1.0).sub_(x).clamp_(-self.eps, self.eps)
        return self.clip(x, x_adv) - x

    def uniform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random perturbation in the ball (uniform per coordinate for l-inf, uniform in the ball for l2),
        clipped so that ``x + delta`` lies in [0, 1]."""
        if self.norm == "linf":
            delta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * self.eps
        else:
            g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            d = g[0].numel()
            r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
            delta = g / _flat_norm(g).clamp_min(_TINY) * self.eps * r ** (1.0 / d)
        return (x + delta).clamp(0.0, 1.0) - x

    def contains(self, delta: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
        """Per-example bool: is ``delta`` inside the ball (up to ``atol``)?"""
        if self.norm == "linf":
            return delta.flatten(1).abs().amax(dim=1) <= self.eps + atol
        return delta.flatten(1).norm(p=2, dim=1) <= self.eps + atol


def check_unit_range(x: torch.Tensor, what: str = "inputs") -> None:
    """Raise :class:`DataRangeError` unless ``x`` is a floating tensor with values in [0, 1]."""
    if not torch.is_floating_point(x):
        raise DataRangeError(f"{what} must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise DataRangeError(
            f"{what} must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}]. Feed un-normalised images "
            "(ToTensor() without Normalize); adv_transport puts normalisation inside the model "
            "(adv_transport.models.Normalized)."
        )
