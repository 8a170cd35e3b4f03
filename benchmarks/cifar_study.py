"""ATL against the bank-based prior art and the fast baselines on CIFAR-10 (JPEG-lossy copy), several seeds and eps.

Two modes, one harness (every run goes through ``adv_transport.training.build_training``: same model, data order,
optimizer, schedule and seed for every method):

- ``sweep``: ATL variants (and reference rows of other methods, ``SWEEP_REFERENCES``) at eps 8/255, seed 0, judged on a
  **validation split of the training set** (the last ``--val-n`` training images, never trained on), by PGD-20 and
  AutoAttack 'standard' on ``--val-aa-n`` of them. The test set is not touched. This is how ATL's defaults are chosen.
- ``study``: every method at each ``--eps``, for each ``--seeds``, trained on the remaining training images; per epoch
  PGD-20 on ``--test-pgd-n`` test images (for the curves) and PGD-20 on the validation split (for model selection);
  at the end clean, PGD-20 and AutoAttack 'standard' (pyautoattack) on the first ``--aa-n`` class-balanced test
  images of the selected model.

Each run is saved as soon as it ends (``<out>/runs/<key>.json``) and skipped when the command is run again, so an
interrupted study resumes run by run; while a run trains, its checkpoint (bank included) is kept after every epoch in
``<out>/partial/<key>/`` (git-ignored; removed once its result is saved; `--no-checkpoints`: none), so a run cut off
part-way continues from its last finished epoch. ``<out>/study.json`` (per eps and method: per-seed and mean AutoAttack
accuracy, training seconds, gradient evaluations), ``<out>/study.png`` (per-epoch curves),
``<out>/study_autoattack.png`` (final AutoAttack per method and seed, with the targets' bars) and a BENCHMARKS.md
section are rebuilt from
whatever runs exist (``report`` rebuilds them without training).

    python benchmarks/cifar_study.py sweep  --data-dir ../shared/data
    python benchmarks/cifar_study.py sweep  --seeds 1,2 --methods "eta 1.25 eps, s 0.05, consistency 10"  # more seeds
    python benchmarks/cifar_study.py study  --data-dir ../shared/data --eps 8,16 --seeds 0,1,2
    python benchmarks/cifar_study.py study  --methods "ATL;PGD-10 AT"       # a subset (labels separated by ';')
    python benchmarks/cifar_study.py report
    python benchmarks/cifar_study.py study --model small-cnn-w2 --out benchmarks/results/cifar10-small-cnn-w2 \
        --seeds 0 --methods "ATL;FGSM-PGI;N-FGSM"      # another model: its own folder and BENCHMARKS section
    python benchmarks/cifar_study.py study --quick --out /tmp/q     # smoke test (tiny slices), under a minute

The lossy copy is for relative comparisons between training methods only: never compare its numbers with published
CIFAR-10 results.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from datetime import date
from pathlib import Path

import torch

import adv_transport as at
from adv_transport.eval import evaluate
from adv_transport.recipes import Recipe, recipe
from adv_transport.trainer import log_epochs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402, F401 - shared
    PREVIOUS_ATL,
    git_commit,
    mean_std,
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
LOSSY_LABEL = (
    "relative comparison on the JPEG-lossy CIFAR-10 copy (../shared/data/cifar10_jpeg_lossy.npz): not comparable "
    "with published CIFAR-10 numbers"
)
EPS8 = 8 / 255
# Settings shared by every method of the study (fixed before any result was seen): the small CNN, SGD with a one-cycle
# LR (peak 0.05, the CPU benchmark's), crop + flip after delta, 15 epochs, eps warm-up over the first 5 epochs (without
# it PGD-10 AT and FGSM-RS stayed at chance on this model), and the epoch with the best validation PGD-20 accuracy
# is the one evaluated.
COMMON = dict(model="small-cnn", epochs=15, lr=0.05, eps_ramp=5, select="best")

# label -> (method, recipe changes at eps 8/255; step sizes scale with eps)
STUDY_METHODS = {
    "clean": ("clean", {"eps_ramp": 0}),
    # ATL's default: since the twelfth sweep round, two chains per example and weight averaging (EMA 0.999); run as
    # the row "ATL (K 2) + EMA" before it became the default (its records were relabelled, their recipes unchanged)
    "ATL": ("atl", {}),
    # ATL within the budget of the target "PGD-10 AT - 1 point at <= 1/4 of its training time": 15 epochs of ATL cost
    # 0.27x PGD-10 AT's gradient evaluations (0.26x its wall-clock per batch, benchmarks/epoch_cost.py); 13 epochs
    # cost 13 * 3 / (15 * 11) = 0.236x (the epoch count follows from the budget, it was not tuned)
    "ATL (13 epochs)": ("atl", {"epochs": 13}),
    # the thirteenth sweep round's K 4 (with the default's EMA): 30.13 % validation AutoAttack over seeds 0-2, over that
    # round's bar (the FGSM-PGI + EMA reference's 29.0 % + 1), so it goes to the test study; it ties K 2 on validation
    # (30.13 %) at twice the bank, so K 2 stays the default unless K 4's test row is higher
    "ATL (K 4)": ("atl", {"copies": 4}),
    # the previous default (one chain, no weight averaging; the rows "ATL", "ATL (13 epochs)" and "ATL + EMA" until
    # the default changed), kept as run
    "ATL (K 1, no EMA)": ("atl", PREVIOUS_ATL),
    "ATL (K 1, no EMA, 13 epochs)": ("atl", {**PREVIOUS_ATL, "epochs": 13}),
    # weight averaging (the fourth sweep round's EMA 0.999), for ATL and the two best single-step methods beside it
    "ATL (K 1) + EMA": ("atl", {**PREVIOUS_ATL, "ema_decay": 0.999}),
    "FGSM-PGI + EMA": ("fgsm-pgi", {"ema_decay": 0.999}),
    "N-FGSM + EMA": ("n-fgsm", {"ema_decay": 0.999}),
    "FGSM-RS": ("fgsm-rs", {"early_stop_drop": 20.0}),  # Wong et al. 2020's early stopping
    "N-FGSM": ("n-fgsm", {}),
    "FGSM-PGI": ("fgsm-pgi", {}),
    "ATTA": ("atta", {}),
    "PGD-10 AT": ("pgd", {"steps": 10, "step_size": 2 / 255}),
    # free ATL (one backward per batch): as is, and with Free-AT's replay (each batch 4 times in a row, epochs / 4)
    "Free ATL": ("free-atl", {}),
    "Free ATL (replay 4)": ("free-atl", {"replay": 4, "epochs": 4, "eps_ramp": 1.25}),
}
SINGLE_STEP_METHODS = ("fgsm-rs", "n-fgsm", "fgsm-pgi", "atta")  # the inner steps at single-step cost
NORMS_OF = {"fgsm-pgi": ("linf",)}  # methods defined for some norms only (FGSM-PGI's prior is a sign step)

# ATL variants of the sweep: label -> recipe changes (eta relative to eps; s = noise scale, noise amplitude
# s * sqrt(2 eta) per coordinate), on top of ATL's default before K 2 + EMA (PREVIOUS_ATL). The first two rounds ran
# before the consistency term was in the default, so their labels name what differed then; every record holds the
# recipe it ran
SWEEP = {
    "old default (eta eps/2, s 0.2, no warm-up)": {"eta": EPS8 / 2, "noise_scale": 0.2, "eps_ramp": 0},
    "eta eps/2, s 0.2": {"eta": EPS8 / 2, "noise_scale": 0.2},
    "eta eps/2, s 0.1": {"eta": EPS8 / 2, "noise_scale": 0.1},
    "eta eps/2, s 0.05": {"eta": EPS8 / 2, "noise_scale": 0.05},
    "eta eps/2, s 0": {"eta": EPS8 / 2, "noise_scale": 0.0},
    "eta eps, s 0.05": {"eta": EPS8, "noise_scale": 0.05},
    "eta 1.25 eps, s 0.05": {"eta": 1.25 * EPS8, "noise_scale": 0.05},
    "eta eps/4, s 0.05": {"eta": EPS8 / 4, "noise_scale": 0.05},
    "eta eps/2, s 0.05, BN eval in the chain": {"eta": EPS8 / 2, "noise_scale": 0.05, "model_mode": "eval"},
    "eta eps/2, s 0.05/sqrt(3), Gaussian": {"eta": EPS8 / 2, "noise_scale": 0.05 / 3**0.5, "noise": "gaussian"},
    "eta eps/2, s 0.05, reset every 5 ep": {"eta": EPS8 / 2, "noise_scale": 0.05, "reset_every": 5},
    "eta eps/2, s 0.05, clean start": {"eta": EPS8 / 2, "noise_scale": 0.05, "bank_init": "zero"},
    # second round, around the first round's best (eta 1.25 eps, s 0.05)
    "eta 1.5 eps, s 0.05": {"eta": 1.5 * EPS8, "noise_scale": 0.05},
    "eta 1.25 eps, s 0.05, consistency 10": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0},
    "eta 1.25 eps, s 0.1": {"eta": 1.25 * EPS8, "noise_scale": 0.1},
    # third round: the consistency term with a constant anchor (no gradient through the stored sample's logits, so
    # no third pass: ATL T=1 at two passes per example, 0.18x PGD-10 AT's)
    "eta 1.25 eps, s 0.05, consistency 1 detached": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 1.0,
                                                      "consistency_detached": True},
    "eta 1.25 eps, s 0.05, consistency 3 detached": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 3.0,
                                                      "consistency_detached": True},
    "eta 1.25 eps, s 0.05, consistency 20": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 20.0},
    # fourth round: weight averaging (EMA of the parameters, the averaged model validated and evaluated); decay 0.999
    # = a horizon of about 1,000 steps, 2.6 of the 15 epochs' 383 batches each (fixed before the run, not tuned)
    "eta 1.25 eps, s 0.05, consistency 10, EMA 0.999": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0,
                                                        "ema_decay": 0.999},
    # fifth round, from the menu: two chain steps per visit (4 passes per example, 0.36x PGD-10 AT), and the
    # TRADES loss (clean CE + 6 KL(clean || chain sample)) in place of the chain sample's CE
    "eta 1.25 eps, s 0.05, consistency 10, T 2": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0,
                                                  "steps": 2},
    "eta 1.25 eps, s 0.05, consistency 10, TRADES beta 6": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                            "consistency": 10.0, "loss": "trades"},
    # sixth round, the menu's K copies (each visit moves one of 2 chains per example, drawn at random) and a clean-loss
    # weight (0.5 x the clean cross-entropy added to the chain sample's; one more pass per example)
    "eta 1.25 eps, s 0.05, consistency 10, K 2": {"eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0,
                                                  "copies": 2},
    "eta 1.25 eps, s 0.05, consistency 10, clean weight 0.5": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                               "consistency": 10.0, "clean_weight": 0.5},
    # eighth round, the menu's last items: momentum in the chain (a per-example velocity kept between visits; decay
    # 0.3 as FGSM-PGI's, and 0.7) and the TRADES KL to the clean output as the chain's target (one more forward pass).
    # Rule (ad1b211's, fixed before the runs): a variant goes to the 3-seed test study only at >= 30.2 % validation
    # AutoAttack
    "eta 1.25 eps, s 0.05, consistency 10, chain momentum 0.3": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                                 "consistency": 10.0, "chain_momentum": 0.3},
    "eta 1.25 eps, s 0.05, consistency 10, chain momentum 0.7": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                                 "consistency": 10.0, "chain_momentum": 0.7},
    "eta 1.25 eps, s 0.05, consistency 10, KL chain target": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                              "consistency": 10.0, "chain_target": "kl"},
    # tenth round: the menu's items the first round defined but never ran on CIFAR (round one's base was eta eps/2;
    # these take the default's): Gaussian noise at the uniform noise's variance, a periodic bank reset, a clean bank
    # start. (Batch-norm mode in the chain is moot here: small-cnn has no batch-norm.) Rule fixed before the runs
    # (commit of this comment): seeds 1-2 on validation only for a variant at >= 29.5 % on seed 0 (the default's 3-seed
    # validation mean 28.73 % + 0.75); no default changes on seed 0 alone
    "eta 1.25 eps, s 0.05/sqrt(3), Gaussian, consistency 10": {"eta": 1.25 * EPS8, "noise_scale": 0.05 / 3**0.5,
                                                               "noise": "gaussian", "consistency": 10.0},
    "eta 1.25 eps, s 0.05, consistency 10, reset every 5 ep": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                               "consistency": 10.0, "reset_every": 5},
    "eta 1.25 eps, s 0.05, consistency 10, clean start": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                          "consistency": 10.0, "bank_init": "zero"},
    # eleventh round: the noise scale was swept (round two: s 0.1 above s 0.05 by 1.2 points) before the consistency
    # term came in, never with it; s 0.1 and the zero-temperature control s 0 at the default's other settings. Rule
    # fixed before the runs (commit of this comment), the tenth round's: seeds 1-2 on validation only for a variant at
    # >= 29.5 % on seed 0; no default changes on seed 0 alone
    "eta 1.25 eps, s 0.1, consistency 10": {"eta": 1.25 * EPS8, "noise_scale": 0.1, "consistency": 10.0},
    "eta 1.25 eps, s 0, consistency 10": {"eta": 1.25 * EPS8, "noise_scale": 0.0, "consistency": 10.0},
    # twelfth round (after the eleventh: s 0.1 29.4 %, s 0 28.8 %, the default 29.2 % on seed 0): ATL's own eps
    # warm-up (3 or 8 epochs in place of the study's 5; on MNIST the warm-up decided whether T = 2 trained at all) and
    # the two small consistent gains combined (K = 2 with s 0.1, and K = 2 with weight averaging). Rule fixed before
    # the runs (commit of this comment), the tenth round's: seeds 1-2 on validation only for a variant at >= 29.5 % on
    # seed 0; the test study only for a 3-seed validation mean >= 29.5 %
    "eta 1.25 eps, s 0.05, consistency 10, eps warm-up 3 ep": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                               "consistency": 10.0, "eps_ramp": 3},
    "eta 1.25 eps, s 0.05, consistency 10, eps warm-up 8 ep": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                               "consistency": 10.0, "eps_ramp": 8},
    "eta 1.25 eps, s 0.1, consistency 10, K 2": {"eta": 1.25 * EPS8, "noise_scale": 0.1, "consistency": 10.0,
                                                 "copies": 2},
    "eta 1.25 eps, s 0.05, consistency 10, K 2, EMA 0.999": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                             "consistency": 10.0, "copies": 2, "ema_decay": 0.999},
    # thirteenth round (what only ATL has: copies, a sampler, beyond K 2; and the drift step, swept before the
    # consistency term existed), judged against the references on the same split. Rule fixed before the runs: a
    # variant goes to validation seeds 1-2 if its seed-0 validation AutoAttack is >= the FGSM-PGI + EMA reference's
    # seed-0 + 1.0, to the 3-seed test study if its 3-seed validation mean is >= that reference's 3-seed mean + 1.0
    "eta 1.25 eps, s 0.05, consistency 10, K 4, EMA 0.999": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                             "consistency": 10.0, "copies": 4, "ema_decay": 0.999},
    "eta 1.5 eps, s 0.05, consistency 10, K 2, EMA 0.999": {"eta": 1.5 * EPS8, "noise_scale": 0.05,
                                                            "consistency": 10.0, "copies": 2, "ema_decay": 0.999},
    # fourteenth round, on top of today's default (K 2 + EMA 0.999; validation 30.2 / 30.8 / 29.4 %, mean 30.13 %):
    # a longer averaging horizon (EMA 0.9995, about 2,000 steps), the label smoothing (0.1, never run for
    # ATL), and the two settings that came closest alone (eps warm-up 8 ep: 29.20 %, bank reset every 5 ep: 29.07 %,
    # against 28.73 % for the base they ran on). Rule fixed before the runs (commit of this comment): validation seeds
    # 1-2 only for a variant at >= 30.7 % on seed 0 (the default's seed-0 30.2 % + 0.5); a variant whose 3-seed
    # validation mean is >= 30.63 % (the default's + 0.5) becomes the default and its test row is run once (3 seeds)
    "eta 1.25 eps, s 0.05, consistency 10, K 2, EMA 0.9995": {"eta": 1.25 * EPS8, "noise_scale": 0.05,
                                                              "consistency": 10.0, "copies": 2, "ema_decay": 0.9995},
    "eta 1.25 eps, s 0.05, consistency 10, K 2, EMA 0.999, label smoothing 0.1": {
        "eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0, "copies": 2, "ema_decay": 0.999,
        "label_smoothing": 0.1},
    "eta 1.25 eps, s 0.05, consistency 10, K 2, EMA 0.999, eps warm-up 8 ep": {
        "eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0, "copies": 2, "ema_decay": 0.999, "eps_ramp": 8},
    "eta 1.25 eps, s 0.05, consistency 10, K 2, EMA 0.999, reset every 5 ep": {
        "eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0, "copies": 2, "ema_decay": 0.999,
        "reset_every": 5},
    # fifteenth round, beyond the menu: the chains resampled by their loss (`copy_select='max-loss'`: of the
    # example's two chains, the one of higher cross-entropy under the model now is moved and trained on; the
    # entropic worst case weights samples by exp(lambda * loss), this is its greedy limit). It costs two forward
    # passes per example and visit more (about 0.67 of a gradient pass: 3.67 against 3). Rule fixed before the runs
    # (commit of this comment): seeds 0, 1 and 2 on validation together (for time); a 3-seed validation mean >=
    # 30.63 % (the default's 30.13 % + 0.5, round fourteen's bar) makes it a candidate for a test study in a later
    # session, at the default's cost (12 epochs against 15: 12 x 3.67 / (15 x 3) = 0.98); no default changes here
    "eta 1.25 eps, s 0.05, consistency 10, K 2, EMA 0.999, max-loss copy": {
        "eta": 1.25 * EPS8, "noise_scale": 0.05, "consistency": 10.0, "copies": 2, "ema_decay": 0.999,
        "copy_select": "max-loss"},
}
# Other methods run on the validation split beside the ATL variants (label -> (method, recipe changes)), so that a
# variant is judged against the bar of the issue's target where settings may be chosen: "+1 over the best single-step
# method" (thirteenth round; every earlier round compared ATL variants with ATL's default only)
SWEEP_REFERENCES = {
    "reference: FGSM-PGI": ("fgsm-pgi", {}),
    "reference: FGSM-PGI + EMA 0.999": ("fgsm-pgi", {"ema_decay": 0.999}),
}
# seventh round: the sixth round's best (K 2, 29.6 %) and the default ("eta 1.25 eps, s 0.05, consistency 10") on
# validation seeds 1 and 2 (`sweep --seeds 1,2`). Rule fixed before the runs: K 2 goes to the 3-seed test study only if
# its 3-seed validation mean AutoAttack is >= the default's 3-seed mean + 0.75 (the ATL rows' shortfall from their
# target is 0.73 points)
# Ninth round: chain momentum 0.3 (the eighth round's best, 29.8 % on seed 0) on validation seeds 1 and 2, under the
# seventh round's rule (test study only at a 3-seed validation mean >= the default's 28.73 % + 0.75)


def study_recipe(method: str, changes: dict, eps: float, epochs: int | None, norm: str = "linf",
                 common: dict | None = None):
    """The study's recipe of ``method`` at ``eps`` (in ``norm``): the CIFAR-10 recipe, the shared settings
    (``common``, default :data:`COMMON`), ``changes``; every step size given for l-inf eps 8/255 keeps its ratio to
    eps (l2: eta, alpha as fractions of the l2 radius)."""
    r = recipe(method, "cifar10").replace(**(COMMON if common is None else common)).replace(**changes)
    scale = eps / EPS8
    r = r.replace(norm=norm, eps=eps, step_size=None if r.step_size is None else r.step_size * scale,
                  eta=None if r.eta is None else r.eta * scale)
    if r.method == "clean":
        r = r.replace(select="last")
    if epochs:  # an override (quick mode) keeps replay's cost: epochs / replay
        r = r.replace(epochs=max(1, round(epochs / r.replay)))
    return r


def threat_label(norm: str, eps: float) -> str:
    """'8/255' for l-inf radii, 'l2 0.5' for l2 ones."""
    return f"{round(eps * 255)}/255" if norm == "linf" else f"l2 {eps:g}"


def run_key(mode: str, eps: float, label: str, seed: int, norm: str = "linf", model: str = "small-cnn") -> str:
    eps_part = f"eps{round(eps * 255)}" if norm == "linf" else f"l2eps{eps:g}"
    model_part = "" if model == COMMON["model"] else f"-{slug(model)}"
    return f"{mode}{model_part}-{eps_part}-{slug(label)}-seed{seed}"


def common_settings(args) -> dict:
    """:data:`COMMON` with the command line's model and eps warm-up (the study's own: small-cnn, 5 epochs)."""
    return {**COMMON, "model": args.model, **({} if args.eps_ramp is None else {"eps_ramp": args.eps_ramp})}


def make_runtime(args, seed: int):
    """A single-process :class:`adv_transport.distributed.Runtime` (mixed precision, channels-last, the bank on the
    GPU) when the command line asks for a GPU or for either speed-up; None for the plain CPU path of the study."""
    if args.device == "cpu" and args.amp == "off" and not args.channels_last:
        return None
    from adv_transport.distributed import Runtime

    return Runtime(device=args.device, seed=seed, amp=args.amp, channels_last=args.channels_last,
                   bank_device="cuda" if args.device.startswith("cuda") else "cpu",
                   sync_every=1 if args.device == "cpu" else 25)


def hardware(args) -> str:
    """Where a run trained: the CPU's threads, or the GPU's name with the speed-ups used."""
    if args.device.startswith("cuda"):
        extras = [f"amp {args.amp}"] + (["channels-last"] if args.channels_last else [])
        return f"{torch.cuda.get_device_name(torch.device(args.device))} ({', '.join(extras)})"
    return f"{platform.machine()}, {torch.get_num_threads()} thread(s)"


def train_and_evaluate(mode, label, method, changes, eps, seed, data, args, partial: Path):
    """Train one run (continuing it from ``partial``, its checkpoint folder, when an earlier invocation was cut off)
    and evaluate its selected model."""
    train, val, test = data
    r = study_recipe(method, changes, eps, args.epochs, args.norm, common_settings(args))
    threat = at.ThreatModel(r.norm, r.eps)
    runtime = make_runtime(args, seed)
    partial = None if args.no_checkpoints else partial
    trainer, batches, resumed = resumable_training(
        r, train, None if mode == "sweep" else test, partial, seed=seed, device=args.device, eval_n=args.test_pgd_n,
        val=val, val_n=args.val_n, runtime=runtime, progress=not args.no_progress, commit=args.commit,
    )
    print(f"[{mode} eps {threat_label(args.norm, eps)} seed {seed}] {label}: {trainer.method.describe()}"
          + resumed_note(resumed, partial), file=sys.stderr, flush=True)
    trainer.fit(batches, r.epochs)
    model = trainer.final_model().eval()
    target, n = (val, args.val_aa_n) if mode == "sweep" else (test, args.aa_n)
    attacks = ["clean", "pgd"] + ([] if args.no_autoattack else ["autoattack"])
    final = evaluate(model, target, threat, attacks, n_examples=n, pgd_steps=20, pgd_step_size=eps / 4, sanity=False,
                     device=args.device, progress=not args.no_progress)
    h = trainer.history
    res = {
        "mode": mode, "label": label, "method": method, "eps": eps, "seed": seed, "recipe": r.to_dict(),
        "tricks": r.tricks(), "inner_step": trainer.method.describe(), "history": h,
        "epochs_run": len(h), "stopped_early_at": trainer.stopped_early_at,
        "selected_epoch": None if trainer.best is None else trainer.best["epoch"],
        "train_seconds": h[-1]["train_seconds"],
        "epoch_seconds": h[-1]["train_seconds"] / len(h),
        "grad_evals": h[-1]["input_grad_evals"] + h[-1]["param_grad_evals"],
        "forward_evals": h[-1].get("forward_evals", 0),  # no-gradient passes (KL chain target), apart
        "final_on": "validation" if mode == "sweep" else "test",
        "final": {k: v for k, v in final.items() if k != "per_class"},
        "square_drop": square_drop(final),
        "date": date.today().isoformat(), "machine": hardware(args),
        # the commit the run started on; a resumed run's wall_seconds, date and machine are the resuming invocation's
        **resumed_fields(resumed, args.commit),
    }
    print(f"  -> clean {final['clean_acc']:.1f} PGD-20 {final['pgd_acc']:.1f} AA {final.get('autoattack_acc')} "
          f"({res['train_seconds']:.0f} s, {res['grad_evals'] / 1e6:.2f} M grad evals)", file=sys.stderr, flush=True)
    return res


def load_runs(out: Path, also=()) -> list[dict]:
    """The run records of ``out``, and the study runs of the folders ``also`` (more seeds run into a folder of their
    own); a run found in two folders is refused, as it would be counted twice."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    found = {p.name: out for p in (out / "runs").glob("*.json")}
    for other in map(Path, also):
        for p in sorted((other / "runs").glob("*.json")):
            r = json.loads(p.read_text())
            if r["mode"] != "study":
                continue
            if p.name in found:
                raise SystemExit(f"run {p.stem} is in {found[p.name]} and in {other}: each run may be counted once")
            found[p.name] = other
            runs.append(r)
    order = {label: i for i, label in enumerate(STUDY_METHODS)}
    return sorted(runs, key=lambda r: (r["mode"], r["eps"], order.get(r["label"], 99), r["seed"]))


