"""Evaluation of robustness (installed as ``adv_transport.eval``): accuracy under attack, sanity checks, reports."""

from .report import to_markdown, write_report
from .robustness import ATTACKS, epoch_check, evaluate, pgd_defaults, validation_check
from .sanity import SanityWarning

__all__ = [
    "ATTACKS",
    "SanityWarning",
    "epoch_check",
    "evaluate",
    "pgd_defaults",
    "to_markdown",
    "validation_check",
    "write_report",
]
