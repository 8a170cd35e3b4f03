"""ATL against PGD adversarial training and the fast baselines, side by side in one run.

Every method trains the same model from the same initialisation, on the same data order, with its documented recipe
(adv_transport/recipes.py; same optimizer family), through the same training loop, one after another in this
process on this machine. Every epoch: PGD accuracy on the first ``--eval-n`` test images against training wall-clock
(evaluation excluded) and counted gradient evaluations. At the end: AutoAttack 'standard' (pyautoattack) on the first
``--aa-n`` test images (all 10,000 with ``--full``) for every method.

Writes ``<out>/results.json``, ``<out>/robust_error_vs_time.png`` and a section of BENCHMARKS.md.

    python benchmarks/atl_vs_pgd.py --dataset mnist             # the full MNIST comparison (~40 min on 2 CPU cores)
    python benchmarks/atl_vs_pgd.py --dataset cifar10           # relative comparison on the JPEG-lossy CIFAR-10 copy
    python benchmarks/atl_vs_pgd.py --dataset mnist --quick     # smoke test, < 5 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from datetime import date
from pathlib import Path

import torch

import adv_transport as at
from adv_transport.eval import evaluate, pgd_defaults
from adv_transport.recipes import Recipe, recipe
from adv_transport.trainer import log_epochs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared by the scripts
    git_commit,
    mean_std,
    replace_section,
    resumable_training,
    resumed_note,
    slug,
    square_drop,
    training_done,
)

ROOT = Path(__file__).resolve().parent.parent

# method label -> (recipe method, recipe changes); each ATL row spells out what it differs in from ATL's MNIST default,
# so that a label keeps naming what its saved runs trained with when the default changes
_T1 = {"steps": 1, "epochs": 15, "eps_ramp": 0}
MNIST_METHODS = {
    "clean": ("clean", {}),
    # consistency 10: ATL's MNIST default until the sweep of 2026-12-01 (benchmarks/mnist_sweep.py) chose 20, the
    # next row, and then the KL chain target (the row after); each is spelt out, so that each label names what its
    # saved runs trained with
    "ATL T=1": ("atl", {**_T1, "consistency": 10.0, "chain_target": "ce"}),
    "ATL T=1 (consistency 20)": ("atl", {**_T1, "consistency": 20.0, "chain_target": "ce"}),
    # the chain driven by TRADES's KL to the clean output (mnist_sweep: the best validation AutoAttack, 91.0 % over
    # seeds 0-2 at a Square drop of 1.3; ATL's MNIST default until the next row); test runs: `--part kl`, seeds 0-2
    "ATL T=1 (consistency 20; KL chain target)": ("atl", {**_T1, "consistency": 20.0, "chain_target": "kl"}),
    "ATL T=2": ("atl", {**_T1, "steps": 2, "consistency": 10.0, "chain_target": "ce"}),
    # two chain steps per visit with an eps warm-up, 12 epochs (mnist_sweep's fourth round: 91.3 % validation
    # AutoAttack over seeds 0-2 at a Square drop of 0.9; ATL's MNIST default since); test runs: `--part t2`, seeds 0-2
    "ATL T=2 (consistency 20; KL chain target; eps warm-up 3)": (
        "atl", {"steps": 2, "epochs": 12, "eps_ramp": 3, "consistency": 20.0, "chain_target": "kl"}),
    "PGD-40 AT": ("pgd", {}),
    "FGSM-RS": ("fgsm-rs", {}),
    "N-FGSM": ("n-fgsm", {}),
    "FGSM-PGI": ("fgsm-pgi", {}),
    "ATTA": ("atta", {}),
    "Free ATL": ("free-atl", {}),
    # Free-AT's replay: each minibatch 4 times in a row, epochs / 4 (the same gradient count as "Free ATL")
    "Free ATL (replay 4)": ("free-atl", {"replay": 4, "epochs": 5}),
    # Free-AT's own chain (Shafahi et al. 2019: a signed step of eps, no noise), replayed 4 times, with the baselines'
    # eps warm-up (in replay-epochs: 3 of PGD-40 AT's 10 epochs -> 1.5 of 5)
    "Free ATL (replay 4) with Free-AT's step": ("free-atl", {"replay": 4, "epochs": 5, "eta": 0.3, "noise_scale": 0.0,
                                                            "eps_ramp": 1.5}),
}
CIFAR_METHODS = {
    "clean": ("clean", {}),
    "ATL T=1": ("atl", {}),
    "PGD-10 AT": ("pgd", {"steps": 10, "step_size": 2 / 255}),
    "FGSM-RS": ("fgsm-rs", {}),
    "FGSM-PGI": ("fgsm-pgi", {}),
    "ATTA": ("atta", {}),
}
REFERENCE = {"mnist": "PGD-40 AT", "cifar10": "PGD-10 AT"}
LOSSY_LABEL = (
    "relative comparison on the JPEG-lossy CIFAR-10 copy (../shared/data/cifar10_jpeg_lossy.npz): not "
    "comparable with published CIFAR-10 numbers"
)


def run_recipe(method_name, changes, args):
    """The recipe a method trains with in this comparison (its documented recipe, this script's settings)."""
    r = recipe(method_name, args.dataset).replace(**changes)
    if args.dataset == "cifar10":
        r = r.replace(model=args.cifar_model, epochs=args.cifar_epochs, lr=args.cifar_lr)
    if args.epochs_scale != 1.0:
        r = r.replace(epochs=max(1, round(r.epochs * args.epochs_scale)))
    return r


def train_one(label, method_name, changes, args, train, test, threat, device, partial: Path, commit: str):
    """Train one method (continuing it from ``partial``, its checkpoint folder, when an earlier invocation was cut
    off part-way through it)."""
    r = run_recipe(method_name, changes, args)
    # identical initialisation and data order for every method (seeded), the same loop and per-epoch check
    trainer, batches, resumed = resumable_training(r, train, test, partial, seed=args.seed, device=device,
                                                   eval_n=args.eval_n, progress=not args.no_progress, commit=commit)
    method = trainer.method
    print(f"[{label}] {r.epochs} epochs, {method.describe()}{resumed_note(resumed, partial)}", file=sys.stderr,
          flush=True)
    start = time.perf_counter()
    trainer.fit(batches, r.epochs)
    wall = time.perf_counter() - start
    last = trainer.history[-1]
    print(
        f"[{label}] done: train {last['train_seconds']:.0f} s (+ eval), clean {last['clean_acc']:.1f} %, "
        f"PGD {last['pgd_acc']:.1f} %",
        file=sys.stderr,
        flush=True,
    )
    result = {
        "label": label,
        "recipe": r.to_dict(),
        "history": trainer.history,
        "wall_seconds": wall,  # after the resume only, for a resumed run
        "resumed_at_epoch": None if resumed is None else resumed["epoch"],
        "started_on_commit": None if resumed is None else resumed["commit"],  # else the run's meta commit
        "inner_step": method.describe(),
    }
    if hasattr(method, "bank"):
        result["bank_bytes"] = method.bank.memory_bytes
        result["bank_bytes_int8"] = method.bank.num_examples * method.bank.copies * math.prod(method.bank.shape)
    return trainer.model, result


def final_eval(model, test, threat, args, device):
    """AutoAttack (with the sanity checks) on the first --aa-n test images; PGD comes from the last epoch's check."""
    if args.no_autoattack:
        return {}
    n = 10000 if args.full else args.aa_n
    model.eval()
    return evaluate(
        model, test, threat, ["clean", "autoattack"], n_examples=n, device=device, progress=not args.no_progress
    )


def first_time_reaching(history, level, key):
    if level is None:  # no reference run (a run of other seeds without it)
        return None
    for r in history:
        if r["pgd_acc"] >= level:
            return r[key]
    return None


def summarise(results, dataset):
    ref = results.get(REFERENCE[dataset])
    target = None if ref is None else ref["history"][-1]["pgd_acc"]
    clean_epoch = None
    if "clean" in results:
        h = results["clean"]["history"]
        clean_epoch = sum(r["epoch_seconds"] for r in h) / len(h)
    rows = []
    for label, res in results.items():
        h = res["history"]
        epoch_cost = sum(r["epoch_seconds"] for r in h) / len(h)
        rows.append(
            {
                "label": label,
                "epochs": len(h),
                "clean_acc": h[-1]["clean_acc"],
                "pgd_acc": h[-1]["pgd_acc"],
                "autoattack_acc": res["final"].get("autoattack_acc"),
                "train_seconds": h[-1]["train_seconds"],
                "grad_evals": h[-1]["input_grad_evals"] + h[-1]["param_grad_evals"],
                "forward_evals": h[-1].get("forward_evals", 0),  # no-gradient passes (KL chain target), apart
                "seconds_to_target": first_time_reaching(h, target, "train_seconds"),
                "grad_evals_to_target": None
                if first_time_reaching(h, target, "train_seconds") is None
                else next(r["input_grad_evals"] + r["param_grad_evals"] for r in h if r["pgd_acc"] >= target),
                "epoch_cost_vs_clean": None if clean_epoch is None else epoch_cost / clean_epoch,
                # a replayed epoch visits each batch `replay` times: its cost per pass over the data
                "pass_cost_vs_clean": None if clean_epoch is None
                else epoch_cost / clean_epoch / res.get("recipe", {}).get("replay", 1),
                "bank_bytes": res.get("bank_bytes"),
                "bank_bytes_int8": res.get("bank_bytes_int8"),
                "square_drop": square_drop(res["final"]),
                "reused": "reused_from" in res,
            }
        )
    return {"target_pgd_acc": target, "reference": REFERENCE[dataset], "rows": rows}


def seed_runs(out: Path) -> list[dict]:
    """The results.json of every finished run of this comparison, seed by seed: ``<out>/results.json`` (seed 0's
    side-by-side run) and ``<out>/seed<k>[-<part>]/results.json`` (further seeds, and further methods of a seed run
    apart: see ``--seed`` and ``--part``)."""
    runs = []
    for path in [out / "results.json", *sorted(out.glob("seed*/results.json"))]:
        if path.is_file():
            data = json.loads(path.read_text())
            if not data.get("partial") and "meta" in data:
                runs.append(data)
    return sorted(runs, key=lambda d: (d["meta"]["seed"], d["meta"].get("part") or ""))


def across_seeds(runs: list[dict], dataset: str | None = None) -> dict[str, dict]:
    """label -> per-seed and mean/std clean, PGD and AutoAttack accuracy, Square drop and epoch cost vs clean (each
    relative to the clean row of its own run). A method may come from one run per seed only; 'clean', in every run
    for that unit, is listed from the seed's first run. With ``dataset`` the rows are recomputed from the saved
    results (today's reading of them), else taken from the saved summaries."""

    table: dict[str, dict] = {}
    for data in runs:
        seed = data["meta"]["seed"]
        rows = summarise(data["results"], dataset)["rows"] if dataset else data["summary"]["rows"]
        for row in rows:
            seeds = table.setdefault(row["label"], {"seeds": {}})["seeds"]
            if seed in seeds and row["label"] == "clean":
                continue  # a part's own clean run is the unit of its epoch costs; the seed's first run's is listed
            if seed in seeds:
                raise SystemExit(f"'{row['label']}' of seed {seed} is in two runs (parts {seeds[seed]['part']!r} and "
                                 f"{data['meta'].get('part')!r}): remove one of them")
            seeds[seed] = {**row, "part": data["meta"].get("part"), "commit": data["meta"]["commit"]}
    for m in table.values():
        m["seeds"] = dict(sorted(m["seeds"].items()))
        for key in ("clean_acc", "pgd_acc", "autoattack_acc", "square_drop", "epoch_cost_vs_clean",
                    "pass_cost_vs_clean", "train_seconds"):
            m[key + "_mean"], m[key + "_std"] = mean_std(r.get(key) for r in m["seeds"].values())
    return table


def seeds_of(table: dict[str, dict]) -> set:
    return {seed for m in table.values() for seed in m["seeds"]}


def seed_targets(table: dict[str, dict], dataset: str = "mnist") -> list[str]:
    """The targets on means over seeds: on MNIST, each ATL row's AutoAttack >= 89.0 % and >= the reference's,
    Square drop <= 1.5; the free-ATL rows' epoch cost <= 1.2x a clean epoch and AutoAttack within 2 points of
    ATL T=1's."""
    atl = table.get("ATL T=1")
    lines = []
    ref = table.get(REFERENCE[dataset])
    for label, m in table.items():
        if dataset != "mnist" or not label.startswith("ATL T=") or m["autoattack_acc_mean"] is None:
            continue
        n, acc = len(m["seeds"]), m["autoattack_acc_mean"]
        ref_acc = None if ref is None else ref["autoattack_acc_mean"]
        ok = acc >= 89.0 and (ref_acc is None or acc >= ref_acc)
        ref_text = ("" if ref_acc is None else
                    f" and >= {REFERENCE[dataset]}'s {ref_acc:.2f} % (mean of {len(ref['seeds'])})")
        lines.append(f"- **{'Met' if ok else 'Not met'}**: {label} AutoAttack {acc:.2f} % (mean of {n} seeds; target "
                     f">= 89.0 %{ref_text}).")
        drop = m["square_drop_mean"]
        if drop is not None:
            lines.append(f"- **{'Met' if drop <= 1.5 else 'Not met'}**: Square removes {drop:.2f} points of {label}'s "
                         f"accuracy after the white-box attacks (mean of {n} seeds; target <= 1.5).")
    for label, m in table.items():
        if not label.startswith("Free ATL"):
            continue
        n = len(m["seeds"])
        cost = m.get("pass_cost_vs_clean_mean")
        if cost is not None:
            lines.append(f"- **{'Met' if cost <= 1.2 else 'Not met'}**: {label} cost per pass over the data "
                         f"{cost:.2f}x a clean epoch (mean of {n} seeds, wall-clock of runs that shared the CPU; "
                         "per batch, interleaved: `benchmarks/epoch_cost.py`; target <= 1.2x).")
        if atl and atl["autoattack_acc_mean"] is not None and m["autoattack_acc_mean"] is not None:
            gap = atl["autoattack_acc_mean"] - m["autoattack_acc_mean"]
            lines.append(f"- **{'Met' if gap <= 2 else 'Not met'}**: {label} AutoAttack {m['autoattack_acc_mean']:.2f}"
                         f" % (mean of {n} seeds) vs ATL T=1 {atl['autoattack_acc_mean']:.2f} % (mean of "
                         f"{len(atl['seeds'])}; target: within 2 points, gap {gap:+.2f}).")
    return lines


def seeds_markdown(table: dict[str, dict]) -> list[str]:
    f = lambda m, k, d=2: "n/a" if m[k + "_mean"] is None else f"{m[k + '_mean']:.{d}f} ± {m[k + '_std']:.{d}f}"  # noqa: E731
    lines = [
        "",
        "Across seeds (each seed one side-by-side run of the methods it names, or more where methods were added to a "
        "seed later with `--part`, each with its own clean run; same settings; mean ± std; epoch cost relative to "
        "the clean epoch of the same run, per pass over the data: a replayed epoch's divided by its replays):",
        "",
        "| method | seeds | clean % | PGD % | AutoAttack % | AutoAttack per seed | Square drop | "
        "cost per pass vs clean | commits |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for label, m in table.items():
        per_seed = ", ".join("n/a" if r["autoattack_acc"] is None else f"{r['autoattack_acc']:.1f}"
                             for r in m["seeds"].values())
        lines.append(f"| {label} | {', '.join(map(str, m['seeds']))} | {f(m, 'clean_acc')} | {f(m, 'pgd_acc')} | "
                     f"**{f(m, 'autoattack_acc')}** | {per_seed} | {f(m, 'square_drop')} | "
                     f"{f(m, 'pass_cost_vs_clean')}x | "
                     f"{', '.join(sorted({str(r.get('commit')) for r in m['seeds'].values()}))} |")
    return lines


def targets(summary, dataset):
    rows = {r["label"]: r for r in summary["rows"]}
    ref = rows[summary["reference"]]
    atl = rows["ATL T=1"]
    lines = []
    t_ref = ref["train_seconds"]
    t_atl = atl["seconds_to_target"]
    if ref.get("reused"):  # its seconds come from another run: compare counted gradient evaluations only
        g_atl = atl["grad_evals_to_target"]
        lines.append(
            f"- **{'Met' if g_atl is not None and ref['grad_evals'] / g_atl >= 10 else 'Not met'}**: "
            f"{summary['reference']} was reused from an earlier run, so no wall-clock ratio is given: ATL T=1 reached "
            f"its final PGD accuracy ({summary['target_pgd_acc']:.1f} %) after "
            f"{'never' if g_atl is None else f'{g_atl / 1e6:.2f} M'} gradient evaluations, it trained for "
            f"{ref['grad_evals'] / 1e6:.2f} M (target: 10x fewer)."
        )
    elif t_atl is None:
        lines.append(
            f"- **Not met**: ATL T=1 never reached {summary['reference']}'s final PGD accuracy "
            f"({summary['target_pgd_acc']:.1f} %) within its epochs."
        )
    else:
        ratio = t_ref / t_atl
        verdict = "Met" if ratio >= 10 else "Not met"
        lines.append(
            f"- **{verdict}**: ATL T=1 first reached {summary['reference']}'s final PGD accuracy "
            f"({summary['target_pgd_acc']:.1f} %) after {t_atl:.0f} s of training, {summary['reference']} "
            f"trained for {t_ref:.0f} s: a speed-up of {ratio:.1f}x (target >= 10x)."
        )
    if ref["autoattack_acc"] is not None and atl["autoattack_acc"] is not None:
        gap = ref["autoattack_acc"] - atl["autoattack_acc"]
        verdict = "Met" if gap <= 1.0 else "Not met"
        lines.append(
            f"- **{verdict}**: final AutoAttack accuracy ATL T=1 {atl['autoattack_acc']:.2f} % vs "
            f"{summary['reference']} {ref['autoattack_acc']:.2f} % (target: within 1 point; gap "
            f"{gap:+.2f})."
        )
        if dataset == "mnist":
            verdict = "Met" if atl["autoattack_acc"] > 82.93 else "Not met"
            lines.append(
                f"- **{verdict}**: ATL T=1 AutoAttack {atl['autoattack_acc']:.2f} % vs Wong et al.'s "
                "FGSM-RS anchor 82.93 % (target: above)."
            )
            ok = atl["autoattack_acc"] >= max(89.0, ref["autoattack_acc"])
            lines.append(
                f"- **{'Met' if ok else 'Not met'}**: ATL T=1 AutoAttack {atl['autoattack_acc']:.2f} % (target: >= "
                f"89.0 % and >= {summary['reference']}'s {ref['autoattack_acc']:.2f} % in this run)."
            )
        if atl["square_drop"] is not None:
            lines.append(
                f"- **{'Met' if atl['square_drop'] <= 1.5 else 'Not met'}**: Square removes {atl['square_drop']:.2f} "
                f"points of ATL T=1's accuracy after the white-box attacks (target <= 1.5; {summary['reference']}: "
                f"{f_or_na(ref['square_drop'])})."
            )
    if dataset == "mnist":
        ratio, gratio = atl["train_seconds"] / t_ref, atl["grad_evals"] / ref["grad_evals"]
        if ref.get("reused"):
            lines.append(
                f"- **{'Met' if gratio <= 1 / 8 else 'Not met'}**: ATL T=1 trained with {gratio:.3f}x "
                f"{summary['reference']}'s gradient evaluations (target <= 1/8 = 0.125; its seconds come from another "
                "run, so no wall-clock ratio is given)."
            )
        else:
            lines.append(
                f"- **{'Met' if ratio <= 1 / 8 else 'Not met'}**: ATL T=1 trained in {ratio:.3f}x "
                f"{summary['reference']}'s training time (target <= 1/8 = 0.125; {gratio:.3f}x its gradient "
                "evaluations)."
            )
    if atl["epoch_cost_vs_clean"] is not None:
        verdict = "Met" if atl["epoch_cost_vs_clean"] <= 2.1 else "Not met"
        lines.append(
            f"- **{verdict}**: ATL T=1 epoch cost {atl['epoch_cost_vs_clean']:.2f}x a clean epoch (target <= 2.1x)."
        )
    return lines


def reused_rows(meta) -> list[tuple[str, str]]:
    return list(meta.get("reused", {}).items())


def f_or_na(v, fmt=".2f"):
    return "n/a" if v is None else format(v, fmt)


def markdown(summary, meta, dataset, seeds=None):
    f = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
    lines = [
        f"<!-- atl-vs-pgd:{dataset} -->",
        f"## ATL vs PGD adversarial training: {dataset}" + (" (JPEG-lossy copy)" if dataset == "cifar10" else ""),
        "",
        f"Measured {meta['date']} on {meta['machine']}, one run of `{meta['command']}` (commit {meta['commit']}).",
        f"Model `{meta['model']}`, l-inf eps = {meta['eps']:.4g}, {meta['train_n']} training images, seed "
        f"{meta['seed']}. Clean and PGD = PGD-{meta['pgd_steps']} (step {meta['pgd_step_size']:.4g}, random start) "
        f"on the first {meta['eval_n']} test images after the last epoch; AutoAttack = pyautoattack 'standard' on "
        f"the first {meta['aa_n']} test images.",
    ]
    if dataset == "cifar10":
        lines += ["", f"**{LOSSY_LABEL}.**"]
    lines += [
        "",
        "| method | epochs | clean % | PGD % | AutoAttack % | train s | grad evals | s to reach ref. PGD | "
        "grad evals to reach | epoch cost vs clean | Square drop | bank memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in summary["rows"]:
        to_target = "n/a" if r["grad_evals_to_target"] is None else f"{r['grad_evals_to_target'] / 1e6:.2f} M"
        bank = (
            ""
            if r["bank_bytes"] is None
            else (f"{r['bank_bytes'] / 2**20:.0f} MiB fp32 ({r['bank_bytes_int8'] / 2**20:.0f} MiB as int8)")
        )
        lines.append(
            f"| {r['label']} | {r['epochs']} | {r['clean_acc']:.2f} | {r['pgd_acc']:.2f} | "
            f"{f(r['autoattack_acc'], '.2f')} | {r['train_seconds']:.0f} | {r['grad_evals'] / 1e6:.2f} M | "
            f"{f(r['seconds_to_target'], '.0f')} | "
            f"{to_target} | "
            f"{f(r['epoch_cost_vs_clean'], '.2f')}x | {f(r.get('square_drop'), '.2f')} | {bank} |"
        )
    lines += [
        "",
        f"Reference level: {summary['reference']}'s final PGD accuracy, {summary['target_pgd_acc']:.2f} %. "
        "Times are training wall-clock (per-epoch evaluation excluded); gradient evaluations count one per example "
        "per input- or parameter-gradient pass. Plot: "
        f"`{meta['png']}`.",
        "",
        "Square drop = points Square removed after AutoAttack's white-box attacks (a gradient-masking symptom).",
        *([f"**This run was stopped before {', '.join(meta['stopped_before'])}** (out of the session's time): "
           "those rows are missing."] if meta.get("stopped_before") else []),
        *[f"**{label} was not retrained in this run**: its row is reused from {why}, the same recipe; its seconds "
          "were measured then (2 threads, idle machine), not beside the others." for label, why in reused_rows(meta)],
        *(seeds_markdown(seeds) if seeds and len(seeds_of(seeds)) > 1 else []),
        "",
        "Targets:",
        "",
        *targets(summary, dataset),
        *(seed_targets(seeds, dataset) if seeds else []),
        f"<!-- /atl-vs-pgd:{dataset} -->",
    ]
    return "\n".join(lines) + "\n"


def update_benchmarks_md(path: Path, section: str, dataset: str) -> None:
    replace_section(path, f"atl-vs-pgd:{dataset}", section)


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, res in results.items():
        h = res["history"]
        err = [100 - r["pgd_acc"] for r in h]
        axes[0].plot([r["train_seconds"] for r in h], err, marker=".", label=label)
        axes[1].plot([r["input_grad_evals"] + r["param_grad_evals"] for r in h], err, marker=".", label=label)
    axes[0].set_xlabel("training wall-clock (s, log scale)")
    axes[1].set_xlabel("gradient evaluations (log scale)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("adversarial test error, PGD (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--quick", action="store_true", help="smoke test: 3000 training images, 2 epochs per method")
    p.add_argument("--full", action="store_true", help="AutoAttack on all 10,000 test images")
    p.add_argument("--methods", help="comma-separated subset of the method labels")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--aa-n", type=int, default=1000)
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every recipe's epochs")
    p.add_argument("--cifar-model", default="small-cnn")
    p.add_argument("--cifar-epochs", type=int, default=15)
    p.add_argument("--cifar-lr", type=float, default=0.05)
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--seed", type=int, default=0,
                   help="0: the side-by-side comparison, <out>/results.json; k > 0: a further seed of any subset of "
                   "the methods, <out>/seed<k>/results.json, reported as mean +- std beside it")
    p.add_argument("--part", help="more methods of a seed, run apart from its first run: "
                   "<out>/seed<k>-<PART>/results.json, its rows joined to that seed's (each method in one run per "
                   "seed; put 'clean' in it too for the epoch cost)")
    p.add_argument("--reference-from", help="a results.json of an earlier run whose reference method (PGD-40 AT / "
                   "PGD-10 AT, same recipe) is reused instead of retrained; the report says so")
    p.add_argument("--close-partial", metavar="COMMIT", help="finish the report of an interrupted run from the "
                   "methods it completed (COMMIT: the commit it ran on); the ones it did not reach are named")
    p.add_argument("--report", action="store_true", help="rebuild the plot and tables from the saved runs only")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="results folder (default benchmarks/results/<dataset>[-quick])")
    p.add_argument("--benchmarks-md", help="BENCHMARKS.md to update (default: the repository's, not in --quick)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.no_progress:  # without progress bars, one plain line per epoch (for logs written to files)
        log_epochs()
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = git_commit()  # the code that runs: taken at the start, not at the end
    if args.quick:
        args.train_subset = args.train_subset or 3000
        args.eval_n = min(args.eval_n, 200)
        args.aa_n = min(args.aa_n, 100)
        if args.epochs_scale == 1.0:
            args.epochs_scale = 0.1
        args.cifar_epochs = min(args.cifar_epochs, 2)
    if args.dataset == "cifar10" and args.train_subset is None:
        args.train_subset = 10000
    out = Path(args.out or ROOT / "benchmarks" / "results" / (args.dataset + ("-quick" if args.quick else "")))
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        return publish(out, args)
    device = torch.device(args.device)
    train = at.load_dataset(args.dataset, "train", args.data_dir).subset(args.train_subset)
    test = at.load_dataset(args.dataset, "test", args.data_dir)
    if args.dataset == "cifar10" and not test.lossy:
        print("note: this CIFAR-10 copy is not the lossy one; the lossy label is still applied", file=sys.stderr)
    r0 = recipe("atl", args.dataset)
    threat = at.ThreatModel(r0.norm, r0.eps)
    methods = methods_all = MNIST_METHODS if args.dataset == "mnist" else CIFAR_METHODS
    if args.methods:
        keep = [m.strip() for m in args.methods.split(",")]
        unknown = [m for m in keep if m not in methods]
        if unknown:
            p.error(f"unknown methods {unknown}; known: {list(methods)}")
        methods = {k: v for k, v in methods.items() if k in keep}
    reused = {}
    if args.reference_from:  # the reference's result from an earlier run of the same recipe, not retrained
        prev = json.loads(Path(args.reference_from).read_text())
        ref_label = REFERENCE[args.dataset]
        if ref_label not in prev.get("results", {}) or prev.get("partial"):
            p.error(f"{args.reference_from} holds no finished '{ref_label}' result")
        res = prev["results"][ref_label]
        name, changes = methods_all[ref_label]
        if Recipe.from_dict(res["recipe"]) != run_recipe(name, changes, args):
            p.error(f"{args.reference_from}: its '{ref_label}' recipe differs from today's; rerun it instead")
        reused[ref_label] = {**res, "reused_from": f"{args.reference_from} (commit {prev['meta']['commit']}, "
                                                  f"AutoAttack on {prev['meta']['aa_n']} images)"}
        methods = {k: v for k, v in methods.items() if k != ref_label}
    if args.part is not None and not re.fullmatch(r"[A-Za-z0-9_]+", args.part):
        p.error(f"--part {args.part!r}: letters, digits and '_' only (it names a folder)")
    if args.seed == 0 and not args.part and (REFERENCE[args.dataset] not in {**methods, **reused}
                                             or "ATL T=1" not in methods):
        p.error(f"the comparison (seed 0) needs '{REFERENCE[args.dataset]}' and 'ATL T=1'; other seeds may run any "
                "subset, recorded beside it")
    run_dir = out / f"seed{args.seed}-{args.part}" if args.part else out if args.seed == 0 else out / f"seed{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results, stopped_before = {}, []
    if args.close_partial:  # an interrupted run: report the methods it finished, name the ones it did not reach
        saved = json.loads((run_dir / "results.json").read_text())
        if not saved.get("partial"):
            p.error(f"{run_dir / 'results.json'} is not a partial run")
        results = saved["results"]
        stopped_before = [label for label in methods_all if label in {**methods, **reused} and label not in results]
        methods, reused = {}, {}
        kept = sorted(str(d) for d in (run_dir / "partial").glob("*") if d.is_dir())
        if kept:
            print(f"--close-partial: the checkpoints of the unfinished methods stay in {', '.join(kept)}; a later "
                  "run of this --seed/--part continues them (remove them to start afresh)", file=sys.stderr)
    for label, (name, changes) in methods_all.items():
        if label in reused:
            results[label] = reused[label]
            continue
        if label not in methods:
            continue
        partial = run_dir / "partial" / slug(label)  # the method's checkpoints while it trains (git-ignored)
        model, res = train_one(label, name, changes, args, train, test, threat, device, partial, commit)
        res["final"] = final_eval(model, test, threat, args, device)
        if res["final"].get("sanity_warnings"):
            print(f"[{label}] sanity: {res['final']['sanity_warnings']}", file=sys.stderr, flush=True)
        results[label] = res
        (run_dir / "results.json").write_text(json.dumps({"partial": True, "results": results}, indent=1))
        training_done(partial)
    summary = summarise(results, args.dataset)
    steps, step_size = pgd_defaults(args.dataset, threat)
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "command": "python benchmarks/atl_vs_pgd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "model": next(iter(results.values()))["recipe"]["model"],
        "eps": threat.eps,
        "train_n": len(train),
        "seed": args.seed,
        "part": args.part,
        "pgd_steps": steps,
        "pgd_step_size": step_size,
        "eval_n": min(args.eval_n, len(test)),
        "aa_n": 10000 if args.full else min(args.aa_n, len(test)),
        "png": str((out / "robust_error_vs_time.png").relative_to(ROOT))
        if out.is_relative_to(ROOT)
        else str(out / "robust_error_vs_time.png"),
        "lossy_data": test.lossy,
        "reused": {label: res["reused_from"] for label, res in results.items() if "reused_from" in res},
        "stopped_before": stopped_before,
    }
    if args.close_partial:
        meta["commit"] = args.close_partial
        argv_run = list(argv if argv is not None else sys.argv[1:])
        i = argv_run.index("--close-partial")
        meta["command"] = "python benchmarks/atl_vs_pgd.py " + " ".join(argv_run[:i] + argv_run[i + 2:])
    (run_dir / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1)
    )
    return publish(out, args)


def publish(out: Path, args):
    """Rebuild the plot, ``summary.md`` and the BENCHMARKS.md section from ``<out>/results.json`` (the side-by-side
    run at seed 0) and the other seeds' runs beside it; returns seed 0's summary (None before it exists)."""
    runs = seed_runs(out)
    base = next((d for d in runs if d["meta"]["seed"] == 0 and not d["meta"].get("part")), None)
    if base is None:
        print(f"no finished seed-0 comparison in {out}: the seeds table waits for it", file=sys.stderr)
        return None
    meta, results = base["meta"], base["results"]
    summary = summarise(results, args.dataset)  # recomputed: a report follows today's reading of the saved runs
    title = f"{args.dataset}: adversarial test error (PGD-{meta['pgd_steps']}) vs training time"
    if args.dataset == "cifar10":
        title += "\n" + LOSSY_LABEL
    plot(results, out / "robust_error_vs_time.png", title)
    section = markdown(summary, meta, args.dataset, across_seeds(runs, args.dataset))
    (out / "summary.md").write_text(section)
    md_path = Path(args.benchmarks_md) if args.benchmarks_md else (None if args.quick else ROOT / "BENCHMARKS.md")
    if md_path is not None:
        update_benchmarks_md(md_path, section, args.dataset)
    print(section)
    return summary


if __name__ == "__main__":
    main()