def aggregate(runs: list[dict]) -> dict:
    """study.json's content: per eps and method, per-seed and mean AutoAttack accuracy and training seconds."""
    out: dict = {"eps": {}}
    for r in runs:
        if r["mode"] != "study":
            continue
        e = out["eps"].setdefault(threat_label(r["recipe"]["norm"], r["eps"]), {})
        # the tricks as today's labels name them, from the recipe that ran (a record keeps the labels of its day)
        m = e.setdefault(r["label"], {"method": r["method"], "tricks": Recipe.from_dict(r["recipe"]).tricks(),
                                      "seeds": {}})
        m["seeds"][str(r["seed"])] = {
            "autoattack_acc": r["final"].get("autoattack_acc"), "pgd20_acc": r["final"]["pgd_acc"],
            "clean_acc": r["final"]["clean_acc"], "train_seconds": r["train_seconds"], "grad_evals": r["grad_evals"],
            "epoch_seconds": r["epoch_seconds"], "square_drop": r["square_drop"], "selected_epoch": r["selected_epoch"],
            "stopped_early_at": r["stopped_early_at"],
            # records recovered without their per-epoch history carry the ratio itself
            "final_over_best_pgd": final_over_best(r["history"]) if r["history"] else r.get("final_over_best_pgd"),
            "commit": r["commit"],
        }
    for e in out["eps"].values():
        for m in e.values():
            s = m["seeds"].values()
            for key in ("autoattack_acc", "pgd20_acc", "clean_acc", "train_seconds", "grad_evals", "epoch_seconds",
                        "square_drop"):
                m[f"{key}_mean"], m[f"{key}_std"] = mean_std([v[key] for v in s])
            m["n_seeds"] = len(m["seeds"])
        clean = e.get("clean")
        for m in e.values():
            m["epoch_cost_vs_clean"] = (None if clean is None or not clean.get("epoch_seconds_mean")
                                        else m["epoch_seconds_mean"] / clean["epoch_seconds_mean"])
            # the whole run's cost in counted gradient evaluations, which no other load on the CPU changes
            m["grad_evals_vs_clean"] = (None if clean is None or not clean.get("grad_evals_mean")
                                        else m["grad_evals_mean"] / clean["grad_evals_mean"])
    return out


