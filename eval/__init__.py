"""Evaluation of robustness (installed as ``adv_transport.eval``): accuracy under attack, sanity checks, reports."""

from .report import to_markdown, write_report
from .robustness import ATTACKS, evaluate, pgd_defaults
from .sanity import SanityWarning

__all__ = ["ATTACKS", "SanityWarning", "evaluate", "pgd_defaults", "to_markdown", "write_report"]
