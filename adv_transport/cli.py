"""Command line: adv-transport train | eval | submit | demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import typing
import warnings
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_run, previous_path, recover_checkpoint
from .data import (
    DATASET_NAMES,
    DATASETS,
    DEFAULT_IMAGE_SIZE,
    FOLDER_PREFIX,
    check_dataset_name,
    is_streamed,
    load_dataset,
)
from .distributed import add_runtime_args, runtime_from_args
from .errors import AdvTransportError, ConfigError, settings_differ
from .models import check_model_name
from .recipes import METHODS, Recipe, recipe
from .threat import HOST_NORMS, NORMS, ThreatModel, host_norm
from .trainer import Trainer, log_epochs
from .training import build_training

DATASET_HELP = f"{', '.join(DATASET_NAMES)} (an ImageFolder with train/ and val/)"


def dataset_arg(value: str) -> str:
    """argparse type of ``--dataset``: a name of :data:`adv_transport.data.DATASETS` or ``folder:<path>``."""
    try:
        return check_dataset_name(value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a dataset; accepted: {', '.join(DATASET_NAMES)}") from None


def image_size_of(dataset: str, flag: int | None) -> int:
    """The side of the images a run trains on: ``--image-size`` (streamed datasets: imagenet and folder:, default 224)
    or the dataset's own."""
    if not is_streamed(dataset):
        return DATASETS[dataset]["shape"][-1]
    return DEFAULT_IMAGE_SIZE if flag is None else int(flag)


def _device(name: str) -> torch.device:
    """``--device``: auto (cuda when available, else cpu), cpu, cuda, cuda:<index>, ...; a name torch does not know,
    or a GPU this machine does not have, is a :class:`ConfigError` before any work starts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device; accepted: auto, cpu, cuda, cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu "
                              "or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def _need(ok: bool, flag: str, value, accepted: str) -> None:
    """A :class:`ConfigError` ``--<flag> <value> is not accepted; <accepted>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"--{flag} {value!r} is not accepted; {accepted}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v, flag: str, least: int = 1) -> None:
    """``--flag`` must be an integer >= ``least``."""
    _need(isinstance(v, int) and v >= least, flag, v, f"accepted: an integer >= {least}")


def _out_folder(path: Path, flag: str = "out") -> Path:
    """``--out`` must name a folder (existing or not), not a file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--{flag} {path} is a file, not a folder; choose a folder (nothing was written)")
    return path


def recipe_fields() -> list[dataclasses.Field]:
    """The :class:`~adv_transport.recipes.Recipe` fields ``adv-transport train`` has a flag for (``--batch-size`` for
    ``batch_size``): the flags are derived from the dataclass, its types, help texts and choices."""
    return [f for f in dataclasses.fields(Recipe) if f.metadata.get("cli")]


def _flag_type(annotation) -> type:
    """``int`` for ``int | None``, ``float`` for ``float``, ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """One flag per field of :func:`recipe_fields`; unset flags keep the recipe's value."""
    hints = typing.get_type_hints(Recipe)
    for f in recipe_fields():
        flag, kind = "--" + f.name.replace("_", "-"), _flag_type(hints[f.name])
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            p.add_argument(flag, type=kind, choices=f.metadata.get("choices"), help=f.metadata["help"])


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="atl", help="inner step (default: atl)")
    p.add_argument("--dataset", type=dataset_arg, default="mnist", help=DATASET_HELP + " (default: mnist)")
    p.add_argument("--image-size", type=int, help="imagenet and folder: datasets: resize and centre-crop to this side")
    p.add_argument("--workers", type=int, help="imagenet and folder: datasets: DataLoader worker processes")
    add_recipe_args(p)
    p.add_argument("--train-subset", type=int, help="train on the first N training examples only")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out test points for the per-epoch PGD check")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and chains")
    p.add_argument("--data-dir", help="folder of .npz datasets (default $ADV_TRANSPORT_DATA, else download)")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (a folder "
                   "without one: a new run starts, and says so)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--checkpoint-epochs", type=int, default=1, help="checkpoint at the end of every N epochs and of "
                   "the last (default 1; larger saves the time of writing a large in-memory bank every epoch; a "
                   "--bank-path bank is not written into checkpoints, so it gains nothing there)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars: one plain line per epoch instead")
    add_runtime_args(p)  # many GPUs (torchrun) and the fast GPU path: adv_transport.distributed