def final_over_best(history) -> float | None:
    """Last epoch's test PGD-20 accuracy over the best epoch's (catastrophic overfitting shows as a small ratio)."""
    pgd = [h["pgd_acc"] for h in history if "pgd_acc" in h]
    if not pgd or max(pgd) == 0:
        return None
    return pgd[-1] / max(pgd)


def paired_gap(a: dict, b: dict) -> str:
    """Row ``a``'s AutoAttack accuracy minus row ``b``'s, seed by seed over the seeds both ran (a seed fixes the
    initialisation and the data order, so each difference compares like with like), with their mean and its standard
    error; empty with fewer than two such seeds."""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]), key=int)
    d = [a["seeds"][s]["autoattack_acc"] - b["seeds"][s]["autoattack_acc"] for s in seeds
         if a["seeds"][s].get("autoattack_acc") is not None and b["seeds"][s].get("autoattack_acc") is not None]
    if len(d) < 2:
        return ""
    return (f" Per seed: {', '.join(f'{x:+.1f}' for x in d)} points; mean {statistics.fmean(d):+.2f} ± "
            f"{statistics.stdev(d) / len(d) ** 0.5:.2f} (standard error over seeds).")


def targets(agg: dict) -> list[str]:
    """The study's targets (eps 8/255: ATL >= the best single-step method + 1 point of AutoAttack, and >= PGD-10 AT
    - 1 point at <= 1/4 of its gradient evaluations; eps 16/255: no ATL seed collapses, ATL >= N-FGSM), each marked
    Met / Not met from the aggregated runs (a target whose runs are missing is said to be missing). Training time
    is compared in counted gradient evaluations, which do not depend on what else shared the CPU; the wall-clock
    ratio is printed beside it."""
    lines = []
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    aa = lambda m: None if m is None else m.get("autoattack_acc_mean")  # noqa: E731
    e8 = agg["eps"].get("8/255", {})
    # the targets are stated for means over 3 seeds: a reading from fewer (a pilot) is marked as such
    caveat = lambda *rows: ("" if min(r["n_seeds"] for r in rows) >= 3 else  # noqa: E731
                            " Fewer than the 3 seeds the target is stated for: a provisional reading, not a verdict.")
    # rows are told apart by their inner step, not by their labels: every ATL row ("ATL", "ATL (13 epochs)", with
    # tricks) is held against the best single-step row of any tricks, and against PGD-10 AT
    atl_rows = {k: m for k, m in e8.items() if m["method"] == "atl" and aa(m) is not None}
    single = {k: aa(m) for k, m in e8.items() if m["method"] in SINGLE_STEP_METHODS and aa(m) is not None}
    if single:
        best = max(single, key=single.get)
        for label, m in atl_rows.items():
            ok = aa(m) >= single[best] + 1
            lines.append(f"- **{'Met' if ok else 'Not met'}** (eps 8/255): {label} AutoAttack {fmt(aa(m))} % (mean "
                         f"of {m['n_seeds']} seeds) vs the best single-step method, {best}, {fmt(single[best])} % "
                         f"(mean of {e8[best]['n_seeds']}) + 1 point." + paired_gap(m, e8[best])
                         + caveat(m, e8[best]))
    pgd = e8.get("PGD-10 AT")
    for label, m in atl_rows.items():
        if aa(pgd) is not None:
            ok_acc = aa(m) >= aa(pgd) - 1
            ratio = m["train_seconds_mean"] / pgd["train_seconds_mean"]
            gratio = m["grad_evals_mean"] / pgd["grad_evals_mean"]
            lines.append(f"- **{'Met' if ok_acc and gratio <= 0.25 else 'Not met'}** (eps 8/255): {label} "
                         f"{fmt(aa(m))} % (mean of {m['n_seeds']} seeds) vs PGD-10 AT {fmt(aa(pgd))} % - 1 point "
                         f"(mean of {pgd['n_seeds']} seeds), at {gratio:.2f}x its training cost in gradient "
                         f"evaluations (target <= 0.25x; wall-clock {ratio:.2f}x, on a shared CPU)." + caveat(m, pgd))
    for label, m in e8.items():  # free ATL (its own issue): AutoAttack within 2 points of ATL's at a clean run's cost
        if m["method"] == "free-atl" and aa(m) is not None and aa(e8.get("ATL")) is not None:
            gap = aa(e8["ATL"]) - aa(m)
            cost = m.get("grad_evals_vs_clean")
            lines.append(f"- **{'Met' if gap <= 2 else 'Not met'}** (eps 8/255): {label} AutoAttack {fmt(aa(m))} % "
                         f"(mean of {m['n_seeds']} seeds) vs ATL {fmt(aa(e8['ATL']))} % (target: within 2 points; gap "
                         f"{gap:+.2f}), at {fmt(cost)}x a clean run's gradient evaluations (per-step wall-clock: "
                         "benchmarks/epoch_cost.py).")
    e16 = agg["eps"].get("16/255", {})
    atl = e16.get("ATL")
    if atl:
        ratios = [v["final_over_best_pgd"] for v in atl["seeds"].values()]
        ok = all(r is not None and r >= 0.8 for r in ratios)
        lines.append(f"- **{'Met' if ok else 'Not met'}** (eps 16/255): no ATL seed collapses (final test PGD-20 / best"
                     f" epoch's: {', '.join(fmt(r) for r in ratios)}; target >= 0.80 each).")
        nf = e16.get("N-FGSM")
        if aa(atl) is not None and aa(nf) is not None:
            ok = aa(atl) >= aa(nf)
            lines.append(f"- **{'Met' if ok else 'Not met'}** (eps 16/255): ATL AutoAttack {fmt(aa(atl))} % vs N-FGSM "
                         f"{fmt(aa(nf))} % (means of {atl['n_seeds']} and {nf['n_seeds']} seeds).")
    return lines


