"""ATL variants on MNIST eps = 0.3, judged on a validation split of the training set (the test set is not touched).

How ATL's MNIST defaults are chosen: each variant trains ``mnist-cnn`` with ATL's MNIST recipe as it was before the
sweep (``BEFORE_THE_SWEEP``) plus its changes on the
first ``--train-n`` training images, seed 0, then clean, PGD-40 and AutoAttack 'standard' (pyautoattack) run on
``--val-aa-n`` of the last ``--val-n`` training images (never trained on). The variant with the best validation
AutoAttack accuracy whose Square drop (points removed by Square after the white-box attacks, a gradient-masking
symptom) is at most 1.5 becomes the default; `benchmarks/atl_vs_pgd.py` then reports test numbers once.

Each run is saved as ``<out>/runs/<key>.json`` as soon as it ends and skipped when the command is run again; while
it trains, its checkpoint is kept after every epoch in ``<out>/partial/<key>/`` (git-ignored; removed once its
result is saved), so a run cut off part-way continues from its last finished epoch;
``<out>/sweep.md`` (and the BENCHMARKS.md section between ``<!-- mnist-sweep -->`` markers) is rebuilt from the runs.

    python benchmarks/mnist_sweep.py --data-dir ../shared/data
    python benchmarks/mnist_sweep.py --variants "consistency 10;TRADES beta 6"  # a subset (labels separated by ';')
    python benchmarks/mnist_sweep.py --quick --out /tmp/q                      # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

import adv_transport as at
from adv_transport.eval import evaluate
from adv_transport.recipes import Recipe, recipe
from adv_transport.trainer import log_epochs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared by the scripts
    git_commit,
    replace_section,
    resumable_training,
    resumed_fields,
    resumed_note,
    seed_means,
    slug,
    square_drop,
    training_done,
)

ROOT = Path(__file__).resolve().parent.parent
EPS = 0.3
BEFORE_THE_SWEEP = {"epochs": 20, "steps": 1, "eps_ramp": 0, "consistency": 0.0, "chain_target": "ce"}
# label -> changes to ATL's MNIST recipe before the sweep (eta: the chain's step; s: noise scale, amplitude
# s * sqrt(2 eta))
VARIANTS = {
    "recipe before the sweep (eta 0.1, s 0.2)": {"eta": 0.1, "noise_scale": 0.2, "consistency": 0.0, "eps_ramp": 0},
    "consistency 10": {"eta": 0.1, "noise_scale": 0.2, "consistency": 10.0, "eps_ramp": 0},
    # the consistency term costs a pass: 15 epochs keep ATL within 1/8 of PGD-40 AT's gradient evaluations
    "consistency 10, 15 epochs": {"eta": 0.1, "noise_scale": 0.2, "consistency": 10.0, "eps_ramp": 0, "epochs": 15},
    "eps warm-up 3 epochs": {"eta": 0.1, "noise_scale": 0.2, "consistency": 0.0, "eps_ramp": 3},
    "eta 0.15, s 0.1": {"eta": 0.15, "noise_scale": 0.1, "consistency": 0.0, "eps_ramp": 0},
    "TRADES beta 6": {"eta": 0.1, "noise_scale": 0.2, "consistency": 0.0, "eps_ramp": 0, "loss": "trades"},
    # the CIFAR study's winner, transferred (eta 1.25 eps, s 0.05, consistency 10, warm-up)
    "CIFAR settings (eta 1.25 eps, s 0.05, consistency 10, warm-up 3)": {
        "eta": 1.25 * EPS, "noise_scale": 0.05, "consistency": 10.0, "eps_ramp": 3},
    "eta 1.25 eps, s 0.05": {"eta": 1.25 * EPS, "noise_scale": 0.05, "consistency": 0.0, "eps_ramp": 0},
    # against the Square drop of the default (test: 2.5 points): a stronger consistency term, and training in a
    # slightly larger ball than the one evaluated (every variant is evaluated at eps = 0.3)
    "consistency 20, 15 epochs": {"eta": 0.1, "noise_scale": 0.2, "consistency": 20.0, "eps_ramp": 0, "epochs": 15},
    "consistency 10, 15 epochs, trained at eps 0.33": {"eta": 0.1, "noise_scale": 0.2, "consistency": 10.0,
                                                       "eps_ramp": 0, "epochs": 15, "eps": 0.33},
    # weight averaging (EMA of the parameters; decay 0.999 = a horizon of about 1,000 of the 6,450 steps, fixed
    # before the run): the default (consistency 20) averaged, towards its AutoAttack without losing its Square drop
    "consistency 20, 15 epochs, EMA 0.999": {"eta": 0.1, "noise_scale": 0.2, "consistency": 20.0, "eps_ramp": 0,
                                             "epochs": 15, "ema_decay": 0.999},
    # two Langevin steps per visit against the Square drop (a stronger inner step), at the cost target: 4 passes per
    # example (2 chain steps, the training pass, the consistency term) x 12 epochs = 0.117x PGD-40 AT's evaluations
    "consistency 10, T 2, 12 epochs": {"eta": 0.1, "noise_scale": 0.2, "consistency": 10.0, "eps_ramp": 0,
                                       "epochs": 12, "steps": 2},
    "consistency 20, T 2, 12 epochs": {"eta": 0.1, "noise_scale": 0.2, "consistency": 20.0, "eps_ramp": 0,
                                       "epochs": 12, "steps": 2},
    # the default with the chain options of the CIFAR sweep's eighth round: momentum in the chain (decay 0.3, as
    # FGSM-PGI's) and TRADES's KL to the clean output as the chain's target (TRADES's own inner loss; one more forward
    # pass per visit).
    # Rule fixed before the runs (76f539d's): seeds 1-2 only if seed 0 is within 1 point of 90.37 % (the best mean)
    # with a Square drop <= 1.5
    "consistency 20, 15 epochs, chain momentum 0.3": {"eta": 0.1, "noise_scale": 0.2, "consistency": 20.0,
                                                      "eps_ramp": 0, "epochs": 15, "chain_momentum": 0.3},
    "consistency 20, 15 epochs, KL chain target": {"eta": 0.1, "noise_scale": 0.2, "consistency": 20.0,
                                                   "eps_ramp": 0, "epochs": 15, "chain_target": "kl"},
    # Against the default's test Square drop (1.6 +- 0.2 over 3 seeds, target <= 1.5; validation 1.33 +- 0.45), two
    # more tries on the KL default (fourth MNIST round, 2026-12-05): a heavier consistency term (weight 10 -> 20 cut the
    # validation drop from 1.7 to 1.1 with the CE target), and two chain steps per visit with PGD-40 AT's eps warm-up
    # (T 2 without a warm-up never left chance at weight 20; 12 epochs keep 0.117x PGD-40 AT's gradient evaluations).
    # Rule fixed before the runs: seeds 1-2 only if seed 0 has validation AutoAttack >= 90.3 % and a Square drop
    # <= 1.2; a variant becomes the default only if over seeds 0-2 its mean validation AutoAttack is >= 90.5 % (within
    # 0.5 of the default's 91.0 %) and its mean drop <= 1.0; then atl_vs_pgd.py reports its test numbers on 3 seeds.
    # (Added after seed 0 of both, 91.1 % / 1.0 and 91.2 % / 1.0, before any seed 1 or 2 ended: if both pass, the one
    # with the higher mean validation AutoAttack, then the lower mean drop, then the cheaper in gradient evaluations.)
    "consistency 30, 15 epochs, KL chain target": {"eta": 0.1, "noise_scale": 0.2, "consistency": 30.0,
                                                   "eps_ramp": 0, "epochs": 15, "chain_target": "kl"},
    "consistency 20, T 2, 12 epochs, KL chain target, eps warm-up 3": {
        "eta": 0.1, "noise_scale": 0.2, "consistency": 20.0, "eps_ramp": 3, "epochs": 12, "steps": 2,
        "chain_target": "kl"},
}


def run_key(label: str, seed: int) -> str:
    return f"sweep-{slug(label)}-seed{seed}"


def train_and_evaluate(label, changes, seed, train, val, args, partial: Path) -> dict:
    """Train one variant (continuing it from ``partial``, its checkpoint folder, when an earlier invocation was cut
    off) and evaluate its last-epoch model on the validation split."""
    # the variants change ATL's MNIST recipe as it was before the sweep (20 epochs, T = 1, no warm-up, no consistency
    # term, the cross-entropy chain target), whatever the default is now: each label keeps meaning what it ran
    r = recipe("atl", "mnist").replace(**{**BEFORE_THE_SWEEP, **changes})
    if args.epochs:
        r = r.replace(epochs=args.epochs)
    threat = at.ThreatModel(r.norm, EPS)  # the evaluated ball, also for variants trained in another
    trainer, batches, resumed = resumable_training(r, train, None, partial, seed=seed, progress=not args.no_progress,
                                                   commit=args.commit)
    print(f"[mnist sweep] {label}: {trainer.method.describe()}{resumed_note(resumed, partial)}", file=sys.stderr,
          flush=True)
    trainer.fit(batches, r.epochs)
    model = trainer.final_model().eval()
    attacks = ["clean", "pgd"] + ([] if args.no_autoattack else ["autoattack"])
    final = evaluate(model, val, threat, attacks, n_examples=args.val_aa_n, pgd_steps=40, pgd_step_size=0.01,
                     sanity=False, progress=not args.no_progress)
    h = trainer.history
    res = {
        "label": label, "seed": seed, "recipe": r.to_dict(), "tricks": r.tricks(),
        "inner_step": trainer.method.describe(), "history": h, "train_seconds": h[-1]["train_seconds"],
        "grad_evals": h[-1]["input_grad_evals"] + h[-1]["param_grad_evals"], "final_on": "validation",
        "forward_evals": h[-1].get("forward_evals", 0),  # no-gradient passes (KL chain target), apart
        "final": {k: v for k, v in final.items() if k != "per_class"}, "square_drop": square_drop(final),
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        # the commit the run started on; a resumed run's wall_seconds, date and machine are the resuming invocation's
        **resumed_fields(resumed, args.commit),
    }
    print(f"  -> val clean {final['clean_acc']:.1f} PGD-40 {final['pgd_acc']:.1f} AA {final.get('autoattack_acc')} "
          f"Square drop {res['square_drop']} ({res['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
    return res


def markdown(runs: list[dict], args) -> str:
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    commits = sorted({r["commit"] for r in runs})
    machines = sorted({r["machine"] for r in runs})
    lines = [
        "<!-- mnist-sweep -->",
        "## ATL on MNIST: the sweep that chose its defaults (validation split)",
        "",
        f"Script `benchmarks/mnist_sweep.py` ({len(runs)} runs; commits {', '.join(commits) or 'n/a'}; "
        f"{', '.join(machines) or 'n/a'}, while other work shared the 2 cores). `mnist-cnn`, l-inf eps = 0.3, ATL "
        f"T = 1 unless the variant says T 2, seed 0 unless the seed column says otherwise, trained on the first "
        f"{args.train_n} training images; judged on "
        f"the first n of the last {args.val_n} training images (never trained on; the test set is not touched): "
        "clean, PGD-40 (step 0.01) and AutoAttack 'standard'. Square drop = points Square removed after the "
        "white-box attacks. Sorted by validation AutoAttack accuracy.",
        "",
        "| variant | seed | tricks | epochs | val n | val clean % | val PGD-40 % | val AutoAttack % | Square drop | "
        "train s | grad evals |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: -(r["final"].get("autoattack_acc") or r["final"]["pgd_acc"])):
        tricks = Recipe.from_dict(r["recipe"]).tricks()  # today's wording (older runs stored fewer chain options)
        lines.append(f"| {r['label']} | {r['seed']} | {', '.join(tricks) or 'none'} | {r['recipe']['epochs']} | "
                     f"{r['final']['n_examples']} | "
                     f"{f(r['final']['clean_acc'])} | "
                     f"{f(r['final']['pgd_acc'])} | {f(r['final'].get('autoattack_acc'))} | "
                     f"{f(r['square_drop'], 2)} | {f(r['train_seconds'], 0)} | {r['grad_evals'] / 1e6:.2f} M |")
    lines += seed_means(runs)
    lines.append("<!-- /mnist-sweep -->")
    return "\n".join(lines) + "\n"


def report(out: Path, args) -> str:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("sweep-*.json"))]
    section = markdown(runs, args)
    (out / "sweep.md").write_text(section)
    md = Path(args.benchmarks_md) if args.benchmarks_md else (None if args.quick else ROOT / "BENCHMARKS.md")
    if md is not None:
        replace_section(md, "mnist-sweep", section)
    return section


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", help="';'-separated labels of VARIANTS (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the recipe's 20 epochs")
    p.add_argument("--train-n", type=int, default=55000)
    p.add_argument("--val-n", type=int, default=5000)
    p.add_argument("--val-aa-n", type=int, default=1000)
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny slices, 1 epoch")
    p.add_argument("--force", action="store_true", help="rerun variants that already have a result")
    p.add_argument("--report", action="store_true", help="rebuild the tables from the saved runs only")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="default benchmarks/results/mnist")
    p.add_argument("--benchmarks-md")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.no_progress:  # without progress bars, one plain line per epoch (for logs written to files)
        log_epochs()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.commit = git_commit()
    if args.quick:
        args.train_n, args.val_n, args.epochs = 140, 60, args.epochs or 1
        args.val_aa_n = min(args.val_aa_n, 20)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "mnist"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    names = list(VARIANTS)
    if args.variants:
        names = [v.strip() for v in args.variants.split(";")]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            p.error(f"unknown variant labels {unknown}; known: {list(VARIANTS)}")
    if not args.report:
        full = at.load_dataset("mnist", "train", args.data_dir)
        if args.val_n < 1 or args.train_n < 1 or args.train_n + args.val_n > len(full):
            p.error(f"--train-n + --val-n must fit in the {len(full)} training images, each >= 1; got "
                    f"{args.train_n} + {args.val_n}")
        train = full.subset(args.train_n)
        val = at.IndexedDataset(full.images[-args.val_n:], full.labels[-args.val_n:], "mnist-val", full.lossy)
        for label in names:
            path = out / "runs" / f"{run_key(label, args.seed)}.json"
            partial = out / "partial" / path.stem  # the run's checkpoints while it trains (git-ignored)
            if path.is_file() and not args.force:
                training_done(partial)  # a checkpoint left by a kill between the result's write and its removal
                continue
            start = time.perf_counter()
            res = train_and_evaluate(label, VARIANTS[label], args.seed, train, val, args, partial)
            res["wall_seconds"] = time.perf_counter() - start
            at.checkpoint.atomic_write_text(json.dumps(res, indent=1), path)
            training_done(partial)
            report(out, args)
    print(report(out, args))


if __name__ == "__main__":
    main()