def make_recipe(args):
    r = recipe(args.method, args.dataset)
    changes = {f.name: getattr(args, f.name, None) for f in recipe_fields()}
    r = r.replace(**changes)  # None: the recipe's value
    check_recipe(r)
    return r


def check_recipe(r) -> None:
    """Refuse settings no run can use (``--epochs 0``, ``--lr nan``, an unknown timm model, ...) with one line each,
    before any data is read."""
    for flag in ("epochs", "batch_size", "copies", "replay"):
        _count(getattr(r, flag), flag.replace("_", "-"))
    _need(r.reset_every is None or (isinstance(r.reset_every, int) and r.reset_every >= 0), "reset-every",
          r.reset_every, "accepted: an integer >= 0 (0: never)")
    _need(r.steps is None or r.steps >= 1, "steps", r.steps, "accepted: an integer >= 1")
    _need(_finite(r.lr) and r.lr > 0, "lr", r.lr, "accepted: a finite number > 0")
    for flag in ("step_size", "eta"):
        v = getattr(r, flag)
        _need(v is None or (_finite(v) and v > 0), flag.replace("_", "-"), v, "accepted: a finite number > 0")
    for flag in ("weight_decay", "clean_weight", "noise_scale", "eps_ramp", "momentum", "consistency", "trades_beta",
                 "pgi_lam", "pgi_decay"):
        v = getattr(r, flag)
        _need(_finite(v) and v >= 0, flag.replace("_", "-"), v, "accepted: a finite number >= 0")
    _need(_finite(r.noise_mult) and r.noise_mult > 0, "noise-mult", r.noise_mult, "accepted: a finite number > 0")
    _need(_finite(r.ema_decay) and 0 <= r.ema_decay < 1, "ema-decay", r.ema_decay,
          "accepted: a number in [0, 1); 0 turns weight averaging off")
    _need(_finite(r.pct_start) and 0 < r.pct_start < 1, "pct-start", r.pct_start, "accepted: a number in (0, 1)")
    _need(r.copy_select == "random" or r.copies >= 2, "copy-select", r.copy_select,
          f"it chooses among an example's chains: it needs --copies >= 2 (this recipe has {r.copies})")
    for flag in ("label_smoothing", "chain_momentum"):
        v = getattr(r, flag)
        _need(_finite(v) and 0 <= v < 1, flag.replace("_", "-"), v, "accepted: a number in [0, 1); 0 turns it off")
    try:
        ThreatModel(r.norm, r.eps)  # eps: finite, > 0, < 1 for l-inf
    except ConfigError as e:
        raise ConfigError(f"--eps {r.eps!r} is not accepted: {e}") from None
    check_model_name(r.model)
    if r.model.startswith("timm:"):
        try:
            from .plugins.timm import check_model_name as check_timm_name
        except ImportError as e:
            raise ConfigError(f"--model {r.model} needs timm ({e}); pip install 'adv-transport[plugins]'") from None
        check_timm_name(r.model[len("timm:") :])


def _default_out(r) -> Path:
    name = r.dataset
    if name.startswith(FOLDER_PREFIX):
        name = "folder-" + (Path(name[len(FOLDER_PREFIX) :]).expanduser().resolve().name or "data")
    return Path(f"runs/{name}-{r.method}")


def check_train_args(args) -> None:
    """The run's own flags (beside the recipe's), refused with one line each before any data is read."""
    _count(args.eval_n, "eval-n")
    if args.train_subset is not None:
        _count(args.train_subset, "train-subset")
    _count(args.checkpoint_every, "checkpoint-every", least=0)
    _count(getattr(args, "checkpoint_epochs", 1), "checkpoint-epochs")
    if getattr(args, "sync_every", None) is not None:  # 0 would otherwise read as "not given"
        _count(args.sync_every, "sync-every")
    if args.out:
        _out_folder(Path(args.out))
    _device(args.device)


def run_train(args) -> Trainer:
    r = make_recipe(args)
    check_train_args(args)
    threat = ThreatModel(r.norm, r.eps)
    runtime = runtime_from_args(args, args.device, args.seed)  # under torchrun: joins the process group
    try:
        return _run_train(args, r, threat, runtime)
    finally:
        if runtime is not None:
            runtime.close()