def section_marker(model: str) -> str:
    """The BENCHMARKS.md section of a study: ``cifar-study`` for the small CNN's, ``cifar-study-<model>`` else."""
    return "cifar-study" if model == COMMON["model"] else f"cifar-study-{model}"


def study_epochs(meta: dict) -> str:
    """The small-CNN study's epochs: 15 (rows that differ say so in their labels), or the one count of a folder run
    with ``--epochs`` (a pilot at another length)."""
    epochs = meta.get("epochs") or [15]
    return "15" if 15 in epochs else "/".join(f"{e:g}" for e in epochs)


def other_model_intro(meta: dict) -> str:
    """The conditions of a study on another model than the small CNN (a GPU run, as a rule)."""
    nums = lambda xs: "/".join(f"{x:g}" for x in xs) or "n/a"  # noqa: E731
    return (
        f"Script `benchmarks/cifar_study.py --model {meta['model']}` ({meta['runs']} runs; commits "
        f"{', '.join(meta['commits'])}; {meta['machine']}). The small-CNN study's harness and settings (SGD, "
        "one-cycle LR peak 0.05, crop + flip after delta, best-on-validation selection, FGSM-RS's early stopping, "
        f"every step size relative to eps) except the model, {nums(meta['epochs'])} epochs and an eps warm-up over "
        f"{nums(meta['eps_ramp'])} epochs; training on the first 49,000 training images, the last 1,000 are the "
        "validation split. Final numbers on the first "
        f"{meta['aa_n']} class-balanced test images: PGD-20 (step eps/4) and AutoAttack 'standard' (pyautoattack, "
        "float32), mean ± std over seeds. Seconds are training wall-clock (evaluation excluded), "
        + ("measured on the CPU while other work shared the 2 cores (never an idle machine; one thread per run): "
           "compare methods by gradient evaluations." if "thread" in meta["machine"] else
           "the methods run one after another in one script on the otherwise idle GPU.")
    )


