"""Sanity checks against gradient masking and evaluation mistakes (Carlini et al., "On Evaluating Adversarial
Robustness"), run after every evaluation. Each failing check yields one plain-language warning.

- ordering: AutoAttack <= PGD <= FGSM <= clean accuracy (a weaker attack doing better is a masking sign);
- the black-box Square attack does not break points that survived the white-box attacks;
- accuracy under PGD falls towards 0 as eps grows (at 4 eps, capped at 0.5 for l-inf, at most chance + 10 points);
- the model was handed in eval mode, is deterministic in eval mode, and returns logits rather than probabilities.
Inputs outside [0, 1] are an error, not a warning (see :func:`adv_transport.threat.check_unit_range`).
"""

from __future__ import annotations

import torch

from adv_transport.attacks import pgd
from adv_transport.modes import model_mode
from adv_transport.threat import ThreatModel


class SanityWarning(UserWarning):
    """An evaluation sanity check failed: the reported robustness may be overestimated."""


ORDER = ("autoattack", "pgd", "fgsm", "clean")
SQUARE_TOLERANCE = 0.2  # points, as pyautoattack's own check (0.2 %)
EPS_SWEEP_N = 200


def _ordering(report: dict) -> list[str]:
    present = [a for a in ORDER if f"{a}_acc" in report]
    out = []
    for i, stronger in enumerate(present):
        for weaker in present[i + 1 :]:
            if report[f"{stronger}_acc"] > report[f"{weaker}_acc"] + 1e-9:
                out.append(
                    f"{stronger} accuracy ({report[f'{stronger}_acc']:.2f} %) is above {weaker} accuracy "
                    f"({report[f'{weaker}_acc']:.2f} %): the stronger attack should never do worse; gradients "
                    "may be masked or the attack misconfigured"
                )
    return out


def _square(report: dict) -> list[str]:
    out = []
    for name, detail in report.get("autoattack_detail", {}).items():
        if "square" not in detail:
            continue
        white = min(v for k, v in detail.items() if k not in ("square", "clean"))
        if detail["square"] < white - SQUARE_TOLERANCE:
            out.append(
                f"{name}: the black-box Square attack lowered accuracy by {white - detail['square']:.2f} points "
                "after the white-box attacks: gradient-based attacks are being fooled (gradient masking); "
                "trust the AutoAttack number, not PGD"
            )
    return out


def _eps_sweep(model, data, threat: ThreatModel, device, seed) -> tuple[list[str], dict]:
    n = min(len(data), EPS_SWEEP_N)
    x, y, _ = data.get(torch.arange(n))
    x, y = x.to(device), y.to(device)
    cap = 0.5 if threat.norm == "linf" else float("inf")
    grid = list(dict.fromkeys(min(threat.eps * m, cap) for m in (1, 2, 4)))
    accs = {}
    gen = torch.Generator().manual_seed(seed)
    for eps in grid:
        t = ThreatModel(threat.norm, eps)
        x_adv = pgd(model, x, y, t, 40, 2.5 * eps / 40, True, 1, generator=gen)
        with torch.no_grad():
            accs[eps] = 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()
    classes = int(data.labels.max()) + 1
    chance = 100.0 / classes
    out = []
    values = list(accs.values())
    if any(b > a + 2.0 for a, b in zip(values, values[1:])):
        out.append(
            f"PGD accuracy does not fall as eps grows ({', '.join(f'{e:.3g}: {a:.1f} %' for e, a in accs.items())})"
            ": a larger ball can only help the attacker; gradients may be masked"
        )
    if values[-1] > chance + 10.0:
        out.append(
            f"PGD accuracy at eps = {grid[-1]:.3g} is still {values[-1]:.1f} % (chance is {chance:.0f} %): "
            "accuracy should approach 0 as eps grows; gradients may be masked"
        )
    return out, {f"{e:.6g}": a for e, a in accs.items()}


def _model_checks(model, data, was_training: bool, device) -> list[str]:
    out = []
    if was_training:
        out.append(
            "the model was handed over in training mode; it was evaluated in eval mode (call model.eval() "
            "before evaluating elsewhere)"
        )
    x, _, _ = data.get(torch.arange(min(len(data), 64)))
    x = x.to(device)
    with torch.no_grad(), model_mode(model, "eval"):
        a, b = model(x), model(x)
    if not torch.allclose(a, b, atol=1e-5, rtol=0):
        out.append(
            "the model is not deterministic in eval mode (two forward passes differ): use 'autoattack-rand' "
            "(EOT) for randomised defences"
        )
    if a.min() >= 0 and a.max() <= 1 and torch.allclose(a.sum(1), torch.ones(len(a), device=a.device), atol=1e-3):
        out.append(
            "the model seems to return probabilities (rows in [0, 1] summing to 1), not logits: attacks on the "
            "cross-entropy of probabilities have vanishing gradients; return logits"
        )
    return out


def run_sanity_checks(model, data, threat, report, state, was_training, device, seed) -> list[str]:
    warnings = _ordering(report) + _square(report) + _model_checks(model, data, was_training, device)
    with model_mode(model, "eval"):
        sweep_warnings, sweep = _eps_sweep(model, data, threat, device, seed)
    report["eps_sweep_pgd_acc"] = sweep
    return warnings + sweep_warnings
