"""Plots of training logs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_history(histories: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Clean and PGD accuracy against training seconds and epochs, one line per run (``{label: history}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, hist in histories.items():
        ep = [r["epoch"] for r in hist]
        secs = [r["train_seconds"] for r in hist]
        for key, style in (("pgd_acc", "-"), ("clean_acc", ":")):
            if all(key in r for r in hist):
                vals = [r[key] for r in hist]
                name = f"{label} {'PGD' if key == 'pgd_acc' else 'clean'}"
                axes[0].plot(ep, vals, style, marker=".", label=name)
                axes[1].plot(secs, vals, style, marker=".", label=name)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training wall-clock (s)")
    for ax in axes:
        ax.set_ylabel("accuracy on held-out slice (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
