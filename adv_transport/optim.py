"""Normalized optimizers of "Dissecting adaptive methods in GANs" (Jelassi et al. 2022), as ``torch.optim`` classes.

With ``g`` the gradient (negated when ``maximize=True``), ``M`` the SGD direction (``g``, or its momentum buffer
when ``momentum > 0``, Nesterov-corrected when ``nesterov=True``) and ``A`` Adam's update vector
``m_hat / (sqrt(v_hat) + adam_eps)``:

    NormalizedSGD:  W <- W - lr * M / (||M|| + eps)
    AdaLR:          W <- W - lr * ||A|| * M / (||M|| + eps)      (SGD's direction, Adam's norm)
    AdaDir:         W <- W - lr * ||M|| * A / (||A|| + eps)      (Adam's direction, SGD's norm)

``normalize='global'`` takes one l2 norm over all parameters of the optimizer (all param groups: the g-nSGDA of the
paper), ``normalize='layer'`` one norm per parameter tensor (l-nSGDA). A zero gradient gives a zero step, never a NaN.

``weight_decay`` has torch.optim.SGD's semantics (``g <- g + wd * W`` before the momentum), or, with
``decoupled_weight_decay=True``, AdamW's (``W <- W * (1 - lr * wd)`` before the step). Param-group keys these
optimizers do not know (e.g. timm's ``lr_scale``) are kept and ignored: the scheduler applies them.
Each optimizer has a single-tensor and a ``foreach`` (multi-tensor) implementation that give identical results.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from .errors import ConfigError

NORMALIZE = ("global", "layer")

__all__ = ["AdaDir", "AdaLR", "NormalizedSGD"]


def _check(lr, eps, weight_decay, normalize, momentum=0.0, dampening=0.0, nesterov=False, betas=None):
    if not (isinstance(lr, Tensor) or lr >= 0.0):
        raise ConfigError(f"Invalid learning rate: {lr} (accepted: >= 0)")
    if not eps >= 0.0:
        raise ConfigError(f"Invalid eps: {eps} (accepted: >= 0)")
    if not weight_decay >= 0.0:
        raise ConfigError(f"Invalid weight_decay: {weight_decay} (accepted: >= 0)")
    if normalize not in NORMALIZE:
        raise ConfigError(f"Invalid normalize: {normalize!r} (accepted: {', '.join(NORMALIZE)})")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"Invalid momentum: {momentum} (accepted: 0 <= momentum < 1)")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ConfigError("Nesterov momentum requires a momentum > 0 and zero dampening")
    if betas is not None and not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ConfigError(f"Invalid betas: {betas} (accepted: each in [0, 1))")


def _default_foreach(params: list[Tensor]) -> bool:
    return all(p.device.type in ("cuda", "cpu") for p in params) and not torch.jit.is_scripting()


class _NormalizedBase(Optimizer):
    """Shared machinery: gathering gradients per group, the two-phase step (directions, then one norm over
    everything or per tensor), state, closures and sparse-gradient errors."""

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("decoupled_weight_decay", False)

    def _gather(self, group):
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        return params, grads

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform a single optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []  # per group: the step's numerator and the norms of its magnitude source and of its direction
        for group in self.param_groups:
            params, grads = self._gather(group)
            if not params:
                continue
            foreach = group["foreach"] if group["foreach"] is not None else _default_foreach(params)
            work.append((group, params, foreach, *self._directions(group, params, grads, foreach)))
        glob = [w for w in work if w[0]["normalize"] == "global"]
        if glob:  # one norm over every parameter of every group that asks for the global norm
            dir_total = torch.linalg.vector_norm(torch.cat([w[6] for w in glob]))
            if glob[0][5] is not None:
                mag_total = torch.linalg.vector_norm(torch.cat([w[5] for w in glob]))
        for group, params, foreach, num, factor, mag, dirn in work:
            # all per-tensor scalars as one vector: a few small ops per group instead of a few per tensor
            lr, eps = group["lr"], group["eps"]
            if group["normalize"] == "global":
                dirn = dir_total
                mag = None if mag is None else mag_total
            scales = (-lr / (dirn + eps)) if mag is None else (-lr * mag / (dirn + eps))
            if factor is not None:  # num holds a multiple of the direction: num * factor is the direction
                scales = scales * factor
            scales = scales.expand(len(params)).unbind()
            self._decay(group, params, foreach)
            self._addcmul(params, num, scales, foreach)
        return loss

    @staticmethod
    def _norms(tensors: list[Tensor], foreach: bool) -> Tensor:
        """The l2 norm of each tensor, as one vector."""
        if foreach:
            return torch.stack(torch._foreach_norm(tensors))
        return torch.stack([torch.linalg.vector_norm(t) for t in tensors])

    def _grads(self, group, params, grads, foreach) -> list[Tensor]:
        """g (negated for maximize), plus coupled weight decay."""
        wd = group["weight_decay"]
        if foreach:
            g = torch._foreach_neg(grads) if group["maximize"] else list(grads)
            if wd != 0 and not group["decoupled_weight_decay"]:
                g = torch._foreach_add(g, params, alpha=wd)
            return g
        out = []
        for p, gr in zip(params, grads):
            g = -gr if group["maximize"] else gr
            if wd != 0 and not group["decoupled_weight_decay"]:
                g = g.add(p, alpha=wd)
            out.append(g)
        return out

    def _momentum(self, group, params, g, foreach) -> list[Tensor]:
        """SGD's direction M: g, or the momentum buffer (torch.optim.SGD's rule), Nesterov-corrected if asked."""
        momentum, dampening = group["momentum"], group["dampening"]
        if momentum == 0:
            return g
        bufs, fresh = [], []  # a fresh buffer starts as a copy of g (torch.optim.SGD's first step)
        for p, gi in zip(params, g):
            state = self.state[p]
            fresh.append("momentum_buffer" not in state)
            if fresh[-1]:
                state["momentum_buffer"] = torch.clone(gi).detach()
            bufs.append(state["momentum_buffer"])
        if foreach:
            old = [b for b, f in zip(bufs, fresh) if not f]
            gold = [gi for gi, f in zip(g, fresh) if not f]
            if old:
                torch._foreach_mul_(old, momentum)
                torch._foreach_add_(old, gold, alpha=1 - dampening)
            if group["nesterov"]:
                return torch._foreach_add(g, bufs, alpha=momentum)
            return bufs
        out = []
        for b, gi, f in zip(bufs, g, fresh):
            if not f:
                b.mul_(momentum).add_(gi, alpha=1 - dampening)
            out.append(gi.add(b, alpha=momentum) if group["nesterov"] else b)
        return out

    def _decay(self, group, params, foreach):
        if group["weight_decay"] != 0 and group["decoupled_weight_decay"]:
            factor = 1 - group["lr"] * group["weight_decay"]
            if foreach:
                torch._foreach_mul_(params, factor)
            else:
                for p in params:
                    p.mul_(factor)

    @staticmethod
    def _addcmul(params, num, scales, foreach):
        """p <- p + num * scale, scale a 0-d tensor per parameter (same arithmetic in both paths)."""
        if foreach:
            torch._foreach_addcmul_(params, num, scales)
        else:
            for p, n, s in zip(params, num, scales):
                p.addcmul_(n, s)


class NormalizedSGD(_NormalizedBase):
    r"""Normalized SGD (nSGDA): ``W <- W - lr * M / (||M|| + eps)``.

    Args:
        params: iterable of parameters or param groups.
        lr: learning rate (the length of every step, in the chosen norm).
        momentum, dampening, nesterov: as torch.optim.SGD; M is the momentum buffer when momentum > 0.
        weight_decay: L2 penalty added to the gradient (torch.optim.SGD), or decoupled (AdamW) with
            ``decoupled_weight_decay=True``.
        normalize: ``'global'`` (one norm over all parameters of the optimizer) or ``'layer'`` (one per tensor).
        eps: added to the norm (a zero gradient gives a zero step).
        maximize: ascend instead of descend (the maximising player of a min-max game).
        foreach: use the multi-tensor implementation (default: yes on CPU and CUDA).
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, normalize: str = "global", eps: float = 1e-8,
                 decoupled_weight_decay: bool = False, maximize: bool = False, foreach: bool | None = None):
        _check(lr, eps, weight_decay, normalize, momentum, dampening, nesterov)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        normalize=normalize, eps=eps, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _directions(self, group, params, grads, foreach):
        """(numerator, its factor, norms of the magnitude source, norms of the direction), per tensor."""
        g = self._grads(group, params, grads, foreach)
        m = self._momentum(group, params, g, foreach)
        return m, None, None, self._norms(m, foreach)


