"""Documented training recipes: the settings each method is run with by default, per dataset.

Every method goes through the same :class:`~adv_transport.trainer.Trainer`; only the inner step and the settings
below differ. The MNIST recipes were chosen by measurement on the small MNIST CNN (see README, "Recipes").
The CIFAR-10 recipes follow Wong et al. 2020 (PreAct-ResNet-18, SGD with a one-cycle learning rate, crop and flip);
ATL's Langevin step there (eta = eps / 2 per visit, s = 0.2, uniform start) was chosen on the small CNN of the CPU
benchmark (JPEG-lossy copy), not on PreAct-ResNet-18.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .bank import AdversarialBank
from .errors import ConfigError
from .langevin import LangevinSampler
from .methods import ATL, ATTA, FGSMPGI, FGSMRS, NFGSM, PGD, Clean, FreeATL, InnerStep
from .threat import ThreatModel

METHODS = ("atl", "pgd", "fgsm-rs", "n-fgsm", "fgsm-pgi", "atta", "free-atl", "clean")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("onecycle", "constant")


@dataclass
class Recipe:
    """Everything that decides a training run besides the model and the data."""

    method: str
    dataset: str
    model: str
    eps: float
    norm: str = "linf"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "onecycle"
    pct_start: float = 0.4
    clean_weight: float = 0.0
    augment: bool = False
    # inner-step settings (see adv_transport.methods); None means "the method's default"
    steps: int | None = None
    step_size: float | None = None
    noise_scale: float = 0.2
    noise: str = "uniform"
    copies: int = 1
    bank_dtype: str = "float32"
    bank_init: str = "zero"
    model_mode: str = "train"
    eps_ramp: float = 0.0  # epochs over which PGD's eps grows linearly from 0 (0 = no warm-up)
    noise_mult: float = 2.0  # N-FGSM: the start is uniform in a box of noise_mult * eps
    reset_every: int | None = None  # ATL/ATTA/FGSM-PGI: forget the stored perturbations every this many epochs
    pgi_lam: float = 10.0  # FGSM-PGI: weight of the output-consistency term
    pgi_decay: float = 0.3  # FGSM-PGI: gradient momentum decay
    # tricks available to every method (all off by default)
    label_smoothing: float = 0.0
    loss: str = "ce"  # or "trades" (clean CE + trades_beta * KL(clean || adversarial))
    trades_beta: float = 6.0
    ema_decay: float | None = None  # weight averaging: EMA of the parameters, the averaged model is evaluated
    select: str = "last"  # or "best": the epoch with the best PGD accuracy on the validation split
    early_stop_drop: float | None = None  # stop when validation PGD accuracy falls this many points below its best
    replay: int = 1  # train on each batch this many times in a row (Free-AT's replay)
    extra: dict[str, Any] = field(default_factory=dict)

    def tricks(self) -> list[str]:
        """The tricks this recipe uses, as short labels (for result tables)."""
        out = []
        if self.eps_ramp > 0:
            out.append(f"eps warm-up {self.eps_ramp:g} ep")
        if self.ema_decay is not None:
            out.append(f"EMA {self.ema_decay:g}")
        if self.label_smoothing > 0:
            out.append(f"label smoothing {self.label_smoothing:g}")
        if self.loss == "trades":
            out.append(f"TRADES beta {self.trades_beta:g}")
        if self.clean_weight > 0:
            out.append(f"clean weight {self.clean_weight:g}")
        if self.select == "best":
            out.append("best-on-validation")
        if self.early_stop_drop is not None:
            out.append(f"early stop (drop > {self.early_stop_drop:g})")
        if self.replay > 1:
            out.append(f"replay x{self.replay}")
        return out

    def replace(self, **changes) -> Recipe:
        """A copy with the given fields changed (``None`` values are ignored)."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown recipe field(s) {bad}; known: {sorted(known)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_MNIST = dict(dataset="mnist", model="mnist-cnn", eps=0.3, optimizer="adam", lr=3e-3, batch_size=128)
_CIFAR = dict(
    dataset="cifar10",
    model="preact-resnet18",
    eps=8 / 255,
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=128,
    augment=True,
    pct_start=0.4,
)

