"""AutoAttack through pyautoattack, the authors' PyPI package (``import pyautoattack``).

:func:`autoattack_flags` runs the attacks of an AutoAttack version one after another, each on the points that are still
robust, exactly as ``AutoAttack.run_standard_evaluation`` does, but returns the per-point result after *each* attack,
so that the caller can report every attack's contribution (and check that the black-box Square attack does not find
more than the white-box ones) and can checkpoint between batches.
"""

from __future__ import annotations

import logging

import torch
from pyautoattack import AutoAttack

from adv_transport.errors import ConfigError
from adv_transport.threat import host_norm

VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t", "apgd-dlr", "fab")


def make_autoattack(model, norm: str, eps: float, version: str = "standard", seed: int = 0, device=None) -> AutoAttack:
    """A pyautoattack ``AutoAttack`` for a norm in any spelling :func:`~adv_transport.threat.canonical_norm` accepts,
    silent."""
    if version not in VERSIONS:
        raise ConfigError(f"AutoAttack version {version!r} is not supported; accepted: {', '.join(VERSIONS)}")
    device = device or next(model.parameters()).device
    aa = AutoAttack(model, norm=host_norm(norm), eps=eps, version=version, seed=seed, device=device)
    aa.verbose = False
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    return aa


def autoattack_flags(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 500,
    aa: AutoAttack | None = None,
) -> dict[str, torch.Tensor]:
    """Per point, robust (True) or not after each attack of ``version`` and all attacks before it.

    Returns ``{'clean': ..., 'apgd-ce': ..., ..., 'square': ...}`` as bool CPU tensors; the last entry is the
    AutoAttack result. Also returns the adversarial inputs under key ``'x_adv'`` (clean input where none was found).
    ``aa`` reuses a configured pyautoattack ``AutoAttack`` (its attack settings are then the caller's).
    """
    aa = aa or make_autoattack(model, norm, eps, version, seed, x.device)
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    if version == "standard" and n_classes < 10:
        raise ConfigError(
            f"AutoAttack 'standard' needs at least 10 classes (APGD-T and FAB-T attack 9 target "
            f"classes); the model has {n_classes}. Use version 'rand' or the PGD attack instead."
        )
    with torch.no_grad():
        robust = torch.cat(
            [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, len(x), batch_size)]
        ).cpu()
    out: dict[str, torch.Tensor] = {"clean": robust.clone()}
    x_adv = x.detach().clone()
    original = list(aa.attacks_to_run)
    try:
        for attack in original:
            idx = robust.nonzero().flatten()
            if len(idx):
                aa.attacks_to_run = [attack]
                adv, _ = aa.run_standard_evaluation(x[idx.to(x.device)], y[idx.to(y.device)], batch_size=batch_size)
                with torch.no_grad():
                    fooled = (model(adv).argmax(1) != y[idx.to(y.device)]).cpu()
                robust[idx[fooled]] = False
                x_adv[idx[fooled].to(x.device)] = adv[fooled.to(adv.device)]
            out[attack] = robust.clone()
    finally:
        aa.attacks_to_run = original
    out["x_adv"] = x_adv
    return out
