"""Optimizer step time on a ResNet-18-sized set of parameters, ours against torch.optim, side by side in one run.

Every optimizer gets its own copy of the parameters of torchvision's ResNet-18 (11.7 M values in 62 tensors) and the
same fixed random gradients; steps are timed round-robin (one step of each optimizer per round, after warm-up), and
the median per optimizer is reported, with ratios to torch.optim.SGD (momentum 0.9, foreach) and torch.optim.Adam
(foreach). Targets: normalized SGD <= 1.3x SGD; AdaLR and AdaDir <= 1.3x Adam.

    python benchmarks/optim_step_time.py            # writes benchmarks/results/optim_step_time.{json,md}
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
import torchvision

from adv_transport.optim import AdaDir, AdaLR, NormalizedSGD

ROOT = Path(__file__).resolve().parent.parent

CANDIDATES = {
    "torch SGD (momentum 0.9, foreach)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
    "torch Adam (foreach)": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
    "NormalizedSGD global (momentum 0.9, foreach)": lambda p: NormalizedSGD(p, lr=0.1, momentum=0.9, foreach=True),
    "NormalizedSGD layer (momentum 0.9, foreach)": lambda p: NormalizedSGD(p, lr=0.1, momentum=0.9,
                                                                           normalize="layer", foreach=True),
    "AdaLR layer (foreach)": lambda p: AdaLR(p, lr=1e-3, foreach=True),
    "AdaDir layer (foreach)": lambda p: AdaDir(p, lr=1e-3, foreach=True),
    "NormalizedSGD global (momentum 0.9, single-tensor)": lambda p: NormalizedSGD(p, lr=0.1, momentum=0.9,
                                                                                  foreach=False),
    "AdaLR layer (single-tensor)": lambda p: AdaLR(p, lr=1e-3, foreach=False),
}
BASELINE = {"NormalizedSGD": "torch SGD (momentum 0.9, foreach)", "AdaLR": "torch Adam (foreach)",
            "AdaDir": "torch Adam (foreach)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "optim_step_time"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [p.shape for p in torchvision.models.resnet18().parameters()]
    grads = [torch.randn(s) for s in shapes]
    opts = {}
    for name, make in CANDIDATES.items():
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opts[name] = make(params)
    times = {name: [] for name in opts}
    for r in range(args.warmup + args.rounds):
        for name, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if r >= args.warmup:
                times[name].append(elapsed)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    rows = []
    for name, ms in median.items():
        family = name.split()[0]
        base = BASELINE.get(family)
        ratio = None if base is None else ms / median[base]
        rows.append({"optimizer": name, "median_ms": ms, "baseline": base, "ratio": ratio,
                     "target_met": None if ratio is None or "single-tensor" in name else ratio <= 1.3})
    meta = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "params": sum(g.numel() for g in grads),
            "tensors": len(grads), "rounds": args.rounds}
    lines = [
        "## Optimizer step time (ResNet-18-sized parameters, CPU)",
        "",
        f"Measured {meta['date']}, one run of `python benchmarks/optim_step_time.py`: torch {meta['torch']}, "
        f"{meta['threads']} threads, {meta['params'] / 1e6:.1f} M parameters in {meta['tensors']} tensors, median "
        f"of {meta['rounds']} round-robin steps.",
        "",
        "| optimizer | median step (ms) | compared with | ratio | target (<= 1.3x) |",
        "|---|---:|---|---:|---|",
    ]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        met = {None: "", True: "met", False: "**not met**"}[r["target_met"]]
        if r["ratio"] is not None and r["target_met"] is None:
            met = "(reference only)"
        lines.append(f"| {r['optimizer']} | {r['median_ms']:.1f} | {r['baseline'] or ''} | {ratio} | {met} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
