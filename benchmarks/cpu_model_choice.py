"""Which CIFAR-10 model fits the CPU study: seconds per clean training epoch of each candidate, side by side.

The CIFAR study (benchmarks/cifar_study.py) needs a model that trains a clean epoch of 50,000 images in at most about
20 s on this machine. Each candidate (ours: ``small-cnn`` and its wider ``small-cnn-w<k>``, WideResNets
``wrn-<depth>-<width>``, ``preact-resnet18``) takes SGD training steps (forward, backward, step; batch 128, 32x32x3
inputs, train mode) round-robin, one step of each per round after warm-up; the median step time times 391 batches is
its clean-epoch estimate, also given as a ratio to ``small-cnn`` measured in the same rounds (the ratio is what
survives a shared CPU). With ``--accuracy-epochs N`` each candidate under ``--budget`` seconds per epoch also trains
clean for N epochs on the CIFAR-10 lossy copy with the study's settings (SGD one-cycle LR peak 0.05, crop + flip) and
reports its clean test accuracy on 1,000 images.

    python benchmarks/cpu_model_choice.py --threads 2        # writes benchmarks/results/cpu_model_choice.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

import adv_transport as at
from adv_transport.eval import evaluate
from adv_transport.models import build_model

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ("small-cnn", "small-cnn-w2", "small-cnn-w3", "wrn-10-1", "wrn-16-1", "wrn-10-2", "wrn-16-2",
              "preact-resnet18")
BATCHES_PER_EPOCH = 391  # 50,000 images in batches of 128


def time_steps(names, rounds: int, warmup: int, batch: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models = {n: build_model(n, "cifar10").train() for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for n, m in models.items():
            start = time.perf_counter()
            opts[n].zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opts[n].step()
            if r >= warmup:
                times[n].append(time.perf_counter() - start)
    return times


def clean_accuracy(name: str, epochs: int, data_dir) -> float:
    from adv_transport.recipes import recipe
    from adv_transport.training import build_training

    train = at.load_dataset("cifar10", "train", data_dir)
    test = at.load_dataset("cifar10", "test", data_dir)
    r = recipe("clean", "cifar10").replace(model=name, epochs=epochs, lr=0.05)
    trainer, batches = build_training(r, train, None, seed=0, progress=False)
    trainer.fit(batches, epochs)
    model = trainer.final_model().eval()
    threat = at.ThreatModel("linf", 8 / 255)
    return evaluate(model, test, threat, ["clean"], n_examples=1000, sanity=False, progress=False)["clean_acc"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CANDIDATES))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per clean epoch the study can afford")
    ap.add_argument("--accuracy-epochs", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--conditions", default="", help="what else ran on the machine (written into the table)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_model_choice"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",")]
    if "small-cnn" not in names:
        names.insert(0, "small-cnn")
    times = time_steps(names, args.rounds, args.warmup, args.batch)
    base = statistics.median(times["small-cnn"])
    rows = []
    for n in names:
        med = statistics.median(times[n])
        model = build_model(n, "cifar10")
        row = {"model": n, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "step_s": med,
               "epoch_s": med * BATCHES_PER_EPOCH, "vs_small_cnn": med / base}
        if args.accuracy_epochs and row["epoch_s"] <= args.budget:
            row["clean_acc"] = clean_accuracy(n, args.accuracy_epochs, args.data_dir)
        rows.append(row)
        print(row, flush=True)
    meta = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
            "rounds": args.rounds, "batch": args.batch, "budget_s": args.budget, "conditions": args.conditions,
            "accuracy_epochs": args.accuracy_epochs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Measured {meta['date']} on {meta['machine']} ({args.conditions or 'conditions not given'}); median of "
             f"{args.rounds} SGD steps of batch {args.batch}, 32x32x3, train mode; epoch = {BATCHES_PER_EPOCH} steps.",
             "", "| model | params (M) | s per step | s per clean epoch (est.) | vs small-cnn | within "
             f"{args.budget:g} s | clean test % ({args.accuracy_epochs} epochs) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        acc = f"{r['clean_acc']:.1f}" if "clean_acc" in r else "not trained"
        lines.append(f"| {r['model']} | {r['params_M']:.2f} | {r['step_s']:.3f} | {r['epoch_s']:.0f} | "
                     f"{r['vs_small_cnn']:.1f}x | {'yes' if r['epoch_s'] <= args.budget else 'no'} | {acc} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
