"""Evaluation of robustness (installed as ``adv_transport.eval``)."""

from .robustness import ATTACKS, evaluate, pgd_defaults

__all__ = ["ATTACKS", "evaluate", "pgd_defaults"]
