"""Helpers shared by the benchmark scripts (imported with the scripts' folder on ``sys.path``)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The short hash of the checkout's HEAD: the code a run starts on. A copy without its git folder (a lent GPU
    machine's) reads it from ``$ADV_TRANSPORT_COMMIT``; "unknown" without either."""
    if os.environ.get("ADV_TRANSPORT_COMMIT"):
        return os.environ["ADV_TRANSPORT_COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing git only loses the label
        return "unknown"


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters, digits and dots become one '_'."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def mean_std(xs) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values of ``xs`` that are not None: (None, None) without any, std 0.0
    for a single one."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def square_drop(report: dict) -> float | None:
    """Points removed by Square after AutoAttack's white-box attacks (a gradient-masking symptom); None without an
    AutoAttack result."""
    d = (report or {}).get("autoattack_detail", {}).get("autoattack")
    if not d:
        return None
    vals = list(d.values())
    return vals[-2] - vals[-1] if len(vals) >= 2 else None


def replace_section(path: Path, marker: str, section: str) -> None:
    """Put ``section`` (which starts with ``<!-- marker -->`` and ends with ``<!-- /marker -->``) into the Markdown file
    at ``path`` in place of the previous one, or append it (the file is created if missing)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {re.escape(marker)} -->.*?<!-- /{re.escape(marker)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def seed_means(runs: list[dict]) -> list[str]:
    """Mean ± std over seeds of each variant run on more than one seed (validation AutoAttack and Square drop)."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["label"], []).append(r)
    multi = {label: rs for label, rs in by.items() if len(rs) > 1}
    if not multi:
        return []
    ms = lambda xs: "{:.2f} ± {:.2f}".format(*mean_std(xs))  # noqa: E731
    lines = ["", "Variants run on several seeds (mean ± std over them):", "",
             "| variant | seeds | val AutoAttack % | Square drop |", "|---|---|---:|---:|"]
    for label, rs in multi.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        aa = [x for x in (r["final"].get("autoattack_acc") for r in rs) if x is not None]
        drops = [r["square_drop"] for r in rs if r["square_drop"] is not None]
        lines.append(f"| {label} | {', '.join(str(r['seed']) for r in rs)} | {ms(aa) if len(aa) > 1 else 'n/a'} | "
                     f"{ms(drops) if len(drops) > 1 else 'n/a'} |")
    return lines
