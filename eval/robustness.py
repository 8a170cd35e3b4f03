"""Accuracy of a model under attack on a slice of a dataset: clean, FGSM and PGD-k (with restarts).

Per SPEC section 4: MNIST PGD-40 with step 0.01 and a random start; CIFAR-10 PGD-20 with step 2/255. The model is put
in eval mode for the measurement and restored afterwards. Random starts use a seeded generator, so the same model
always gets the same number.
"""

from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn as nn

from adv_transport.attacks import fgsm, pgd
from adv_transport.data import IndexedDataset
from adv_transport.errors import ConfigError
from adv_transport.modes import model_mode
from adv_transport.threat import ThreatModel, check_unit_range

ATTACKS = ("clean", "fgsm", "pgd")


def pgd_defaults(dataset: str, threat: ThreatModel) -> tuple[int, float]:
    """(steps, step size) of the reporting protocol for ``dataset`` (SPEC section 4)."""
    if dataset == "mnist":
        return 40, 0.01
    if threat.norm == "linf":
        return 20, 2 / 255
    return 20, threat.eps / 4


def evaluate(
    model: nn.Module,
    data: IndexedDataset,
    threat: ThreatModel,
    attacks: Iterable[str] = ATTACKS,
    n_examples: int | None = 1000,
    batch_size: int = 500,
    pgd_steps: int = 40,
    pgd_step_size: float = 0.01,
    pgd_restarts: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """Accuracy (in %) under each attack on the first ``n_examples`` points, with per-class accuracy and the worst
    class. Returns a flat dict ``{'clean_acc': ..., 'pgd_acc': ..., ...}`` plus ``per_class`` and settings."""
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}; accepted: {', '.join(ATTACKS)}")
    device = device or next(model.parameters()).device
    data = data.subset(n_examples)
    n = len(data)
    gen = torch.Generator().manual_seed(seed)
    correct = {a: torch.zeros(n, dtype=torch.bool) for a in attacks}
    start = time.perf_counter()
    from tqdm.auto import tqdm

    with model_mode(model, "eval"):
        for lo in tqdm(range(0, n, batch_size), desc="evaluating", disable=not progress, leave=False):
            idx = torch.arange(lo, min(lo + batch_size, n))
            x, y, _ = data.get(idx)
            check_unit_range(x, "evaluation inputs")
            x, y = x.to(device), y.to(device)
            for a in attacks:
                if a == "clean":
                    x_adv = x
                elif a == "fgsm":
                    x_adv = fgsm(model, x, y, threat)
                else:
                    x_adv = pgd(model, x, y, threat, pgd_steps, pgd_step_size, True, pgd_restarts, generator=gen)
                with torch.no_grad():
                    correct[a][idx] = (model(x_adv).argmax(1) == y).cpu()
    labels = data.labels[:n]
    report: dict = {"n_examples": n, "eps": threat.eps, "norm": threat.norm, "per_class": {}}
    for a in attacks:
        report[f"{a}_acc"] = 100.0 * correct[a].float().mean().item()
        per = {int(c): 100.0 * correct[a][labels == c].float().mean().item() for c in labels.unique()}
        report["per_class"][a] = per
        report[f"{a}_worst_class"] = min(per, key=per.get)
        report[f"{a}_worst_class_acc"] = per[report[f"{a}_worst_class"]]
    if "pgd" in attacks:
        report.update(pgd_steps=pgd_steps, pgd_step_size=pgd_step_size, pgd_restarts=pgd_restarts)
    report["seconds"] = time.perf_counter() - start
    return report
