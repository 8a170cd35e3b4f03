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
# the same norms as RobustBench, AutoAttack and torchattacks spell them (their threat-model names)
HOST_NORMS = {"linf": "Linf", "l2": "L2"}
_NORM_ALIASES = {**{n: n for n in NORMS}, **{h: n for n, h in HOST_NORMS.items()}, "inf": "linf", "2": "l2"}
_TINY = 1e-12


def canonical_norm(name: str) -> str:
    """Our name of a norm (``linf`` or ``l2``) from any accepted spelling (``Linf``, ``L2``, ``inf``, ``2``)."""
    norm = _NORM_ALIASES.get(str(name))
    if norm is None:
        raise ConfigError(f"unknown norm {name!r}; accepted: {', '.join(NORMS)} (or {', '.join(HOST_NORMS.values())})")
    return norm


def host_norm(name: str) -> str:
    """The host libraries' name of a norm (``Linf`` or ``L2``: RobustBench, AutoAttack, torchattacks)."""
    return HOST_NORMS[canonical_norm(name)]


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
        norm = canonical_norm(self.norm)
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
        """The feasible perturbation nearest ``x_adv - x``: the Euclidean projection of ``x_adv - x`` onto the
        intersection of the ball and the box ``{delta : 0 <= x + delta <= 1}`` (detached; may reuse ``x_adv``'s
        memory).

        For l-inf, ball and box are intervals per coordinate that both contain 0, so clamping to the box first and
        then to the ball is that projection, in three passes instead of five. For l2, ball-then-box (what
        :meth:`clip` does) is not: the projection is ``clamp(t * v, -x, 1 - x)`` with ``v = x_adv - x`` and the
        largest ``t`` in (0, 1] whose result lies in the ball (the KKT conditions of the problem; ``t = 1 / (1 + mu)``
        with mu the multiplier of the ball constraint), found exactly per example from the sorted clipping
        thresholds of the coordinates (see :func:`project_l2_box`)."""
        x_adv = x_adv.detach()
        if self.norm == "linf":
            return x_adv.clamp_(0.0, 1.0).sub_(x).clamp_(-self.eps, self.eps)
        return project_l2_box(x_adv.sub_(x), x, self.eps)

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


def project_l2_box(v: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each example's ``v`` onto ``{d : ||d||_2 <= eps, 0 <= x + d <= 1}`` (per example;
    ``x`` in [0, 1], same shape as ``v``).

    Minimising ``||d - v||^2 / 2 + mu * ||d||^2 / 2`` over the box separates per coordinate: ``d(t) = clamp(t * v,
    -x, 1 - x)`` with ``t = 1 / (1 + mu)``. ``||d(t)||`` is non-decreasing in t, so the answer is ``d(1)`` (the box
    projection) when that lies in the ball, and otherwise ``d(t*)`` with ``||d(t*)|| = eps``. With C the coordinates
    clipped at t*, ``||d(t*)||^2 = sum_C bound^2 + t*^2 * sum_not_C v^2`` gives t* in closed form once C is known.
    C is found by an active-set iteration from the radial scaling ``t = eps / ||v||`` (each round solves for t on the
    current set; the sets only grow and every t stays feasible, so it ends at the exact t* when the set stops
    changing, usually in a few rounds); examples still changing after a few rounds are solved from the sorted
    clipping thresholds of their coordinates (one sort over their d values). Computed in float32 at least; a last
    radial rescale absorbs rounding so the result's norm never exceeds eps by more than one float rounding.
    """
    shape, dtype = v.shape, v.dtype
    work = v.flatten(1)
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()
    xf = x.detach().flatten(1).to(work.dtype)
    lo, hi = -xf, 1.0 - xf
    out = torch.minimum(torch.maximum(work, lo), hi)  # t = 1: the box projection
    over = out.norm(p=2, dim=1) > eps
    if not bool(over.any()):
        return out.view(shape).to(dtype)
    rows = over.nonzero().squeeze(1)
    vr, lor, hir = work[rows], lo[rows], hi[rows]
    v2 = vr.square()
    eps2 = eps * eps
    t = eps / v2.sum(1, keepdim=True).sqrt().clamp_min(_TINY)
    count = torch.full_like(t, -1.0)
    done = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    for _ in range(_ACTIVE_SET_ROUNDS):
        tv = t * vr
        d = torch.minimum(torch.maximum(tv, lor), hir)
        clipped = d != tv
        new_count = clipped.sum(1, keepdim=True).to(t.dtype)
        done = new_count == count  # the set did not change: t solves the equation on the final set
        if bool(done.all()):
            break
        count = new_count
        a = torch.where(clipped, d.square(), torch.zeros_like(d)).sum(1, keepdim=True)
        b = torch.where(clipped, torch.zeros_like(v2), v2).sum(1, keepdim=True)
        t_new = ((eps2 - a).clamp_min(0.0) / b.clamp_min(_TINY * _TINY)).sqrt().clamp(max=1.0)
        t = torch.where(done, t, torch.maximum(t, t_new))
    if not bool(done.all()):
        rest = (~done).squeeze(1).nonzero().squeeze(1)
        t = t.index_copy(0, rest, _t_from_sorted_thresholds(vr[rest], lor[rest], hir[rest], eps2))
    d = torch.minimum(torch.maximum(t * vr, lor), hir)
    n = d.norm(p=2, dim=1, keepdim=True)
    d = d * torch.clamp(eps / n.clamp_min(_TINY), max=1.0)  # rounding only: shrinking stays in the box
    return out.index_copy(0, rows, d).view(shape).to(dtype)


_ACTIVE_SET_ROUNDS = 8


def _t_from_sorted_thresholds(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps2: float) -> torch.Tensor:
    """t* of :func:`project_l2_box` for rows whose box projection leaves the ball, from the sorted thresholds
    ``tau_i = bound_i / v_i`` at which each coordinate clips: between consecutive thresholds
    ``||d(t)||^2 = A_k + t^2 * B_k`` (A_k: squared bounds of the k coordinates clipped, B_k: squared v of the rest)."""
    bound = torch.where(v > 0, hi, torch.where(v < 0, lo, torch.zeros_like(v)))
    free = v != 0
    tau = torch.where(free, bound / torch.where(free, v, torch.ones_like(v)), torch.full_like(v, math.inf))
    tau, order = tau.sort(dim=1)
    v2 = v.gather(1, order).square()
    b2 = bound.gather(1, order).square()
    zero = torch.zeros_like(v2[:, :1])
    clipped = torch.cat([zero, b2.cumsum(1)], 1)  # A_k
    free_mass = (v2.sum(1, keepdim=True) - torch.cat([zero, v2.cumsum(1)], 1)).clamp_min(0.0)  # B_k
    # ||d||^2 at the k-th threshold (k = 1..d), k - 1 coordinates clipped before it; non-decreasing in k
    g = clipped[:, :-1] + tau.square() * free_mass[:, :-1]
    g = torch.where(torch.isinf(tau), torch.full_like(g, math.inf), g)  # v_i = 0: never clipped
    k = (g <= eps2).sum(1, keepdim=True)  # coordinates clipped at t*
    a_k, b_k = clipped.gather(1, k), free_mass.gather(1, k)
    return ((eps2 - a_k).clamp_min(0.0) / b_k.clamp_min(_TINY * _TINY)).sqrt().clamp(max=1.0)


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
