"""Command line: ``adv-transport train | eval | demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .data import load_dataset
from .errors import AdvTransportError, ConfigError
from .models import build_model
from .recipes import METHODS, build_training, recipe
from .threat import ThreatModel
from .trainer import Trainer

DATASETS = ("mnist", "cifar10")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


RECIPE_FLAGS = (
    "model",
    "eps",
    "norm",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "lr_schedule",
    "clean_weight",
    "steps",
    "step_size",
    "noise_scale",
    "noise",
    "copies",
    "bank_dtype",
    "bank_init",
    "model_mode",
    "eps_ramp",
    "noise_mult",
)


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="atl")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--model", help="mnist-cnn, preact-resnet18 or timm:<name> (default: the recipe's)")
    p.add_argument("--eps", type=float, help="threat radius (default 0.3 for MNIST, 8/255 for CIFAR-10)")
    p.add_argument("--norm", choices=("linf", "l2"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-schedule", choices=("onecycle", "constant"))
    p.add_argument("--clean-weight", type=float, help="weight of an added clean loss term")
    p.add_argument("--steps", type=int, help="Langevin steps T (atl) or PGD steps (pgd)")
    p.add_argument("--step-size", type=float, help="Langevin step eta (atl) or attack step alpha (baselines)")
    p.add_argument("--noise-scale", type=float, help="Langevin noise scale s")
    p.add_argument("--noise", choices=("uniform", "gaussian"))
    p.add_argument("--copies", type=int, help="bank copies K per example")
    p.add_argument("--bank-dtype", choices=("float32", "float16", "int8"))
    p.add_argument("--bank-init", choices=("zero", "uniform"))
    p.add_argument("--eps-ramp", type=float, help="PGD, FGSM-RS, N-FGSM: grow eps from 0 over this many epochs")
    p.add_argument("--noise-mult", type=float, help="N-FGSM: start uniform in a box of this many eps (default 2)")
    p.add_argument(
        "--model-mode",
        choices=("train", "batch-stats", "eval"),
        help="model mode during the inner step (default train; batch-stats: batch-norm running statistics untouched)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop (pad 4) and flip after adding delta (default: on for CIFAR-10)",
    )
    p.add_argument("--train-subset", type=int, help="train on the first N training examples only")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out test points for the per-epoch PGD check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder of .npz datasets (default $ADV_TRANSPORT_DATA, else download)")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")


def make_recipe(args):
    r = recipe(args.method, args.dataset)
    changes = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "augment", None) is not None:
        changes["augment"] = args.augment
    return r.replace(**changes)


def run_train(args) -> Trainer:
    r = make_recipe(args)
    threat = ThreatModel(r.norm, r.eps)
    device = _device(args.device)
    out = Path(args.out or f"runs/{r.dataset}-{r.method}")
    ckpt = out / "checkpoint.pt"
    config = {"recipe": r.to_dict(), "seed": args.seed, "train_subset": args.train_subset, "eval_n": args.eval_n}
    if ckpt.is_file():
        if not args.resume:
            raise ConfigError(
                f"{out} already holds a checkpoint; pass --resume to continue it, or choose another "
                "--out (nothing was overwritten)"
            )
        stored = load_checkpoint(ckpt).get("config", {})
        diffs = {
            k: (stored.get("recipe", {}).get(k), v)
            for k, v in config["recipe"].items()
            if stored.get("recipe", {}).get(k) != v
        }
        diffs.update({k: (stored.get(k), config[k]) for k in ("seed", "train_subset") if stored.get(k) != config[k]})
        if diffs:
            text = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diffs.items())
            raise ConfigError(
                f"cannot resume {ckpt}: the settings differ ({text}). Resume with the stored settings "
                "or choose another --out; the checkpoint was left as it is."
            )
    train = load_dataset(r.dataset, "train", args.data_dir).subset(args.train_subset)
    test = load_dataset(r.dataset, "test", args.data_dir)
    trainer, batches = build_training(r, train, test, seed=args.seed, device=device, eval_n=args.eval_n, run_dir=out,
                                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                                      config=config)
    method = trainer.method
    if args.resume and trainer.resume():
        print(f"resumed {ckpt} at epoch {trainer.epoch} step {trainer.step}", file=sys.stderr)
    print(
        f"training {r.method} on {r.dataset} ({len(train)} examples), model {r.model}, {threat.norm} eps={r.eps:.4g}, "
        f"{r.epochs} epochs -> {out}",
        file=sys.stderr,
    )
    if hasattr(method, "bank"):
        print(f"bank: {method.bank}", file=sys.stderr)
    start = time.perf_counter()
    trainer.fit(batches, r.epochs)
    last = trainer.history[-1]
    print(
        f"done in {time.perf_counter() - start:.0f} s: clean {last['clean_acc']:.1f} %, PGD-{last['eval_pgd_steps']} "
        f"{last['pgd_acc']:.1f} % on the first {last['eval_n']} test points; log {trainer.log_path}",
        file=sys.stderr,
    )
    return trainer


def run_eval(args) -> dict:
    from .eval import evaluate, pgd_defaults
    from .eval.report import to_markdown, write_report

    state = load_checkpoint(args.checkpoint)
    r = state.get("config", {}).get("recipe")
    if r is None:
        raise ConfigError(f"{args.checkpoint} holds no recipe; was it written by adv-transport train?")
    dataset = args.dataset or r["dataset"]
    if dataset != r["dataset"]:
        raise ConfigError(f"the checkpoint was trained on {r['dataset']}, not {dataset}")
    threat = ThreatModel(args.norm or r["norm"], args.eps if args.eps is not None else r["eps"])
    device = _device(args.device)
    model = build_model(r["model"], dataset)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    test = load_dataset(dataset, "test", args.data_dir)
    steps, step_size = pgd_defaults(dataset, threat)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    ckpt = Path(args.checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    report = evaluate(
        model,
        test,
        threat,
        attacks,
        n_examples=args.n_examples,
        batch_size=args.batch_size,
        pgd_steps=args.pgd_steps or steps,
        pgd_step_size=args.pgd_step_size or step_size,
        pgd_restarts=args.pgd_restarts,
        device=device,
        progress=not args.no_progress,
        seed=args.seed,
        state_path=folder / "eval.state.pt",
    )
    (folder / "eval.state.pt").unlink(missing_ok=True)  # finished: the next eval starts afresh
    report.update(
        model=r["model"],
        dataset=dataset,
        checkpoint=str(args.checkpoint),
        method=r["method"],
        lossy_data=test.lossy,
        epochs_trained=state.get("epoch"),
    )
    stem = folder / "eval"
    title = f"{r['method']} / {r['model']} on {dataset}"
    print(to_markdown(report, title))
    js, md = write_report(report, stem, title)
    print(f"wrote {js} and {md}", file=sys.stderr)
    return report


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run folder")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument(
        "--attacks",
        default="clean,fgsm,pgd",
        help="comma-separated: clean, fgsm, pgd, autoattack (pyautoattack 'standard'), autoattack-rand",
    )
    p.add_argument("--n-examples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--eps", type=float)
    p.add_argument("--norm", choices=("linf", "l2"))
    p.add_argument("--pgd-steps", type=int)
    p.add_argument("--pgd-step-size", type=float)
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of random starts and of AutoAttack")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


def run_demo(args) -> None:
    """The main job: ATL on MNIST with the documented defaults, evaluation, table and plot."""
    from .plots import plot_history

    train_args = argparse.Namespace(**{**vars(args), "method": "atl", "dataset": "mnist", "resume": True})
    for k in RECIPE_FLAGS + ("augment", "train_subset"):
        if not hasattr(train_args, k):
            setattr(train_args, k, None)
    trainer = run_train(train_args)
    out = Path(train_args.out or "runs/mnist-atl")
    argv = ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--attacks", args.attacks, "--device", args.device]
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    argv += ["--no-progress"] if args.no_progress else []
    eval_args = build_parser().parse_args(argv)
    run_eval(eval_args)
    png = plot_history(
        {"ATL": trainer.history},
        out / "training.png",
        title="ATL on MNIST, l-inf eps=0.3: accuracy on the first 1000 test images",
    )
    print(f"plot: {png}", file=sys.stderr)


def run_submit(args) -> dict:
    """Export a RobustBench submission for a checkpoint (plugins/robustbench.py)."""
    from .plugins.robustbench import export_submission

    ckpt = Path(args.checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    report = None
    if (folder / "eval.json").is_file():
        report = json.loads((folder / "eval.json").read_text())
    else:
        print(
            f"no eval.json next to {ckpt}: the card's accuracies stay empty (run adv-transport eval first)",
            file=sys.stderr,
        )
    card = {
        k: v
        for k, v in (("authors", args.authors), ("link", args.link), ("venue", args.venue), ("name", args.title))
        if v
    }
    paths = export_submission(ckpt, args.name, args.dataset, args.threat_model, args.out, report=report, card=card)
    for what, path in paths.items():
        print(f"{what}: {path}")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adv-transport", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="adversarial training (ATL or a baseline)")
    add_train_args(p)
    p = sub.add_parser("eval", help="evaluate a checkpoint under attack")
    add_eval_args(p)
    p = sub.add_parser("submit", help="export a RobustBench submission (checkpoint, model card, zoo entry)")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run folder (its eval.json fills the card)")
    p.add_argument("--name", required=True, help="<Name><Year><Word>, e.g. Doe2026Langevin")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10",))
    p.add_argument("--threat-model", default="Linf", choices=("Linf", "L2"))
    p.add_argument("--out", default="submission", help="folder receiving models/, model_info/, model_zoo_entry.py")
    p.add_argument("--authors")
    p.add_argument("--link")
    p.add_argument("--venue")
    p.add_argument("--title", help="the card's 'name' field (the paper title)")
    p = sub.add_parser("demo", help="train ATL on MNIST, evaluate, print the table, plot (the README's main job)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--attacks", default="clean,fgsm,pgd,autoattack", help="attacks of the final evaluation")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            run_train(args)
        elif args.command == "eval":
            run_eval(args)
        elif args.command == "submit":
            run_submit(args)
        else:
            run_demo(args)
    except AdvTransportError as e:
        print(f"adv-transport {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
