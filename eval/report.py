"""Rendering evaluation reports: a Markdown table and JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from adv_transport.checkpoint import atomic_write_text

NAMES = {"clean": "clean", "fgsm": "FGSM", "pgd": "PGD", "autoattack": "AutoAttack"}


def attacks_in(report: dict) -> list[str]:
    return [a for a in report.get("per_class", {})]


def to_markdown(report: dict, title: str | None = None) -> str:
    """One row per attack: accuracy, worst class and its accuracy; settings in a line under the table."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += ["| attack | accuracy (%) | worst class | worst-class accuracy (%) |", "|---|---:|---:|---:|"]
    for a in attacks_in(report):
        name = NAMES.get(a, a)
        if a == "pgd":
            name = f"PGD-{report['pgd_steps']} (step {report['pgd_step_size']:.4g}, {report['pgd_restarts']} restart)"
        lines.append(
            f"| {name} | {report[f'{a}_acc']:.2f} | {report[f'{a}_worst_class']} | "
            f"{report[f'{a}_worst_class_acc']:.2f} |"
        )
    lines += [
        "",
        f"{report['norm']} eps = {report['eps']:.4g}, first {report['n_examples']} test points, "
        f"{report['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, stem: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``; returns both paths."""
    stem = Path(stem)
    js = atomic_write_text(json.dumps(report, indent=2) + "\n", stem.with_suffix(".json"))
    md = atomic_write_text(to_markdown(report, title), stem.with_suffix(".md"))
    return js, md
