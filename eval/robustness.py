"""Accuracy of a model under attack on a slice of a dataset, resumable, with sanity checks.

Attacks: ``clean``, ``fgsm``, ``pgd`` (PGD-k with restarts), ``autoattack`` (pyautoattack 'standard': APGD-CE, APGD-T,
FAB-T, Square) and ``autoattack-rand`` (pyautoattack 'rand', for randomised models). The reporting protocol (the
numbers the README and BENCHMARKS.md quote) is MNIST PGD-40 with step 0.01 and CIFAR-10 PGD-20 with step 2/255, both
from a random start (:func:`pgd_defaults`).

The model is evaluated in eval mode (its mode is restored afterwards). Random starts use a seeded generator, so the
same model always gets the same number. With ``state_path`` the per-point results are saved after every batch and an
interrupted evaluation resumes without redoing finished batches. The state is bound to the evaluation settings and to
a fingerprint of the model's weights (SHA-256 of its state dict): a state made with other settings is refused, and a
state made for other weights (an evaluation interrupted, then more training, then ``eval`` again) is discarded with
a warning and the evaluation starts over, so two models' results are never mixed.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from adv_transport.attacks import fgsm, pgd
from adv_transport.checkpoint import atomic_save, safe_load
from adv_transport.data import IndexedDataset
from adv_transport.errors import ConfigError, settings_differ
from adv_transport.modes import model_mode
from adv_transport.threat import ThreatModel, check_unit_range

from .sanity import SanityWarning, run_sanity_checks

ATTACKS = ("clean", "fgsm", "pgd", "autoattack", "autoattack-rand")
AA_VERSION = {"autoattack": "standard", "autoattack-rand": "rand"}


def pgd_defaults(dataset: str, threat: ThreatModel) -> tuple[int, float]:
    """(steps, step size) of the reporting protocol for ``dataset``: PGD-40 with step 0.01 on MNIST (eps 0.3), PGD-20
    with step 2/255 for l-inf elsewhere (Wong et al. 2020's CIFAR-10 check), PGD-20 with step eps/4 for l2."""
    if dataset == "mnist":
        return 40, 0.01
    if threat.norm == "linf":
        return 20, 2 / 255
    return 20, threat.eps / 4


def _settings(threat, attacks, n, batch_size, pgd_steps, pgd_step_size, pgd_restarts, pgd_random_start, seed) -> dict:
    return {
        "norm": threat.norm,
        "eps": threat.eps,
        "attacks": list(attacks),
        "n_examples": n,
        "batch_size": batch_size,
        "pgd_steps": pgd_steps,
        "pgd_step_size": pgd_step_size,
        "pgd_restarts": pgd_restarts,
        "pgd_random_start": pgd_random_start,
        "seed": seed,
    }


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and bytes of every parameter and buffer)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_state(path: Path | None, settings: dict, fingerprint: str | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    state = safe_load(path, "an adv-transport evaluation state (eval.state.pt, as written by adv-transport eval)")
    if not isinstance(state, dict) or not isinstance(state.get("correct"), dict) or "done" not in state:
        raise ConfigError(f"{path} is not an adv-transport evaluation state (a dict with 'settings', 'done', ...)")
    differ = settings_differ(
        f"evaluation state {path} was made with other settings",
        state.get("settings") or {},
        settings,
        keys=sorted(set(settings) | set(state.get("settings") or {})),
        advice="Delete it or use the same settings to resume.",
    )
    if differ:
        raise ConfigError(differ)
    if state.get("fingerprint") != fingerprint:
        stored = state.get("fingerprint")
        warnings.warn(
            f"discarding the evaluation state {path}: it was made for other model weights (fingerprint "
            f"{(stored or 'none recorded')[:16]}, this model {fingerprint[:16]}); evaluating from the start",
            UserWarning,
            stacklevel=3,
        )
        return None
    return state


def evaluate(
    model: nn.Module,
    data: IndexedDataset,
    threat: ThreatModel,
    attacks: Iterable[str] = ("clean", "fgsm", "pgd"),
    n_examples: int | None = 1000,
    batch_size: int = 500,
    pgd_steps: int = 40,
    pgd_step_size: float = 0.01,
    pgd_restarts: int = 1,
    pgd_random_start: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    state_path: str | Path | None = None,
    sanity: bool = True,
) -> dict:
    """Accuracy (in %) under each attack on the first ``n_examples`` points.

    Returns a JSON-serialisable report: ``<attack>_acc``, per-class accuracy (``per_class[attack][class]``) with the
    worst class, the AutoAttack breakdown per sub-attack, settings, seconds, and the sanity-check warnings (also
    emitted as :class:`~adv_transport.eval.sanity.SanityWarning` unless ``sanity=False``).
    """
    attacks = list(dict.fromkeys(attacks))
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ConfigError(f"unknown or no attack(s) {unknown}; accepted: {', '.join(ATTACKS)}")
    if "clean" not in attacks:
        attacks.insert(0, "clean")
    device = device or next(model.parameters()).device
    data = data.subset(n_examples)
    n = len(data)
    if n == 0:
        raise ConfigError("nothing to evaluate: the dataset slice is empty")
    was_training = model.training
    state_path = Path(state_path) if state_path is not None else None
    settings = _settings(threat, attacks, n, batch_size, pgd_steps, pgd_step_size, pgd_restarts, pgd_random_start, seed)
    fingerprint = model_fingerprint(model) if state_path is not None else None
    state = _load_state(state_path, settings, fingerprint) or {
        "settings": settings,
        "fingerprint": fingerprint,
        "done": 0,
        "seconds": 0.0,
        "correct": {a: torch.zeros(n, dtype=torch.bool) for a in attacks},
        "aa_detail": {},
    }
    from tqdm.auto import tqdm

    n_batches = math.ceil(n / batch_size)
    bar = tqdm(total=n_batches, initial=state["done"], desc="evaluating", disable=not progress, leave=False)
    with model_mode(model, "eval"):
        for b in range(state["done"], n_batches):
            start = time.perf_counter()
            idx = torch.arange(b * batch_size, min((b + 1) * batch_size, n))
            x, y, _ = data.get(idx)
            check_unit_range(x, "evaluation inputs")
            x, y = x.to(device), y.to(device)
            gen = torch.Generator().manual_seed(seed * 100_003 + b)
            for a in attacks:
                if a in AA_VERSION:
                    from adv_transport.plugins.autoattack import autoattack_flags

                    flags = autoattack_flags(model, x, y, threat.norm, threat.eps, AA_VERSION[a], seed, batch_size)
                    flags.pop("x_adv")
                    last = list(flags)[-1]
                    state["correct"][a][idx] = flags[last]
                    detail = state["aa_detail"].setdefault(a, {k: torch.zeros(n, dtype=torch.bool) for k in flags})
                    for k, v in flags.items():
                        detail[k][idx] = v
                    continue
                if a == "clean":
                    x_adv = x
                elif a == "fgsm":
                    x_adv = fgsm(model, x, y, threat)
                else:
                    x_adv = pgd(
                        model, x, y, threat, pgd_steps, pgd_step_size, pgd_random_start, pgd_restarts, generator=gen
                    )
                with torch.no_grad():
                    state["correct"][a][idx] = (model(x_adv).argmax(1) == y).cpu()
            state["done"] = b + 1
            state["seconds"] += time.perf_counter() - start
            if state_path is not None:
                atomic_save(state, state_path)
            bar.update(1)
    bar.close()

    labels = data.labels[:n]
    report: dict = {"n_examples": n, "eps": threat.eps, "norm": threat.norm, "attacks": attacks, "per_class": {}}
    if fingerprint is not None:  # which weights were evaluated (the CLI keeps a fuller report of the same weights)
        report["model_fingerprint"] = fingerprint
    for a in attacks:
        c = state["correct"][a]
        report[f"{a}_acc"] = 100.0 * c.float().mean().item()
        per = {int(k): 100.0 * c[labels == k].float().mean().item() for k in labels.unique()}
        report["per_class"][a] = per
        report[f"{a}_worst_class"] = min(per, key=per.get)
        report[f"{a}_worst_class_acc"] = per[report[f"{a}_worst_class"]]
    report["autoattack_detail"] = {
        a: {k: 100.0 * v.float().mean().item() for k, v in d.items()} for a, d in state["aa_detail"].items()
    }
    if "pgd" in attacks:
        report.update(
            pgd_steps=pgd_steps,
            pgd_step_size=pgd_step_size,
            pgd_restarts=pgd_restarts,
            pgd_random_start=pgd_random_start,
        )
    report["seed"] = seed
    report["seconds"] = state["seconds"]
    report["sanity_warnings"] = []
    if sanity:
        start = time.perf_counter()
        report["sanity_warnings"] = run_sanity_checks(model, data, threat, report, state, was_training, device, seed)
        report["sanity_seconds"] = time.perf_counter() - start
        for w in report["sanity_warnings"]:
            warnings.warn(w, SanityWarning, stacklevel=2)
    return report


def epoch_check(dataset: str, test, threat: ThreatModel, n_examples: int, device):
    """``eval_fn`` for the trainer (the per-epoch check): clean and reporting-protocol PGD accuracy
    (:func:`pgd_defaults`) on the first ``n_examples`` test points, without the sanity checks (they belong to the
    final evaluation)."""
    steps, step_size = pgd_defaults(dataset, threat)

    def fn(model):
        rep = evaluate(model, test, threat, ("clean", "pgd"), n_examples=n_examples, pgd_steps=steps,
                       pgd_step_size=step_size, device=device, sanity=False)
        return {"clean_acc": rep["clean_acc"], "pgd_acc": rep["pgd_acc"], "eval_n": rep["n_examples"],
                "eval_pgd_steps": steps}

    return fn


def validation_check(dataset: str, val, threat: ThreatModel, n_examples: int, device):
    """``val_fn`` for the trainer: :func:`epoch_check` on a validation split of the training set, keys prefixed
    ``val_`` (what model selection and early stopping read)."""
    fn = epoch_check(dataset, val, threat, n_examples, device)
    return lambda model: {f"val_{k}": v for k, v in fn(model).items()}