def _run_train(args, r, threat, runtime) -> Trainer:
    device = _device(args.device) if runtime is None else runtime.device
    main_rank = runtime is None or runtime.is_main  # rank 0 alone prints and repairs files

    def say(text: str) -> None:
        if main_rank:
            print(text, file=sys.stderr)

    if args.no_progress:  # without progress bars, one plain line per epoch (for logs written to files)
        log_epochs()
    out = Path(args.out or _default_out(r))
    ckpt = out / "checkpoint.pt"
    image_size = image_size_of(r.dataset, getattr(args, "image_size", None))
    config = {
        "recipe": r.to_dict(),
        "seed": args.seed,
        "train_subset": args.train_subset,
        "eval_n": args.eval_n,
        "image_size": image_size,
    }
    if runtime is not None:
        config["runtime"] = {"world_size": runtime.world_size, "amp": runtime.amp, "bank_device": runtime.bank_device,
                             "channels_last": runtime.channels_last, "compile": runtime.compile,
                             "sync_bn": runtime.sync_bn, "bank_path": runtime.bank_path}
    if ckpt.is_file() or previous_path(ckpt).is_file():
        if not args.resume:
            raise ConfigError(
                f"{out} already holds a checkpoint; pass --resume to continue it, or choose another "
                "--out (nothing was overwritten)"
            )
        note = recover_checkpoint(out) if main_rank else None  # a corrupt checkpoint.pt: use the previous one
        if runtime is not None:
            runtime.barrier()
        if note:
            say(f"adv-transport train: {note}")
        # its config only: mapped, not read (recover_checkpoint above has read the file through to check it;
        # Trainer.resume reads it to load it)
        stored = load_checkpoint(ckpt, fallback=False, mmap=True).get("config", {})
        keys = ("seed", "train_subset") + (("image_size",) if "image_size" in stored else ())
        differ = settings_differ(
            f"cannot resume {ckpt}",
            {**Recipe.from_dict(stored.get("recipe", {})).to_dict(), **{k: stored.get(k) for k in keys}},
            {**config["recipe"], **{k: config[k] for k in keys}},
            advice="Resume with the stored settings or choose another --out; the checkpoint was left as it is.",
        )
        if differ:
            raise ConfigError(differ)
    else:
        banked = runtime is not None and runtime.bank_path and r.method in ("atl", "free-atl", "atta")
        if banked and Path(runtime.bank_file()).exists():
            raise ConfigError(
                f"the bank file {runtime.bank_file()} already exists and {out} holds no checkpoint to resume: remove "
                "it or choose another --bank-path (nothing was overwritten)"
            )
        if args.resume and not getattr(args, "demo", False):  # a job that always passes --resume, or a typo in --out
            say(f"adv-transport train: --resume: {out} holds no checkpoint; starting a new run there")
    size = image_size if is_streamed(r.dataset) else None
    workers = getattr(args, "workers", None)
    train = load_dataset(r.dataset, "train", args.data_dir, image_size=size, num_workers=workers)
    train = train.subset(args.train_subset)
    test = load_dataset(r.dataset, "test", args.data_dir, image_size=size, num_workers=workers)
    config.update(num_classes=train.num_classes, shape=list(train.shape))
    trainer, batches = build_training(
        r,
        train,
        test,
        seed=args.seed,
        device=device,
        eval_n=args.eval_n,
        run_dir=out,
        checkpoint_every=args.checkpoint_every,
        checkpoint_epochs=getattr(args, "checkpoint_epochs", 1),
        progress=not args.no_progress,
        config=config,
        runtime=runtime,
    )
    method = trainer.method
    if args.resume and trainer.resume():
        say(f"resumed {ckpt} at epoch {trainer.epoch} step {trainer.step}")
    ranks = "" if runtime is None or not runtime.distributed else f" on {runtime.world_size} ranks"
    say(
        f"training {r.method} on {r.dataset} ({len(train)} examples){ranks}, model {r.model}, {threat.norm} "
        f"eps={r.eps:.4g}, {r.epochs} epochs -> {out}"
    )
    if hasattr(method, "bank"):
        say(f"bank: {method.bank}" + (" (this rank's shard)" if ranks else ""))
    start = time.perf_counter()
    trainer.fit(batches, r.epochs)
    last = trainer.history[-1]
    say(
        f"done in {time.perf_counter() - start:.0f} s: clean {last['clean_acc']:.1f} %, PGD-{last['eval_pgd_steps']} "
        f"{last['pgd_acc']:.1f} % on the first {last['eval_n']} test points; log {trainer.log_path}"
    )
    return trainer