RECIPES: dict[tuple[str, str], Recipe] = {
    # ATL: chains start uniform in the ball and move eta = 0.1 per visit. Measured (README, "Recipes"): with the
    # authors' eta = 0.01 from a clean start robustness only takes off after ~30 epochs; eta = 0.03 from a clean start
    # reached 88.8 % PGD-40 after 15 epochs; from a uniform start, 20 epochs, AutoAttack on 1000 test points:
    # eta = 0.05 83.6-84.9 %, eta = 0.1 87.1 % (and 93.5 % PGD-40 five epochs sooner), eta = 0.15 87.1 %; s = 0.5 or
    # Gaussian noise were worse.
    ("atl", "mnist"): Recipe("atl", **_MNIST, epochs=20, steps=1, step_size=0.1, noise_scale=0.2, bank_init="uniform"),
    # free ATL: ATL's chain settings, the chain advanced by the training pass's own input gradient
    ("free-atl", "mnist"): Recipe(
        "free-atl", **_MNIST, epochs=20, steps=1, step_size=0.1, noise_scale=0.2, bank_init="uniform"
    ),
    # PGD-40 AT at eps = 0.3 from scratch stays at chance (measured: loss 2.30 after 3 epochs on 10k images), and so
    # did N-FGSM; growing eps linearly from 0 over the first 3 epochs lets them learn (README, "Recipes"). The same
    # warm-up is given to every single-step baseline.
    ("pgd", "mnist"): Recipe("pgd", **_MNIST, epochs=10, steps=40, step_size=0.01, eps_ramp=3),
    ("fgsm-rs", "mnist"): Recipe("fgsm-rs", **_MNIST, epochs=10, step_size=0.375, eps_ramp=3),
    # N-FGSM's default noise of 2 eps (0.6 at MNIST eps = 0.3) did not train (0 % PGD-40); measured on full MNIST,
    # 10 epochs: noise 1 eps 97.2 % clean / 63.6 % PGD-40, noise 0.5 eps 97.2 % / 0.0 %. 1 eps it is.
    ("n-fgsm", "mnist"): Recipe("n-fgsm", **_MNIST, epochs=10, step_size=0.3, eps_ramp=3, noise_mult=1.0),
    # the bank-based prior art, with their papers' inner-step settings and the same warm-up as the other baselines
    ("fgsm-pgi", "mnist"): Recipe("fgsm-pgi", **_MNIST, epochs=10, step_size=0.3, eps_ramp=3),
    ("atta", "mnist"): Recipe("atta", **_MNIST, epochs=10, step_size=0.15, eps_ramp=3, reset_every=10),
    ("clean", "mnist"): Recipe("clean", **_MNIST, epochs=5),
    # small CNN, 10k lossy CIFAR-10 images, 15 epochs, AutoAttack on 1000 test points: eta = eps/6 12.2 %, eps/4
    # 15.2 %, eps/2 19.2 %; less noise (s = 0.07 at eps/4: 17.0 %; s = 0.05 at eps/2: stuck at chance) was not better
    ("atl", "cifar10"): Recipe(
        "atl", **_CIFAR, epochs=30, steps=1, step_size=8 / 255 / 2, noise_scale=0.2, bank_init="uniform"
    ),
    ("free-atl", "cifar10"): Recipe(
        "free-atl", **_CIFAR, epochs=30, steps=1, step_size=8 / 255 / 2, noise_scale=0.2, bank_init="uniform"
    ),
    # without a warm-up PGD-10 AT and FGSM-RS stayed at chance on the small CNN (measured: loss 2.30 for 15 epochs)
    ("pgd", "cifar10"): Recipe("pgd", **_CIFAR, epochs=30, steps=10, step_size=2 / 255, eps_ramp=5),
    ("fgsm-rs", "cifar10"): Recipe("fgsm-rs", **_CIFAR, epochs=30, step_size=10 / 255, eps_ramp=5),
    ("n-fgsm", "cifar10"): Recipe("n-fgsm", **_CIFAR, epochs=30, step_size=8 / 255, eps_ramp=5),
    # FGSM-PGI: step eps, lam 10, momentum decay 0.3, reset every 40 epochs (Jia et al. 2022); ATTA: step 0.015 at
    # eps 0.031 (here eps/2), reset every 10 epochs (Zheng et al. 2020)
    ("fgsm-pgi", "cifar10"): Recipe("fgsm-pgi", **_CIFAR, epochs=30, step_size=8 / 255, eps_ramp=5),
    ("atta", "cifar10"): Recipe("atta", **_CIFAR, epochs=30, step_size=8 / 255 / 2, eps_ramp=5, reset_every=10),
    ("clean", "cifar10"): Recipe("clean", **_CIFAR, epochs=30),
}


