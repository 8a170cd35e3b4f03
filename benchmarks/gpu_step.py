"""Time per training step of PreAct-ResNet-18 on CIFAR-sized batches: clean, ATL (T = 1) and FGSM-RS through the same
Trainer step, with ATL's bank bookkeeping (reading the batch's rows, writing them back) reported as a share of its
step. The targets: bank bookkeeping <= 5 % of an ATL step, an ATL step <= 2.2x a clean step.

Every method gets the same model (fresh weights), SGD (momentum 0.9, weight decay 5e-4), crop + flip after delta and
the same batches, staged on the device before timing. Each round times ``--steps`` steps of every method in turn
(after ``--warmup`` steps); the median over ``--rounds`` rounds is reported. The bookkeeping is timed with CUDA events
around the bank's read and write (on the CPU: wall clock), the steps with the wall clock between two synchronisations.

    python benchmarks/gpu_step.py --amp bf16 --channels-last                 # on a GPU; --out to write json + md
    python benchmarks/gpu_step.py --amp bf16 --channels-last --compile --bank-device cpu
    python benchmarks/gpu_step.py --device cpu --quick                       # smoke test of the script itself
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

from adv_transport import ATL, FGSMRS, Clean, LangevinSampler, RandomCropFlip, ThreatModel, Trainer
from adv_transport.data import IndexedBatches, IndexedDataset
from adv_transport.distributed import Runtime
from adv_transport.models import build_model

EPS = 8 / 255


class Timer:
    """Accumulated time of the wrapped calls: CUDA events on a GPU, the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: list = []
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(*a, **k)
                end.record()
                self.pairs.append((start, end))
                return out
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self.seconds += time.perf_counter() - t0
            return out

        return timed

    def total(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            self.seconds += sum(s.elapsed_time(e) for s, e in self.pairs) / 1000
            self.pairs.clear()
        return self.seconds

    def reset(self):
        self.total()
        self.seconds = 0.0


def build(method: str, args, data, device):
    rt = Runtime(device=device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                 bank_device=args.bank_device if device.type == "cuda" else "cpu", sync_every=10**9,
                 keyed=args.keyed, seed=0)
    torch.manual_seed(0)
    model = rt.prepare_model(build_model("preact-resnet18", "cifar10"))
    threat = ThreatModel("linf", EPS)
    timer = None
    if method == "atl":
        bank = rt.bank(len(data), data.shape, threat, dtype=args.bank_dtype, init="uniform")
        timer = Timer(device)
        bank.read, bank.write = timer.wrap(bank.read), timer.wrap(bank.write)
        inner = ATL(bank, LangevinSampler(threat, eta=EPS / 2, noise_scale=0.2, steps=1))
    elif method == "fgsm-rs":
        inner = FGSMRS(threat)
    else:
        inner = Clean()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    trainer = Trainer(model, opt, inner, augment=RandomCropFlip(4), progress=False, runtime=rt)
    trainer._train_modes = None
    return trainer, timer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--examples", type=int, default=50_000, help="bank rows (CIFAR-10: 50,000)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--bank-device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--bank-dtype", choices=("float32", "float16", "int8"), default="int8")
    ap.add_argument("--keyed", action=argparse.BooleanOptionalAction, default=True,
                    help="per-example random numbers, as in distributed runs (default on)")
    ap.add_argument("--methods", default="clean,atl,fgsm-rs")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--out", help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_size, args.examples, args.steps, args.warmup, args.rounds = 8, 64, 2, 1, 1
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.examples, 3, 32, 32), dtype=torch.uint8, generator=g)
    data = IndexedDataset(images, torch.randint(0, 10, (args.examples,), generator=g), name="cifar10")
    n_batches = args.warmup + args.steps
    batches = list(IndexedBatches(data, args.batch_size, seed=1, device=device).iterate(0))[:n_batches]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    built = {m: build(m, args, data, device) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    book: list[float] = []
    for _ in range(args.rounds):
        for m in methods:
            trainer, timer = built[m]
            for i, (x, y, idx) in enumerate(batches):
                if i == args.warmup:
                    sync(device)
                    if timer is not None:
                        timer.reset()
                    start = time.perf_counter()
                trainer.model.train()
                trainer._train_step(x, y, idx, 1.0)
            sync(device)
            per_step = (time.perf_counter() - start) / args.steps
            times[m].append(per_step)
            if timer is not None:
                book.append(timer.total() / args.steps)
    med = {m: statistics.median(v) for m, v in times.items()}
    rows = {m: {"ms_per_step": 1000 * med[m], "x_clean": med[m] / med["clean"] if "clean" in med else None}
            for m in methods}
    result = {
        "date": str(date.today()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "methods": rows,
    }
    if "atl" in med and book:
        share = statistics.median(book) / med["atl"]
        result["atl_bank_bookkeeping"] = {"ms_per_step": 1000 * statistics.median(book), "share_of_atl_step": share}
    lines = [f"PreAct-ResNet-18, batch {args.batch_size}, {result['device']}, torch {torch.__version__}, amp "
             f"{args.amp}, channels-last {args.channels_last}, compile {args.compile}, bank {args.bank_dtype} on "
             f"{args.bank_device}", "", "| method | ms / step | x clean |", "|---|---:|---:|"]
    for m, r in rows.items():
        ratio = "" if r["x_clean"] is None else f"{r['x_clean']:.2f}"
        lines.append(f"| {m} | {r['ms_per_step']:.2f} | {ratio} |")
    if "atl_bank_bookkeeping" in result:
        b = result["atl_bank_bookkeeping"]
        lines += ["", f"ATL bank bookkeeping (read + write): {b['ms_per_step']:.3f} ms per step, "
                      f"{100 * b['share_of_atl_step']:.1f} % of an ATL step (target <= 5 %); "
                      + (f"ATL step {rows['atl']['x_clean']:.2f}x clean (target <= 2.2x)" if "clean" in rows else "")]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
