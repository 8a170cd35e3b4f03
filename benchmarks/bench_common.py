"""Helpers shared by the benchmark scripts (imported with the scripts' folder on ``sys.path``)."""

from __future__ import annotations

import os
import re
import shutil
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


def resumable_training(r, train, test, where: Path, **kwargs):
    """``build_training(r, train, test, **kwargs)`` with the run's checkpoint and ``log.jsonl`` in ``where`` (one
    checkpoint per finished epoch, bank and selection state included): a run cut off part-way (a killed process, the
    end of a session) continues from its last finished epoch when the script runs again, bit-identically on the CPU.
    A checkpoint written with other settings (the recipe) is refused with a :class:`ConfigError` naming the
    difference and left as it is. Returns ``(trainer, batches, resumed_at)``: the epoch the run resumed at, None for
    a fresh run. :func:`training_done` removes ``where`` once the run's result is saved."""
    from adv_transport.checkpoint import load_checkpoint, previous_path, recover_checkpoint
    from adv_transport.errors import ConfigError, settings_differ
    from adv_transport.training import build_training

    where = Path(where)
    config = {**kwargs.pop("config", {}), "recipe": r.to_dict()}
    ckpt = where / "checkpoint.pt"
    if ckpt.is_file() or previous_path(ckpt).is_file():
        recover_checkpoint(where)  # a checkpoint.pt cut off while written: its predecessor takes its place
        stored = load_checkpoint(ckpt, fallback=False).get("config", {}).get("recipe", {})
        differ = settings_differ(f"cannot resume the interrupted run in {where}", stored, config["recipe"],
                                 advice=f"The checkpoint was left as it is; remove {where} to train this run afresh.")
        if differ:
            raise ConfigError(differ)
    trainer, batches = build_training(r, train, test, run_dir=where, config=config, **kwargs)
    return trainer, batches, (trainer.epoch if trainer.resume() else None)


def training_done(where: Path) -> None:
    """Remove an interrupted-run folder of :func:`resumable_training` once the run's result is saved."""
    shutil.rmtree(where, ignore_errors=True)


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