def recipe(method: str, dataset: str) -> Recipe:
    """The default recipe of ``method`` on ``dataset`` (a fresh copy)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    if (method, dataset) in RECIPES:
        return dataclasses.replace(RECIPES[(method, dataset)])
    from .data import check_dataset_name

    check_dataset_name(dataset)
    # not tuned: CIFAR-100, SVHN, ImageNet and image folders start from the CIFAR-10 recipe (SVHN: no flips, see
    # data.dataset_flip; ImageNet: ResNet-50 from timm at RobustBench's eps 4/255)
    changes = {"model": "timm:resnet50", "eps": 4 / 255} if dataset == "imagenet" else {}
    return dataclasses.replace(RECIPES[(method, "cifar10")], dataset=dataset, **changes)


def build_method(
    r: Recipe, num_examples: int, shape: tuple[int, ...], seed: int = 0, bank_device: str | torch.device = "cpu",
    make_bank=AdversarialBank,
) -> InnerStep:
    """The inner step described by recipe ``r`` (ATL gets a bank sized for ``num_examples`` inputs of ``shape``, made
    by ``make_bank``: a distributed run's :meth:`~adv_transport.distributed.Runtime.bank` holds one rank's shard)."""
    threat = ThreatModel(r.norm, r.eps)
    threat.check_input_dim(int(torch.tensor(shape).prod()))
    if r.method == "clean":
        return Clean()
    if r.method == "pgd":
        return PGD(threat, r.steps or 40, r.step_size or threat.eps / 4, r.model_mode, eps_ramp=r.eps_ramp)
    if r.method == "fgsm-rs":
        return FGSMRS(threat, r.step_size, r.model_mode, eps_ramp=r.eps_ramp)
    if r.method == "n-fgsm":
        return NFGSM(threat, r.step_size, r.noise_mult, model_mode=r.model_mode, eps_ramp=r.eps_ramp)
    if r.method == "fgsm-pgi":
        return FGSMPGI(threat, num_examples, shape, r.step_size, r.pgi_lam, r.pgi_decay,
                       40 if r.reset_every is None else r.reset_every, r.model_mode, r.eps_ramp, seed=seed)
    if r.method in ("atl", "atta", "free-atl"):
        bank = make_bank(
            num_examples,
            shape,
            threat,
            copies=r.copies,
            dtype=r.bank_dtype,
            init=r.bank_init,
            device=bank_device,
            seed=seed,
        )
        if r.method == "atta":
            sampler = LangevinSampler(threat, r.step_size or threat.eps / 2, 0.0, 1, r.noise, r.model_mode)
            return ATTA(bank, sampler, r.eps_ramp, 10 if r.reset_every is None else r.reset_every)
        sampler = LangevinSampler(
            threat, r.step_size or threat.eps / 10, r.noise_scale, r.steps or 1, r.noise, r.model_mode
        )
        return (FreeATL if r.method == "free-atl" else ATL)(bank, sampler, r.eps_ramp, r.reset_every or 0)
    raise ConfigError(f"unknown method {r.method!r}; accepted: {', '.join(METHODS)}")


def build_optimizer(r: Recipe, params, steps_per_epoch: int):
    """Optimizer and per-batch LR scheduler of recipe ``r``."""
    if r.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    elif r.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.momentum > 0
        )
    else:
        raise ConfigError(f"unknown optimizer {r.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    if r.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=r.lr, total_steps=r.epochs * steps_per_epoch, pct_start=r.pct_start
        )
    elif r.lr_schedule == "constant":
        sched = None
    else:
        raise ConfigError(f"unknown lr schedule {r.lr_schedule!r}; accepted: {', '.join(LR_SCHEDULES)}")
    return opt, sched


def epoch_check(dataset: str, test, threat: ThreatModel, n_examples: int, device):
    """``eval_fn`` for the trainer: clean and protocol-PGD accuracy (SPEC section 4) on the first ``n_examples``
    test points, without the sanity checks (they belong to the final evaluation)."""
    from .eval import evaluate, pgd_defaults

    steps, step_size = pgd_defaults(dataset, threat)

    def fn(model):
        rep = evaluate(model, test, threat, ("clean", "pgd"), n_examples=n_examples, pgd_steps=steps,
                       pgd_step_size=step_size, device=device, sanity=False)
        return {"clean_acc": rep["clean_acc"], "pgd_acc": rep["pgd_acc"], "eval_n": rep["n_examples"],
                "eval_pgd_steps": steps}

    return fn


def validation_check(dataset: str, val, threat: ThreatModel, n_examples: int, device):
    """``val_fn`` for the trainer: :func:`epoch_check` on a validation split of the training set, keys prefixed
    ``val_`` (what model selection and early stopping read)."""
    fn = epoch_check(dataset, val, threat, n_examples, device)
    return lambda model: {f"val_{k}": v for k, v in fn(model).items()}


def build_training(
    r: Recipe, train, test, *, seed: int = 0, device="cpu", eval_n: int = 1000, val=None, val_n: int = 1000,
    runtime=None, **trainer_kwargs,
):
    """Model (seeded initialisation), batches (seeded order), inner step, optimizer, scheduler, augmentation,
    tricks and per-epoch check of recipe ``r``, assembled into a :class:`~adv_transport.trainer.Trainer`.
    ``val``: a validation split of the training data (never the test set), checked every epoch when given; recipes
    with ``select='best'`` or early stopping need it. ``test=None`` skips the per-epoch test check.
    ``runtime``: an :class:`adv_transport.distributed.Runtime` (many ranks, fast GPU path): it places the model, makes
    the batches (this rank's shard, global batch ``r.batch_size``) and the bank (this rank's shard).
    Returns ``(trainer, batches)``; ``trainer_kwargs`` go to the Trainer (run_dir, progress, config, ...)."""
    from .augment import RandomCropFlip
    from .data import IndexedBatches, dataset_flip
    from .models import model_for_data
    from .trainer import Trainer

    threat = ThreatModel(r.norm, r.eps)
    torch.manual_seed(seed)
    model = model_for_data(r.model, train, r.dataset).to(device)
    if runtime is None:
        batches = IndexedBatches(train, r.batch_size, seed=seed, device=device)
        method = build_method(r, len(train), train.shape, seed=seed)
    else:
        model = runtime.prepare_model(model)
        batches = runtime.batches(train, r.batch_size, seed=seed)
        method = build_method(r, len(train), train.shape, seed=seed, make_bank=runtime.bank)
    opt, sched = build_optimizer(r, model.parameters(), len(batches) * r.replay)
    augment = RandomCropFlip(padding=4, flip=dataset_flip(r.dataset)) if r.augment else None
    if (r.select == "best" or r.early_stop_drop is not None) and val is None:
        raise ConfigError("this recipe selects its model on a validation split (select='best' or early stopping): "
                          "pass val=<a held-out part of the training set>")
    trainer = Trainer(
        model, opt, method, scheduler=sched, clean_weight=r.clean_weight, augment=augment,
        eval_fn=None if test is None else epoch_check(r.dataset, test, threat, eval_n, device),
        val_fn=None if val is None else validation_check(r.dataset, val, threat, val_n, device),
        label_smoothing=r.label_smoothing, loss=r.loss, trades_beta=r.trades_beta, ema_decay=r.ema_decay,
        select=r.select, early_stop_drop=r.early_stop_drop, replay=r.replay, runtime=runtime, **trainer_kwargs,
    )
    return trainer, batches