def run_eval(args) -> dict:
    from .eval import evaluate, pgd_defaults
    from .eval.report import to_markdown, write_report

    _count(args.n_examples, "n-examples")
    _count(args.batch_size, "batch-size")
    _count(args.pgd_restarts, "pgd-restarts")
    if args.pgd_steps is not None:
        _count(args.pgd_steps, "pgd-steps")
    if args.pgd_step_size is not None:
        _need(_finite(args.pgd_step_size) and args.pgd_step_size > 0, "pgd-step-size", args.pgd_step_size,
              "accepted: a finite number > 0")
    device = _device(args.device)
    run = load_run(args.checkpoint, device)
    r, model = run.recipe, run.model
    dataset = args.dataset or r["dataset"]
    if dataset != r["dataset"]:
        raise ConfigError(f"the checkpoint was trained on {r['dataset']}, not {dataset}")
    threat = ThreatModel(args.norm or r["norm"], args.eps if args.eps is not None else r["eps"])
    size = run.config.get("image_size") if is_streamed(dataset) else None
    test = load_dataset(dataset, "test", args.data_dir, image_size=size, num_workers=args.workers)
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
        pgd_steps=steps if args.pgd_steps is None else args.pgd_steps,
        pgd_step_size=step_size if args.pgd_step_size is None else args.pgd_step_size,
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
        epochs_trained=run.epoch,
    )
    stem = report_stem(folder, report)
    title = f"{r['method']} / {r['model']} on {dataset}"
    print(to_markdown(report, title))
    js, md = write_report(report, stem, title)
    print(f"wrote {js} and {md}", file=sys.stderr)
    return report


def _free_stem(folder: Path, base: str) -> Path:
    """``folder / base``, or ``base-2``, ``base-3``, ... when a report of that name is already there."""
    stem, k = folder / base, 1
    while stem.with_name(stem.name + ".json").exists() or stem.with_name(stem.name + ".md").exists():
        k += 1
        stem = folder / f"{base}-{k}"
    return stem


