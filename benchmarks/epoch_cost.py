"""Training cost per batch of clean training, ATL (its recipe's chain steps), free ATL, FGSM-RS and PGD AT, timed side
by side.

PGD AT is the studies' multi-step reference (MNIST: PGD-40 AT; CIFAR-10: PGD-10 AT, step 2/255), so each method's
cost is also given as a share of its training time (the targets "<= 1/8 of PGD-40 AT" and "<= 1/4 of PGD-10 AT").

Where free ATL's cost above a clean step goes is split by one more row, ``clean+input-grad``: a clean step whose
backward also computes the gradient at the input (as free ATL's does), without the bank or the chain's step; the rest
of free ATL's excess is the bank's read and write and the chain's move.

Wall-clock ratios taken from separate runs are not valid on a shared CPU; this script interleaves the methods batch by
batch (one training step of each method in turn, on the same batch, through the trainer's own step) so that whatever
else loads the machine loads every method alike. Each method is built by ``build_training`` from its recipe (MNIST:
``mnist-cnn``; CIFAR-10: the study's ``small-cnn`` settings, or the model ``--cifar-model`` names); the data are
random images of the dataset's shape (the cost does not depend on their content). The median per-round time over
``--rounds`` rounds of ``--batches`` batches gives each method's cost per epoch relative to clean training (a
free-ATL replay round costs one step, as here).

    python benchmarks/epoch_cost.py --threads 2      # writes benchmarks/results/epoch_cost.{json,md}
    python benchmarks/epoch_cost.py --threads 2 --datasets cifar10 --cifar-model small-cnn-w2 \
        --out benchmarks/results/epoch_cost_small-cnn-w2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

import adv_transport as at
from adv_transport.methods import Clean
from adv_transport.recipes import recipe
from adv_transport.training import build_training

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PREVIOUS_ATL, git_commit  # noqa: E402 - shared by the scripts

ROOT = Path(__file__).resolve().parent.parent
# "pgd": the studies' multi-step reference with its recipe (MNIST: PGD-40 AT; CIFAR-10: PGD-10 AT), for the targets
# stated as a share of its training time
METHODS = ("clean", "clean+input-grad", "atl", "free-atl", "fgsm-rs", "pgd")
# more rows per dataset: label -> (method, recipe changes); CIFAR-10: ATL's default before it kept two chains and
# averaged its weights, timed beside today's
VARIANTS = {"cifar10": {"atl (K 1, no EMA)": ("atl", PREVIOUS_ATL)}}


def methods(dataset: str) -> tuple[str, ...]:
    """The rows timed for ``dataset``: :data:`METHODS`, then its :data:`VARIANTS`."""
    return METHODS + tuple(VARIANTS.get(dataset, {}))


def method_recipe(m: str, dataset: str):
    """The recipe of row ``m`` (a method, ``clean+input-grad`` or a variant's label) on ``dataset``."""
    method, changes = VARIANTS.get(dataset, {}).get(m, ("clean" if m == "clean+input-grad" else m, {}))
    return recipe(method, dataset).replace(**changes)


class CleanWithInputGrad(Clean):
    """A clean step whose backward also yields the input gradient (then dropped): free ATL's pass without its bank."""

    name = "clean+input-grad"
    wants_input_grad = True

    def receive_input_grad(self, grad):
        pass
SETTINGS = {"mnist": {}, "cifar10": {"model": "small-cnn", "lr": 0.05, "eps_ramp": 0}}
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
PGD_NAME = {"mnist": "PGD-40 AT", "cifar10": "PGD-10 AT"}


def recipe_epochs(dataset: str) -> dict[str, int] | None:
    """Each method's epochs in its recipe, where the recipes set the runs' length (MNIST: `atl_vs_pgd.py` trains every
    method for its recipe's epochs); None for CIFAR-10, whose study sets the epochs itself."""
    if dataset != "mnist":
        return None
    return {m: method_recipe(m, dataset).epochs for m in methods(dataset)}


def time_methods(dataset: str, batches: int, rounds: int, batch_size: int = 128,
                 cifar_model: str | None = None) -> dict[str, list[float]]:
    n = batches * batch_size
    g = torch.Generator().manual_seed(0)
    data = at.IndexedDataset(torch.randint(0, 256, (n, *SHAPES[dataset]), generator=g, dtype=torch.uint8),
                             torch.randint(0, 10, (n,), generator=g), dataset)
    trainers = {}
    for m in methods(dataset):
        r = method_recipe(m, dataset).replace(**SETTINGS[dataset])
        if dataset == "cifar10" and cifar_model:  # another model than the study's
            r = r.replace(model=cifar_model)
        r = r.replace(epochs=rounds + 1, batch_size=batch_size, select="last", early_stop_drop=None)
        trainers[m], loader = build_training(r, data, None, seed=0, progress=False)
        if m == "clean+input-grad":
            trainers[m].method = CleanWithInputGrad()
    fixed = [tuple(b) for b in loader]
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for rnd in range(rounds + 1):  # round 0 warms up
        spent = dict.fromkeys(trainers, 0.0)
        for x, y, idx in fixed:
            for m, trainer in trainers.items():
                start = time.perf_counter()
                trainer._train_step(x, y, idx, float(rnd))
                spent[m] += time.perf_counter() - start
        if rnd:
            for m in trainers:
                times[m].append(spent[m])
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,cifar10")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cifar-model", default=SETTINGS["cifar10"]["model"],
                    help="model of the CIFAR-10 rows (default: the study's small-cnn; e.g. small-cnn-w2)")
    ap.add_argument("--conditions", default="", help="what else ran on the machine (written into the table)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "epoch_cost"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.datasets.split(","):
        times = time_methods(dataset, args.batches, args.rounds, cifar_model=args.cifar_model)
        clean, pgd = statistics.median(times["clean"]), statistics.median(times["pgd"])
        epochs = recipe_epochs(dataset)
        for m in times:
            med = statistics.median(times[m])
            rows.append({"dataset": dataset, "method": m, "seconds_per_round": med, "vs_clean": med / clean,
                         "vs_pgd": med / pgd, "epochs": None if epochs is None else epochs[m],
                         # a whole run of the recipe's epochs against PGD AT's run of its own
                         "run_vs_pgd": None if epochs is None else med / pgd * epochs[m] / epochs["pgd"]})
            print(rows[-1], flush=True)
    meta = {"date": date.today().isoformat(), "commit": git_commit(), "conditions": args.conditions,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)", "batches": args.batches,
            "rounds": args.rounds, "cifar_model": args.cifar_model}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Measured {meta['date']} (commit {meta['commit']}) on {meta['machine']} "
             f"({args.conditions or 'conditions not given'}): methods interleaved batch by batch, median over "
             f"{args.rounds} rounds of {args.batches} batches of 128; CIFAR-10 model {args.cifar_model}.", "",
             "| dataset | method | s per round | cost vs clean | cost vs PGD AT | recipe epochs | run cost vs PGD AT |",
             "|---|---|---:|---:|---:|---:|---:|"]
    name = lambda r: f"pgd ({PGD_NAME[r['dataset']]})" if r["method"] == "pgd" else r["method"]  # noqa: E731
    lines += [f"| {r['dataset']} | {name(r)} | {r['seconds_per_round']:.3f} | {r['vs_clean']:.2f}x | "
              f"{r['vs_pgd']:.3f}x | {r['epochs'] or 'study'} | "
              f"{'n/a' if r['run_vs_pgd'] is None else format(r['run_vs_pgd'], '.3f') + 'x'} |" for r in rows]
    lines += ["", "Run cost: the per-batch cost times the recipe's epochs over PGD AT's (MNIST: the runs of "
              "`benchmarks/atl_vs_pgd.py`); the CIFAR-10 study sets its epochs itself (`cifar_study.py`)."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
