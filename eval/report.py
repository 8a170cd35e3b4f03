"""Rendering evaluation reports: a Markdown table and JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from adv_transport.checkpoint import atomic_write_text

NAMES = {
    "clean": "clean",
    "fgsm": "FGSM",
    "autoattack": "AutoAttack (standard)",
    "autoattack-rand": "AutoAttack (rand)",
}


def _name(report: dict, attack: str) -> str:
    if attack == "pgd":
        return (
            f"PGD-{report['pgd_steps']} (step {report['pgd_step_size']:.4g}, {report['pgd_restarts']} restart"
            f"{'s' if report['pgd_restarts'] > 1 else ''})"
        )
    return NAMES.get(attack, attack)


def to_markdown(report: dict, title: str | None = None) -> str:
    """One row per attack (accuracy, worst class and its accuracy), the AutoAttack breakdown, settings and the
    sanity-check warnings."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| attack | accuracy (%) | worst class | worst-class accuracy (%) |", "|---|---:|---:|---:|"]
    for a in report["attacks"]:
        lines.append(
            f"| {_name(report, a)} | {report[f'{a}_acc']:.2f} | {report[f'{a}_worst_class']} | "
            f"{report[f'{a}_worst_class_acc']:.2f} |"
        )
    lines += [
        "",
        f"{report['norm']} eps = {report['eps']:.4g}, first {report['n_examples']} test points, seed "
        f"{report.get('seed', 0)}, {report['seconds']:.0f} s.",
    ]
    for a, detail in report.get("autoattack_detail", {}).items():
        steps = ", ".join(f"{k} {v:.2f}" for k, v in detail.items())
        lines.append(f"{NAMES.get(a, a)}, accuracy after each attack (%): {steps}.")
    if "eps_sweep_pgd_acc" in report:
        sweep = ", ".join(f"eps {e}: {v:.1f}" for e, v in report["eps_sweep_pgd_acc"].items())
        lines.append(f"PGD accuracy as eps grows (first 200 points, %): {sweep}.")
    warnings = report.get("sanity_warnings")
    if warnings is not None:
        lines.append("")
        if warnings:
            lines += ["**Sanity checks failed:**", ""] + [f"- {w}" for w in warnings]
        else:
            lines.append("Sanity checks passed (attack ordering, Square vs white-box, eps sweep, eval mode, logits).")
    return "\n".join(lines) + "\n"


def write_report(report: dict, stem: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``; returns both paths."""
    stem = Path(stem)
    js = atomic_write_text(json.dumps(report, indent=2) + "\n", stem.with_suffix(".json"))
    md = atomic_write_text(to_markdown(report, title), stem.with_suffix(".md"))
    return js, md