def markdown(agg: dict, runs: list[dict], meta: dict) -> str:
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    pm = lambda m, k: f"{f(m[k + '_mean'])} ± {f(m[k + '_std'])}"  # noqa: E731
    ratio = lambda v: "n/a (no clean run)" if v is None else f"{v:.2f}x"  # noqa: E731
    model = meta.get("model", COMMON["model"])
    marker = section_marker(model)
    lines = [
        f"<!-- {marker} -->",
        "## ATL vs the bank-based prior art and the fast baselines: CIFAR-10 (JPEG-lossy copy)"
        + ("" if model == COMMON["model"] else f", {model}"),
        "",
        f"**{LOSSY_LABEL}.**",
        "",
        other_model_intro(meta) if model != COMMON["model"] else
        f"Script `benchmarks/cifar_study.py` ({meta['runs']} runs; commits {', '.join(meta['commits'])}; "
        f"{meta['machine']}). Model `small-cnn`: of the library's models it is the only one within the 20 s "
        "clean-epoch budget (a 50,000-image clean epoch takes about 3 s here on 2 idle cores; "
        "`benchmarks/cpu_model_choice.py`: the smallest WideResNet, wrn-10-1, takes 17x its step time, "
        "PreAct-ResNet-18 630x). A wider CNN of its kind could spend up to about 6x more per epoch and reach more "
        "clean accuracy; it was not built, because every run of this study would cost as much more. Training on the "
        "first 49,000 "
        "training images, the last 1,000 are the validation split (model selection, the sweep); SGD, one-cycle LR "
        f"peak 0.05, {study_epochs(meta)} epochs, crop + flip after delta, eps warm-up over 5 epochs and "
        "best-on-validation selection "
        "for every method (FGSM-RS also stops early when validation PGD-20 drops 20 points below its best). "
        f"Final numbers on the first {meta['aa_n']} class-balanced test images: PGD-20 (step eps/4) and AutoAttack "
        "'standard' (pyautoattack), mean ± std over seeds. Seconds are training wall-clock (evaluation excluded) "
        "measured while other work shared the 2 cores (never an idle machine; one thread per run): compare methods "
        "by gradient evaluations. The commits column names the commit each row's runs started on; the changes between "
        "them leave CPU training bit-identical (names, GPU-only paths, reports).",
    ]
    recovered = [r for r in runs if r.get("recovered")]
    if recovered:
        lines[-1] += (
            f" {len(recovered)} of the runs (the sweep and the first seed-0 baselines) were measured by an earlier, "
            "interrupted session of the study at the commits named and rebuilt from its aggregated results: their "
            "final numbers are kept, their per-epoch curves were lost (they are not in the plot)."
        )
    for eps, methods in agg["eps"].items():
        lines += ["", f"### eps = {eps}" + (" (l-inf)" if "/" in eps else ""), ""]
        if "/" not in eps:
            lines += ["l2 threat model (RobustBench's second CIFAR-10 one): every step is taken in l2 (PGD-10 AT is "
                      "PGD-l2 AT with step eps/4; ATL's drift is eta * g / ||g||_2 with eta = 1.25 eps, its noise "
                      "scaled by 1/sqrt(d)); PGD-20 and AutoAttack 'standard' in l2.", ""]
        shared = " (shared CPU)" if model == COMMON["model"] else ""
        lines += [
                  "| method | seeds | tricks | clean % | PGD-20 % | AutoAttack % | Square drop | train s | grad evals |"
                  f" grad evals vs clean | epoch s vs clean{shared} | commits |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for label, m in methods.items():
            lines.append(
                f"| {label} | {m['n_seeds']} | {', '.join(m['tricks']) or 'none'} | {pm(m, 'clean_acc')} | "
                f"{pm(m, 'pgd20_acc')} | **{pm(m, 'autoattack_acc')}** | {f(m['square_drop_mean'], 2)} | "
                f"{f(m['train_seconds_mean'], 0)} | {m['grad_evals_mean'] / 1e6:.2f} M | "
                f"{ratio(m.get('grad_evals_vs_clean'))} | {ratio(m['epoch_cost_vs_clean'])} | "
                f"{', '.join(sorted({v.get('commit', '?') for v in m['seeds'].values()}))} |")
    sweep = [r for r in runs if r["mode"] == "sweep"]
    if sweep:
        ns = sorted({r["final"]["n_examples"] for r in sweep if r["final"].get("n_examples")})
        lines += ["", "### ATL sweep (eps 8/255, seed 0 unless the seed column says otherwise; judged on the "
                  "validation split, test set untouched; rows named 'reference: ...' are other methods on the same "
                  "split)", "",
                  f"Validation AutoAttack on the first {' or '.join(map(str, ns)) or 'n/a'} images of the validation "
                  "split (the selection of the epoch reads PGD-20 on all of it); one such accuracy has a binomial "
                  "standard error of about 2 points.", "",
                  "| variant | seed | val clean % | val PGD-20 % | val AutoAttack % | Square drop | selected epoch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(sweep, key=lambda r: -(r["final"].get("autoattack_acc") or r["final"]["pgd_acc"])):
            lines.append(f"| {r['label']} | {r['seed']} | {f(r['final']['clean_acc'])} | {f(r['final']['pgd_acc'])} | "
                         f"{f(r['final'].get('autoattack_acc'))} | {f(r['square_drop'], 2)} | {r['selected_epoch']} |")
        lines += seed_means(sweep)
    lines += ["", "Targets:", "", *(targets(agg) or ["- (no study runs yet)"]), f"<!-- /{marker} -->"]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = [r for r in runs if r["mode"] == "study"]
    threats = sorted({(r["recipe"]["norm"], r["eps"]) for r in study})
    if not threats:
        return
    fig, axes = plt.subplots(1, len(threats), figsize=(6.5 * len(threats), 4.5), squeeze=False)
    for ax, (norm, eps) in zip(axes[0], threats):
        for label in STUDY_METHODS:
            rs = [r for r in study if (r["recipe"]["norm"], r["eps"]) == (norm, eps) and r["label"] == label]
            for i, r in enumerate(sorted(rs, key=lambda r: r["seed"])):
                h = r["history"]
                ax.plot([x["input_grad_evals"] + x["param_grad_evals"] for x in h], [x["pgd_acc"] for x in h],
                        color=plt.get_cmap("tab20")(list(STUDY_METHODS).index(label) % 20), alpha=0.8, marker=".",
                        label=label if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel("gradient evaluations (log scale)")
        ax.set_ylabel("test PGD-20 accuracy (%)")
        ax.set_title(f"eps {threat_label(norm, eps)} (each line one seed)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    models = sorted({r["recipe"]["model"] for r in study})
    fig.suptitle(f"CIFAR-10 study, {', '.join(models)}: " + LOSSY_LABEL, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_autoattack(agg: dict, path: Path, title: str) -> None:
    """The study's final numbers at a glance: per threat, each method's test AutoAttack accuracy, one dot per seed and
    its mean ± std, methods sorted by mean and labelled with their cost (gradient evaluations, relative to PGD-10 AT
    where it ran); at eps 8/255 the two targets' bars (best single-step method + 1, PGD-10 AT - 1) as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {eps: {k: m for k, m in ms.items() if m.get("autoattack_acc_mean") is not None and m["method"] != "clean"}
              for eps, ms in agg["eps"].items()}
    panels = {eps: ms for eps, ms in panels.items() if ms}
    if not panels:
        return
    rows = max(len(ms) for ms in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 1.2 + 0.38 * rows), squeeze=False)
    for ax, (eps, ms) in zip(axes[0], panels.items()):
        order = sorted(ms, key=lambda k: ms[k]["autoattack_acc_mean"])
        pgd = ms.get("PGD-10 AT")
        # rows far below the rest (free ATL's 5 % beside 28 %) are marked at the left edge with their value, so that
        # the scale stays readable where the methods are close
        top = max(m["autoattack_acc_mean"] for m in ms.values())
        shown = {k for k, m in ms.items() if m["autoattack_acc_mean"] >= top - 10}  # the rest: marked at the edge
        low = min(v["autoattack_acc"] for k in shown for v in ms[k]["seeds"].values()
                  if v.get("autoattack_acc") is not None) - 1
        ticks = []
        for y, label in enumerate(order):
            m = ms[label]
            per_seed = [v["autoattack_acc"] for v in m["seeds"].values() if v.get("autoattack_acc") is not None]
            color = "C1" if m["method"] == "atl" else ("C3" if m["method"] == "pgd" else "C0")
            if label not in shown:
                ax.annotate(f"< {m['autoattack_acc_mean']:.1f} ± {m['autoattack_acc_std'] or 0:.1f} (off the scale)",
                            (low, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8, color=color)
            else:
                ax.scatter(per_seed, [y] * len(per_seed), s=14, color=color, alpha=0.5, zorder=2)
                ax.errorbar(m["autoattack_acc_mean"], y, xerr=m["autoattack_acc_std"] or 0, fmt="D", color=color,
                            ms=5, capsize=3, zorder=3)
            ref = pgd.get("grad_evals_mean") if pgd else None
            cost = (f"{m['grad_evals_mean'] / ref:.2f}x PGD-10 AT" if ref
                    else f"{m['grad_evals_mean'] / 1e6:.2f} M grad evals")
            ticks.append(f"{label} ({m['n_seeds']} seed{'s' if m['n_seeds'] > 1 else ''}, {cost})")
        high = max(v["autoattack_acc"] for m in ms.values() for v in m["seeds"].values()
                   if v.get("autoattack_acc") is not None)
        ax.set_xlim(low, high + 0.5)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=8)
        single = [m["autoattack_acc_mean"] for m in ms.values() if m["method"] in SINGLE_STEP_METHODS]
        if eps == "8/255" and single:
            ax.axvline(max(single) + 1, color="C0", ls="--", lw=1, label="best single-step + 1")
        if eps == "8/255" and pgd:
            ax.axvline(pgd["autoattack_acc_mean"] - 1, color="C3", ls="--", lw=1, label="PGD-10 AT - 1")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel("test AutoAttack accuracy (%): dots seeds, diamond mean ± std")
        ax.set_title(f"eps {eps}" + (" (l-inf)" if "/" in eps else ""))
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, args) -> dict:
    runs = load_runs(out, getattr(args, "also", ()))
    agg = aggregate(runs)
    models = sorted({r["recipe"]["model"] for r in runs}) or [args.model]
    if len(models) > 1:
        raise SystemExit(f"{out} holds runs of several models ({', '.join(models)}): one model per --out")
    meta = {
        "runs": len(runs), "commits": sorted({r["commit"] for r in runs}) or [args.commit],
        "machine": ", ".join(sorted({r["machine"] for r in runs})) or "n/a", "aa_n": args.aa_n,
        "lossy_data": True, "note": LOSSY_LABEL, "model": models[0],
        "epochs": sorted({r["recipe"]["epochs"] * r["recipe"].get("replay", 1) for r in runs if r["mode"] == "study"}),
        "eps_ramp": sorted({r["recipe"]["eps_ramp"] for r in runs if r["mode"] == "study" and r["method"] != "clean"}),
    }
    (out / "study.json").write_text(json.dumps({"meta": meta, **agg}, indent=1))
    plot(runs, out / "study.png")
    plot_autoattack(agg, out / "study_autoattack.png", f"CIFAR-10 study, {meta['model']}: {LOSSY_LABEL}")
    section = markdown(agg, runs, meta)
    (out / "study.md").write_text(section)
    md = Path(args.benchmarks_md) if args.benchmarks_md else (None if args.quick else ROOT / "BENCHMARKS.md")
    if md is not None:
        replace_section(md, section_marker(meta["model"]), section)
    return agg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("sweep", "study", "report"))
    p.add_argument("--eps", default="8", help="comma-separated eps values in 1/255 (l-inf) or plain (l2) (study)")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2 for the study, 0 for the sweep)")
    p.add_argument("--methods", help="';'-separated labels (study: of STUDY_METHODS; sweep: of SWEEP and "
                   "SWEEP_REFERENCES), run in this order")
    p.add_argument("--epochs", type=int, help="override the study's 15 epochs")
    p.add_argument("--also", action="append", default=[], metavar="DIR",
                   help="report only: another results folder whose study runs join this folder's aggregate (e.g. "
                   "more seeds run with --out a folder of their own); needs --benchmarks-md, as the section would "
                   "otherwise replace the main study's")
    p.add_argument("--train-n", type=int, default=49000)
    p.add_argument("--val-n", type=int, default=1000)
    p.add_argument("--val-aa-n", type=int, default=500)
    p.add_argument("--test-pgd-n", type=int, default=500)
    p.add_argument("--aa-n", type=int, default=1000)
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny slices, 1 epoch, 1 seed")
    p.add_argument("--force", action="store_true", help="rerun runs that already have a result")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="keep no per-epoch checkpoint of the run in training (<out>/partial/), e.g. on a machine that "
                        "cannot resume; a run cut off then starts afresh")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="default benchmarks/results/cifar10")
    p.add_argument("--benchmarks-md")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--model", default=COMMON["model"], help="the model of every run (default: the study's small-cnn; "
                   "on a GPU preact-resnet18); another model's runs get their own keys and BENCHMARKS section")
    p.add_argument("--eps-ramp", type=float, help="override the study's eps warm-up (5 epochs)")
    p.add_argument("--device", default="cpu", help="cpu (the study's) or cuda")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="mixed precision of the training "
                   "steps (evaluation stays in float32)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--stop-after", type=float, help="start no further run after this many seconds (a time-boxed "
                   "session, e.g. a lent GPU); the runs not started are listed")
    p.add_argument("--keep-going", action="store_true", help="a run that fails is reported (traceback on stderr) "
                   "and the next one starts; the exit status is 1 if any failed")
    args = p.parse_args(argv)
    if args.no_progress:  # without progress bars, one plain line per epoch (for logs written to files)
        log_epochs()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch here")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.commit = git_commit()
    if args.quick:
        args.train_n, args.val_n, args.val_aa_n, args.test_pgd_n, args.aa_n = 300, min(args.val_n, 100), 20, 20, 20
        args.epochs = args.epochs or 1
        args.seeds = args.seeds or "0"
    failed: list[str] = []
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "cifar10"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if args.val_n < 1:
        p.error(f"--val-n must be >= 1 (the validation split: the last val_n training images), got {args.val_n}")
    if args.mode == "sweep" and args.norm != "linf":
        p.error("the sweep runs at l-inf eps 8/255 (its variants are written for it); --norm l2 is for the study")
    if args.also and (args.mode != "report" or not args.benchmarks_md):
        p.error("--also is for `report` with --benchmarks-md (a file other than the main study's BENCHMARKS.md)")
    if args.mode != "report":
        full = at.load_dataset("cifar10", "train", args.data_dir)
        n_train = min(args.train_n, len(full) - args.val_n)
        train = full.subset(n_train)
        # the validation split: the last val_n training images, re-indexed from 0 (never trained on)
        val = at.IndexedDataset(full.images[-args.val_n:], full.labels[-args.val_n:], "cifar10-val", full.lossy)
        test = at.load_dataset("cifar10", "test", args.data_dir)
        data = (train, val, test)
        if args.mode == "sweep":
            seeds = [int(s) for s in (args.seeds or "0").split(",")]
            names = {**{label: ("atl", {**PREVIOUS_ATL, **ch}) for label, ch in SWEEP.items()}, **SWEEP_REFERENCES}
            plan = [("sweep", EPS8, label, m, ch, s) for s in seeds for label, (m, ch) in names.items()]
        else:
            eps_list = [float(e) / (255 if args.norm == "linf" else 1) for e in args.eps.split(",")]
            seeds = [int(s) for s in (args.seeds or "0,1,2").split(",")]
            plan = [("study", e, label, m, ch, s) for e in eps_list for s in seeds
                    for label, (m, ch) in STUDY_METHODS.items() if args.norm in NORMS_OF.get(m, ("linf", "l2"))]
            names = STUDY_METHODS
        if args.methods:
            keep = [m.strip() for m in args.methods.split(";")]
            unknown = sorted(set(keep) - set(names))
            if unknown:
                p.error(f"unknown method labels {unknown}; known: {list(names)}")
            # in the order given (a time-boxed session runs the most wanted first), eps and seeds outermost
            plan = sorted((row for row in plan if row[2] in keep), key=lambda row: (row[1], row[5], keep.index(row[2])))
        began, not_started = time.perf_counter(), []
        for mode, eps, label, method, changes, seed in plan:
            path = out / "runs" / f"{run_key(mode, eps, label, seed, args.norm, args.model)}.json"
            partial = out / "partial" / path.stem  # the run's checkpoints while it trains (git-ignored)
            if path.is_file() and not args.force:
                training_done(partial)  # a checkpoint left by a kill between the result's write and its removal
                continue
            if args.stop_after is not None and time.perf_counter() - began > args.stop_after:
                not_started.append(path.stem)
                continue
            start = time.perf_counter()
            try:
                res = train_and_evaluate(mode, label, method, changes, eps, seed, data, args, partial)
            except Exception:
                if not args.keep_going:
                    raise
                traceback.print_exc()
                failed.append(path.stem)
                continue
            res["wall_seconds"] = time.perf_counter() - start
            at.checkpoint.atomic_write_text(json.dumps(res, indent=1), path)
            training_done(partial)
            report(out, args)
        if not_started:
            print(f"--stop-after {args.stop_after:g} s: not started: {', '.join(not_started)}", file=sys.stderr)
        if failed:
            print(f"failed (see the tracebacks above): {', '.join(failed)}", file=sys.stderr)
    agg = report(out, args)
    print((out / "study.md").read_text())
    if failed:
        raise SystemExit(1)
    return agg


if __name__ == "__main__":
    main()
