"""White-box attacks used both as training inner steps and for evaluation: FGSM and PGD (l-inf and l2).

All attacks take inputs in [0, 1], return detached adversarial inputs in the threat ball intersected with [0, 1],
and do not change the model's mode (callers decide; see :mod:`adv_transport.modes`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .threat import ThreatModel


def input_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy with respect to the input, and the per-example losses."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = F.cross_entropy(model(x_adv), y, reduction="none")
        (grad,) = torch.autograd.grad(losses.sum(), x_adv)
    return grad, losses.detach()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    step_size: float | None = None,
    start: torch.Tensor | None = None,
    project: bool = True,
) -> torch.Tensor:
    """One ascent step of size ``step_size`` (default eps) from ``start`` (default the clean input ``x``), projected
    onto the ball around ``x`` and the box [0, 1] (``project=False``: onto the box only, as N-FGSM does)."""
    step = threat.eps if step_size is None else step_size
    x0 = x if start is None else start
    grad, _ = input_gradient(model, x0, y)
    x_adv = x0 + step * threat.direction(grad)
    return (threat.clip(x, x_adv) if project else x_adv.clamp(0, 1)).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy (Madry et al.), keeping, per example, the restart with the
    highest final loss (a misclassified one wins)."""
    best = x.detach().clone()
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    for _ in range(max(1, restarts)):
        if random_start:
            noise_src = x.detach().cpu() if generator is not None else x.detach()
            start = threat.uniform(noise_src, generator=generator).to(x.device)
            x_adv = x.detach() + start
        else:
            x_adv = x.detach().clone()
        for _ in range(steps):
            grad, _ = input_gradient(model, x_adv, y)
            x_adv = threat.clip(x, x_adv + step_size * threat.direction(grad)).detach()
        with torch.no_grad():
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y, reduction="none")
            loss = torch.where(logits.argmax(1) != y, torch.full_like(loss, float("inf")), loss)
        better = loss > best_loss
        best[better] = x_adv[better]
        best_loss = torch.where(better, loss, best_loss)
    return best
