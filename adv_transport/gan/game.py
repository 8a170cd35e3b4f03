"""Two-player min-max training (GANs) with any pair of optimizers, ours or torch's.

:func:`gan_step` takes one step of the non-saturating GAN game:

    discriminator D ascends   E log sigmoid(D(x)) + E log(1 - sigmoid(D(G(z))))
    generator G descends      -E log sigmoid(D(G(z)))

The ascent is done either by the discriminator's optimizer (``ascent='maximize'``: it must have been built with
``maximize=True``, the torch.optim convention) or by the loss sign (``ascent='negate'``: the optimizer descends the
negated objective). The update ``order`` is ``simultaneous`` (both gradients at the same point) or
``alternating`` (``d_steps`` discriminator steps, then a generator step against the updated discriminator). Each
step returns both players' losses and the l2 norm of every parameter tensor's update, which is what "Adam's per-layer
update norm stays nearly constant" is measured with.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

ORDERS = ("simultaneous", "alternating")  # the update order of the two players
ASCENTS = ("maximize", "negate")


def _maximizes(opt: torch.optim.Optimizer) -> bool:
    return all(g.get("maximize", False) for g in opt.param_groups)


def discriminator_objective(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E log sigmoid(D(x)) + E log(1 - sigmoid(D(G(z)))), from logits; the discriminator maximises it."""
    return F.logsigmoid(d_real).mean() + F.logsigmoid(-d_fake).mean()


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -E log sigmoid(D(G(z))), from logits; the generator minimises it."""
    return -F.logsigmoid(d_fake).mean()


@dataclass
class StepLog:
    d_objective: float
    g_loss: float
    g_update_norms: dict[str, float] = field(default_factory=dict)
    d_update_norms: dict[str, float] = field(default_factory=dict)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _update_norms(module: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float((p.detach() - before[n]).norm()) for n, p in module.named_parameters() if n in before}


def _d_step(generator, discriminator, opt_d, real, z, ascent):
    with torch.no_grad():
        fake = generator(z)
    obj = discriminator_objective(discriminator(real), discriminator(fake))
    opt_d.zero_grad(set_to_none=True)
    (obj if ascent == "maximize" else -obj).backward()
    opt_d.step()
    return float(obj.detach())


def _g_step(generator, discriminator, opt_g, z):
    loss = generator_loss(discriminator(generator(z)))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return float(loss.detach())


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z_dim: int,
    *,
    order: str = "alternating",
    d_steps: int = 1,
    ascent: str = "maximize",
    generator_rng: torch.Generator | None = None,
    track_norms: bool = True,
    mode: str | None = None,
) -> StepLog:
    """One step of the game on a batch of real samples; see the module docstring. ``mode``: the former name of
    ``order`` (deprecated)."""
    if mode is not None:
        warnings.warn("gan_step(mode=...) is deprecated: use order=...", DeprecationWarning, stacklevel=2)
        order = mode
    if order not in ORDERS:
        raise ConfigError(f"order {order!r} not accepted; accepted: {', '.join(ORDERS)}")
    if ascent not in ASCENTS:
        raise ConfigError(f"ascent {ascent!r} not accepted; accepted: {', '.join(ASCENTS)}")
    if int(d_steps) < 1:
        raise ConfigError(f"d_steps must be >= 1, got {d_steps}")
    if ascent == "maximize" and not _maximizes(opt_d):
        raise ConfigError("ascent='maximize' needs the discriminator's optimizer built with maximize=True; build it "
                          "so, or use ascent='negate' with a descending optimizer")
    if ascent == "negate" and _maximizes(opt_d):
        raise ConfigError("ascent='negate' needs a descending discriminator optimizer (maximize=False)")
    if _maximizes(opt_g):
        raise ConfigError("the generator's optimizer must descend (maximize=False)")
    b = real.shape[0]

    def noise():
        return torch.randn(b, z_dim, generator=generator_rng).to(real.device)

    g_before = _snapshot(generator) if track_norms else None
    d_before = _snapshot(discriminator) if track_norms else None
    if order == "alternating":
        for _ in range(int(d_steps)):
            d_obj = _d_step(generator, discriminator, opt_d, real, noise(), ascent)
        g_loss = _g_step(generator, discriminator, opt_g, noise())
    else:  # simultaneous: both gradients at the current point, then both steps
        z = noise()
        fake = generator(z)
        d_obj_t = discriminator_objective(discriminator(real), discriminator(fake.detach()))
        g_loss_t = generator_loss(discriminator(fake))
        d_params = [p for p in discriminator.parameters() if p.requires_grad]
        g_params = [p for p in generator.parameters() if p.requires_grad]
        d_grads = torch.autograd.grad(d_obj_t if ascent == "maximize" else -d_obj_t, d_params)
        g_grads = torch.autograd.grad(g_loss_t, g_params)
        for p, g in zip(d_params, d_grads):
            p.grad = g
        for p, g in zip(g_params, g_grads):
            p.grad = g
        opt_d.step()
        opt_g.step()
        d_obj, g_loss = float(d_obj_t.detach()), float(g_loss_t.detach())
    log = StepLog(d_obj, g_loss)
    if track_norms:
        log.g_update_norms = _update_norms(generator, g_before)
        log.d_update_norms = _update_norms(discriminator, d_before)
    return log