class _Grafted(_NormalizedBase):
    """SGD and Adam run side by side; the step takes its direction from one and its norm from the other."""

    direction_from = "sgd"

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, *,
                 normalize: str = "layer", eps: float = 1e-8, adam_eps: float = 1e-8,
                 decoupled_weight_decay: bool = False, maximize: bool = False, foreach: bool | None = None):
        _check(lr, eps, weight_decay, normalize, momentum, dampening, nesterov, betas)
        if not adam_eps >= 0.0:
            raise ConfigError(f"Invalid adam_eps: {adam_eps} (accepted: >= 0)")
        defaults = dict(lr=lr, betas=tuple(betas), momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, normalize=normalize, eps=eps, adam_eps=adam_eps,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _adam(self, group, params, g, foreach) -> tuple[list[Tensor], list[float]]:
        """Adam's update vector as ``(a, c)`` with ``A = c * a`` per tensor:
        ``A = m_hat / (sqrt(v_hat) + adam_eps) = (sqrt(bc2) / bc1) * m / (sqrt(v) + adam_eps * sqrt(bc2))``,
        the bias corrections folded into one scalar per tensor (two passes over the data fewer than Adam's form)."""
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq, steps = [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            exp_avg.append(state["exp_avg"])
            exp_avg_sq.append(state["exp_avg_sq"])
            steps.append(float(state["step"]))
        bc2_sqrt = [math.sqrt(1 - beta2**s) for s in steps]
        factor = torch.tensor([b2 / (1 - beta1**s) for b2, s in zip(bc2_sqrt, steps)], device=params[0].device)
        eps = [group["adam_eps"] * b2 for b2 in bc2_sqrt]
        if foreach:
            torch._foreach_lerp_(exp_avg, g, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, g, g, 1 - beta2)
            a = torch._foreach_sqrt(exp_avg_sq)  # the one temporary, as in torch.optim.Adam
            torch._foreach_add_(a, eps)
            torch._foreach_reciprocal_(a)
            torch._foreach_mul_(a, exp_avg)
            return a, factor
        out = []
        for m, v, gi, e in zip(exp_avg, exp_avg_sq, g, eps):
            m.lerp_(gi, 1 - beta1)
            v.mul_(beta2).addcmul_(gi, gi, value=1 - beta2)
            out.append(v.sqrt().add_(e).reciprocal_().mul_(m))
        return out, factor

    def _directions(self, group, params, grads, foreach):
        g = self._grads(group, params, grads, foreach)
        m = self._momentum(group, params, g, foreach)
        a, factor = self._adam(group, params, g, foreach)
        m_norms = self._norms(m, foreach)
        a_norms = self._norms(a, foreach) * factor
        if self.direction_from == "sgd":
            return m, None, a_norms, m_norms
        return a, factor, m_norms, a_norms


class AdaLR(_Grafted):
    r"""AdaLR: SGD's direction with Adam's norm, ``W <- W - lr * ||A|| * M / (||M|| + eps)``.

    Args: as :class:`NormalizedSGD`, plus ``betas`` and ``adam_eps`` of the Adam run whose update norm sets the
    step length. ``normalize`` defaults to ``'layer'`` (norms per parameter tensor, as in the paper's grafting).
    """

    direction_from = "sgd"


class AdaDir(_Grafted):
    r"""AdaDir: Adam's direction with SGD's norm, ``W <- W - lr * ||M|| * A / (||A|| + eps)``.

    Args: as :class:`AdaLR`.
    """

    direction_from = "adam"