def report_stem(folder: Path, report: dict) -> Path:
    """Where an evaluation's report goes: ``eval`` (``eval.json``, which ``load_run`` and ``submit`` read), unless the
    ``eval.json`` already there is of the same weights and threat and covers more (at least as many test points and
    every attack of this one; a quick check after the full evaluation): then ``eval-n<N>-<attacks>``, and the fuller
    report stays. An ``eval.json`` this one replaces (other weights, another threat, or one that does not cover this
    one) is moved aside to ``eval-n<N>-<attacks>`` with its own numbers, not overwritten."""
    stored_path = folder / "eval.json"
    if not stored_path.is_file():
        return folder / "eval"
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError):
        stored = None
    n, attacks = report["n_examples"], list(report["attacks"])
    valid = (isinstance(stored, dict) and isinstance(stored.get("n_examples"), int)
             and isinstance(stored.get("attacks"), list))
    same_threat = valid and all(stored.get(k) == report.get(k) for k in ("model_fingerprint", "eps", "norm"))
    if valid and same_threat:
        covers = stored["n_examples"] >= n and set(stored["attacks"]) >= set(attacks)
        if (stored["n_examples"], set(stored["attacks"])) == (n, set(attacks)):
            return folder / "eval"  # the same evaluation again: it replaces itself
        if covers:
            stem = _free_stem(folder, f"eval-n{n}-{'+'.join(attacks)}")
            kept = f"the same weights, {stored['n_examples']} test points, {', '.join(stored['attacks'])}"
            print(f"{stored_path} ({kept}) covers this evaluation and is kept; this one goes to {stem.name}.json",
                  file=sys.stderr)
            return stem
    base = f"eval-n{stored['n_examples']}-{'+'.join(stored['attacks'])}" if valid else "eval-unreadable"
    aside = _free_stem(folder, base)
    for suffix in (".json", ".md"):
        old = folder / f"eval{suffix}"
        if old.is_file():
            os.replace(old, aside.with_name(aside.name + suffix))
    why = "other weights or another threat" if valid and not same_threat else "a report this one does not cover"
    print(f"moved the earlier {stored_path.name} ({why}) to {aside.name}.json", file=sys.stderr)
    return folder / "eval"


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run folder")
    p.add_argument("--dataset", type=dataset_arg, help="the checkpoint's own dataset (the default; another one is "
                   "refused): " + DATASET_HELP)
    p.add_argument("--workers", type=int, help="imagenet and folder: datasets: DataLoader worker processes")
    p.add_argument(
        "--attacks",
        default="clean,fgsm,pgd",
        help="comma-separated: clean, fgsm, pgd, autoattack (pyautoattack 'standard'), autoattack-rand",
    )
    p.add_argument("--n-examples", type=int, default=1000, help="the first N test points (default 1000; RobustBench "
                   "reports all 10000)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default 500)")
    p.add_argument("--eps", type=float, help="threat radius (default: the checkpoint's)")
    p.add_argument("--norm", choices=NORMS, help="threat norm (default: the checkpoint's)")
    p.add_argument("--pgd-steps", type=int, help="PGD steps (default: 40 on MNIST, 20 elsewhere)")
    p.add_argument("--pgd-step-size", type=float,
                   help="PGD step (default: 0.01 on MNIST, 2/255 for l-inf and eps/4 for l2 elsewhere)")
    p.add_argument("--pgd-restarts", type=int, default=1, help="PGD random restarts (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts and of AutoAttack")
    p.add_argument("--data-dir", help="folder of .npz datasets (default $ADV_TRANSPORT_DATA, else download)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args) -> None:
    """The main job: ATL on MNIST with the documented defaults, evaluation, table and plot."""
    from .eval import ATTACKS
    from .plots import plot_history

    unknown = [a for a in (a.strip() for a in args.attacks.split(",")) if a and a not in ATTACKS]
    if unknown:  # before training, not after it
        raise ConfigError(f"--attacks: unknown attack(s) {unknown}; accepted: {', '.join(ATTACKS)}")
    train_args = argparse.Namespace(**{**vars(args), "method": "atl", "dataset": "mnist", "resume": True, "demo": True})
    for k in [f.name for f in recipe_fields()] + ["train_subset"]:
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

    if args.reported is not None:
        _need(_finite(args.reported) and 0 <= args.reported <= 100, "reported", args.reported,
              "accepted: an accuracy in % between 0 and 100")
    out = _out_folder(Path(args.out))
    run = load_run(args.checkpoint)
    if run.evaluation is None:
        print(
            f"no eval.json next to {run.checkpoint}: the card's accuracies stay empty (run adv-transport eval first)",
            file=sys.stderr,
        )
    card = {
        k: v
        for k, v in (("authors", args.authors), ("link", args.link), ("venue", args.venue), ("name", args.title))
        if v
    }
    if args.reported is not None:
        card["reported"] = f"{args.reported:.2f}"
    dataset = args.dataset or run.recipe.get("dataset")
    threat_model = args.threat_model or host_norm(run.recipe.get("norm", "linf"))
    card_file = out / "model_info" / str(dataset) / str(threat_model) / f"{args.name}.json"
    if card_file.exists():
        raise ConfigError(f"{card_file} already exists: remove it or choose another --out or --name (nothing was "
                          "overwritten)")
    paths = export_submission(run, args.name, dataset, threat_model, out, report=run.evaluation, card=card)
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
    p.add_argument("--dataset", type=dataset_arg, help="the checkpoint's own dataset (the default; another one is "
                   "refused), one with a RobustBench leaderboard")
    p.add_argument(
        "--threat-model", choices=tuple(HOST_NORMS.values()),
        help="as RobustBench spells it; the run's own norm (the default; another one is refused)"
    )
    p.add_argument("--out", default="submission", help="folder receiving models/, model_info/, model_zoo_entry.py")
    p.add_argument("--authors", help="the card's 'authors' field")
    p.add_argument("--link", help="the card's 'link' field (the paper's URL)")
    p.add_argument("--venue", help="the card's 'venue' field")
    p.add_argument("--title", required=True, help="the paper's title: the card's 'name' field")
    p.add_argument("--reported", type=float, help="robust accuracy (%%) reported in the paper: the card's 'reported'")
    p = sub.add_parser("demo", help="train ATL on MNIST, evaluate, print the table, plot (the README's main job)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the MNIST recipe's, 12)")
    p.add_argument("--train-subset", type=int, help="train on the first N training examples only")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out test points for the per-epoch PGD check")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and chains")
    p.add_argument("--data-dir", help="folder of .npz datasets (default $ADV_TRANSPORT_DATA, else download)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo; resumed from its checkpoint)")
    p.add_argument("--attacks", default="clean,fgsm,pgd,autoattack", help="attacks of the final evaluation")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars: one plain line per epoch instead")
    return parser


def _one_line_warnings(command: str):
    """``warnings.showwarning`` for the command line: one line per warning, ``adv-transport <command>: <Category>:
    <message>``, without the file, line number and source line Python prints by default."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"adv-transport {command}: {category.__name__}: {message}", file=sys.stderr if file is None else file)

    return show


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores Python's own warning display when the command returns
        warnings.showwarning = _one_line_warnings(args.command)
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
