"""Helpers shared by the benchmark scripts (imported with the scripts' folder on ``sys.path``)."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ATL's CIFAR-10 default before the twelfth sweep round made it two chains with weight averaging: the recipe changes
# that bring today's back to it (the CIFAR study's rows and sweep variants, epoch_cost's timing row)
PREVIOUS_ATL = {"copies": 1, "ema_decay": 0.0}


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


def run_settings(train, kwargs: dict) -> dict:
    """What a run's training depends on besides its recipe, from ``build_training``'s arguments: the seed, the
    training set (name, size, lossy or not), the validation split's size and how much of it is checked, the device
    and the runtime's mixed precision and memory format."""
    val, runtime = kwargs.get("val"), kwargs.get("runtime")
    return {
        "seed": kwargs.get("seed", 0), "train_data": getattr(train, "name", None), "train_n": len(train),
        "lossy": getattr(train, "lossy", None), "val_n": None if val is None else len(val),
        "val_checked": None if val is None else kwargs.get("val_n"), "device": str(kwargs.get("device", "cpu")),
        "amp": getattr(runtime, "amp", "off"), "channels_last": bool(getattr(runtime, "channels_last", False)),
    }


def resumable_training(r, train, test, where: Path | None, *, commit: str, **kwargs):
    """``build_training(r, train, test, **kwargs)`` with the run's checkpoint and ``log.jsonl`` in ``where`` (one
    checkpoint per finished epoch, bank and selection state included): a run cut off part-way (a killed process, the
    end of a session) continues from its last finished epoch when the script runs again, bit-identically on the CPU
    with the same number of threads. A checkpoint written with other settings (the recipe, :func:`run_settings`) is
    refused with a :class:`ConfigError` naming the difference and left as it is. ``where=None``: no checkpoints (a
    machine that cannot resume, such as a lent GPU's). ``commit``: the code this invocation runs (stored with a
    fresh run's checkpoints).

    Returns ``(trainer, batches, resumed)``: ``resumed`` is None for a fresh run, else ``{"epoch": the epoch it
    resumed at, "commit": the commit it started on}``. :func:`training_done` removes ``where`` once the run's result
    is saved."""
    from adv_transport.checkpoint import load_checkpoint, previous_path, recover_checkpoint
    from adv_transport.errors import ConfigError, settings_differ
    from adv_transport.recipes import Recipe
    from adv_transport.training import build_training

    if where is None:
        return (*build_training(r, train, test, **kwargs), None)
    where = Path(where)
    config = {**kwargs.pop("config", {}), "recipe": r.to_dict(), "settings": run_settings(train, kwargs),
              "commit": commit}
    ckpt = where / "checkpoint.pt"
    if ckpt.is_file() or previous_path(ckpt).is_file():
        # its config only (mapped, not read: the bank is read once, by Trainer.resume); a broken checkpoint.pt: its
        # predecessor, with a warning
        stored = load_checkpoint(ckpt, mmap=True).get("config", {})
        differ = settings_differ(
            f"cannot resume the interrupted run in {where}",
            {**Recipe.from_dict(stored.get("recipe", {})).to_dict(), **stored.get("settings", {})},
            {**config["recipe"], **config["settings"]},
            advice=f"The checkpoint was left as it is; remove {where} to train this run afresh.",
        )
        if differ:
            raise ConfigError(differ)
        note = recover_checkpoint(where)  # only now: a refused checkpoint stays as it was
        if note:
            print(note, file=sys.stderr, flush=True)
        config["commit"] = stored.get("commit", "unknown")  # the record names the commit the run started on
    trainer, batches = build_training(r, train, test, run_dir=where, config=config, **kwargs)
    resumed = {"epoch": trainer.epoch, "commit": config["commit"]} if trainer.resume() else None
    return trainer, batches, resumed


def resumed_fields(resumed: dict | None, commit: str) -> dict:
    """A run record's account of a resume (``resumed`` from :func:`resumable_training`, ``commit`` this invocation's):
    ``commit`` is the one the run started on, ``resumed_at_epoch`` and ``resumed_on_commit`` say where it went on."""
    if resumed is None:
        return {"commit": commit, "resumed_at_epoch": None, "resumed_on_commit": None}
    return {"commit": resumed["commit"], "resumed_at_epoch": resumed["epoch"], "resumed_on_commit": commit}


def resumed_note(resumed: dict | None, where: Path | None) -> str:
    """`` (resumed at epoch E from <where>, started on commit C)`` for a resumed run's progress line, else ''."""
    return "" if resumed is None else (f" (resumed at epoch {resumed['epoch']} from {where}, started on commit "
                                       f"{resumed['commit']})")


def training_done(where: Path | None) -> None:
    """Remove an interrupted-run folder of :func:`resumable_training` once the run's result is saved (and the
    ``partial/`` folder above it when no other run's is left there)."""
    if where is not None:
        shutil.rmtree(where, ignore_errors=True)
        try:
            Path(where).parent.rmdir()
        except OSError:  # another run's checkpoints are still there (or it is gone already)
            pass


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
