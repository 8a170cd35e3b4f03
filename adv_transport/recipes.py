"""Documented training recipes, as data: the settings each method is run with by default, per dataset.

Every method goes through the same :class:`~adv_transport.trainer.Trainer`; only the inner step and the settings
below differ. :mod:`adv_transport.training` turns a :class:`Recipe` into a training run. The MNIST recipes were chosen
by measurement on the small MNIST CNN (the runs are in the README, "Recipes"). The CIFAR-10 recipes follow Wong et al.
2020 (PreAct-ResNet-18, SGD with a one-cycle learning rate, crop and flip); ATL's Langevin step there was chosen on
the small CNN of the CPU benchmark (JPEG-lossy copy), not on PreAct-ResNet-18.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .bank import DTYPES, INITS
from .errors import ConfigError
from .langevin import NOISES
from .methods import CHAIN_TARGETS, COPY_SELECTS
from .modes import MODEL_MODES
from .threat import NORMS
from .trainer import LOSSES, SELECTIONS

METHODS = ("atl", "pgd", "fgsm-rs", "n-fgsm", "fgsm-pgi", "atta", "free-atl", "clean")
# the methods whose inner step is a Langevin chain (their step is ``eta``; every other method's is ``step_size``)
LANGEVIN_METHODS = ("atl", "free-atl")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("onecycle", "constant")


def _setting(default, help: str, choices=None, cli: bool = True):
    """A recipe field with its command-line description: ``adv-transport train`` has one flag per field with
    ``cli=True`` (``--batch-size`` for ``batch_size``), typed from the annotation, with these ``choices``."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli})


def _check_fields(names) -> None:
    """A :class:`ConfigError` naming the ``names`` that are no :class:`Recipe` field."""
    known = {f.name for f in dataclasses.fields(Recipe)}
    bad = sorted(set(names) - known)
    if bad:
        raise ConfigError(f"unknown recipe field(s) {bad}; known: {sorted(known)}")


@dataclass
class Recipe:
    """Everything that decides a training run besides the model and the data.

    Two names for two steps: ``eta`` is the Langevin step of ``atl`` and ``free-atl`` (``--eta``); ``step_size``
    is the attack step alpha of ``pgd``, ``fgsm-rs``, ``n-fgsm``, ``fgsm-pgi`` and ``atta`` (``--step-size``).
    Recipes written before ``eta`` existed stored ATL's eta as ``step_size``: :meth:`from_dict` reads them."""

    method: str = field(metadata={"help": "inner step", "choices": METHODS, "cli": False})
    dataset: str = field(metadata={"help": "dataset name", "cli": False})
    model: str = field(
        metadata={"help": "mnist-cnn, small-cnn, small-cnn-w<k>, preact-resnet18, wrn-<depth>-<width> (e.g. "
                          "wrn-28-10) or timm:<name>", "cli": True}
    )
    eps: float = field(metadata={"help": "threat radius (default 0.3 for MNIST, 8/255 for CIFAR-10)", "cli": True})
    norm: str = _setting("linf", "threat norm", NORMS)
    epochs: int = _setting(10, "training epochs")
    batch_size: int = _setting(128, "mini-batch size")
    optimizer: str = _setting("adam", "optimizer", OPTIMIZERS)
    lr: float = _setting(3e-3, "peak learning rate")
    momentum: float = _setting(0.9, "SGD momentum (Nesterov when > 0)")
    weight_decay: float = _setting(0.0, "weight decay")
    lr_schedule: str = _setting("onecycle", "learning-rate schedule, stepped per batch", LR_SCHEDULES)
    pct_start: float = _setting(0.4, "one-cycle schedule: share of the steps spent warming up")
    clean_weight: float = _setting(0.0, "weight of an added clean loss term")
    augment: bool = _setting(False, "random crop (pad 4) and flip after adding delta (default: on for CIFAR)")
    # inner-step settings (see adv_transport.methods); None means "the method's default"
    steps: int | None = _setting(None, "Langevin steps T (atl) or PGD steps (pgd)")
    eta: float | None = _setting(None, "Langevin step eta (atl, free-atl)")
    step_size: float | None = _setting(None, "attack step alpha (pgd, fgsm-rs, n-fgsm, fgsm-pgi, atta)")
    noise_scale: float = _setting(0.2, "Langevin noise scale s")
    noise: str = _setting("uniform", "Langevin noise", NOISES)
    copies: int = _setting(1, "bank copies K per example")
    bank_dtype: str = _setting("float32", "bank storage dtype", tuple(DTYPES))
    bank_init: str = _setting("zero", "bank start: clean (zero) or uniform in the ball", INITS)
    model_mode: str = _setting(
        "train", "model mode during the inner step (batch-stats: batch-norm running statistics untouched)", MODEL_MODES
    )
    eps_ramp: float = _setting(0.0, "grow eps linearly from 0 over this many epochs (0 = no warm-up)")
    noise_mult: float = _setting(2.0, "N-FGSM: start uniform in a box of this many eps")
    reset_every: int | None = _setting(None, "atl, atta, fgsm-pgi: forget the stored perturbations every N epochs")
    pgi_lam: float = _setting(10.0, "FGSM-PGI: weight of the output-consistency term")
    pgi_decay: float = _setting(0.3, "FGSM-PGI: gradient momentum decay")
    consistency: float = _setting(
        0.0, "ATL: weight of the output consistency between the chain's new and stored sample (FGSM-PGI's term)"
    )
    consistency_detached: bool = _setting(
        False, "ATL: the stored sample's logits are a constant target (no gradient through them, no extra pass)"
    )
    chain_momentum: float = _setting(0.0, "ATL: decay of a per-example velocity in the chain (0 = off)")
    chain_target: str = _setting("ce", "ATL: the chain's loss: ce, or kl (TRADES's KL to the clean output)",
                                 CHAIN_TARGETS)
    copy_select: str = _setting("random", "ATL with copies > 1: which chain a visit moves: random, or max-loss (the "
                                "one of highest loss now; K forward passes per visit)", COPY_SELECTS)
    # tricks available to every method (all off by default)
    label_smoothing: float = _setting(0.0, "label smoothing of the training loss")
    loss: str = _setting("ce", "ce, or trades: clean CE + trades_beta * KL(clean || adversarial)", LOSSES)
    trades_beta: float = _setting(6.0, "TRADES: weight of the KL term")
    ema_decay: float = _setting(0.0, "weight averaging: EMA of the parameters, the averaged model evaluated (0: none)")
    # model selection reads a validation split of the training set, which only the Python API holds out
    select: str = _setting("last", "best: the epoch with the best validation PGD accuracy", SELECTIONS, cli=False)
    early_stop_drop: float | None = _setting(
        None, "stop when validation PGD accuracy falls this many points below its best", cli=False
    )
    replay: int = _setting(1, "train on each batch this many times in a row (Free-AT's replay; epochs / replay)")
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "free-form notes", "cli": False})

    def __post_init__(self):
        if self.method in LANGEVIN_METHODS and self.step_size is not None:
            raise ConfigError(
                f"{self.method} takes a Langevin step eta (--eta, Recipe.eta), not step_size={self.step_size!r} "
                "(the attack step of pgd, fgsm-rs, n-fgsm, fgsm-pgi and atta)"
            )
        if self.method not in LANGEVIN_METHODS and self.eta is not None:
            raise ConfigError(
                f"eta (--eta) is the Langevin step of {', '.join(LANGEVIN_METHODS)}; {self.method} takes "
                f"step_size (--step-size), got eta={self.eta!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """The recipe stored as ``d`` (:meth:`to_dict`); fields it lacks take their defaults (a recipe written
        before a field existed was trained with it), an ATL recipe written before ``eta`` existed has its Langevin
        step under ``step_size``, and ``ema_decay=None`` (how "no weight averaging" was once written) is read as 0."""
        d = dict(d)
        if "ema_decay" in d and d["ema_decay"] is None:  # written while None meant "no weight averaging" (now 0)
            d["ema_decay"] = 0.0
        if d.get("method") in LANGEVIN_METHODS and d.get("step_size") is not None and d.get("eta") is None:
            d["eta"], d["step_size"] = d["step_size"], None
        _check_fields(d)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING and f.name not in d]
        if required:
            raise ConfigError(f"the stored recipe lacks the field(s) {required}")
        return cls(**d)

    def tricks(self) -> list[str]:
        """The tricks this recipe uses, as short labels (for result tables)."""
        out = []
        if self.eps_ramp > 0:
            out.append(f"eps warm-up {self.eps_ramp:g} ep")
        if self.ema_decay:
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
        if self.consistency > 0:
            out.append(f"consistency {self.consistency:g}" + (" (detached)" if self.consistency_detached else ""))
        if self.replay > 1:
            out.append(f"replay x{self.replay}")
        if self.method == "atl":  # the chain's options (ATL's only), where they differ from the plain chain
            if self.copies > 1:
                out.append(f"K {self.copies} chains")
            if self.chain_target != "ce":
                out.append(f"{self.chain_target.upper()} chain target")
            if self.copy_select != "random":
                out.append(f"{self.copy_select} copy")
            if self.chain_momentum > 0:
                out.append(f"chain momentum {self.chain_momentum:g}")
        return out

    def replace(self, **changes) -> Recipe:
        """A copy with the given fields changed (``None`` values are ignored)."""
        _check_fields(changes)
        changes = {k: v for k, v in changes.items() if v is not None}
        langevin = changes.get("method", self.method) in LANGEVIN_METHODS
        if langevin != (self.method in LANGEVIN_METHODS):
            # another kind of inner step: the step moves to the field that method reads (eta <-> step_size)
            step, field_, other = (self.step_size, "eta", "step_size") if langevin else (self.eta, "step_size", "eta")
            changes.setdefault(field_, step)
            changes.setdefault(other, None)
        return dataclasses.replace(self, **changes)

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
    # ATL: chains start uniform in the ball and take a large step per visit. A chain moves at most eta per visit, so
    # the authors' small eta from a clean start needs many epochs before the chains reach the eps surface and
    # robustness takes off; a uniform start and a larger eta remove that delay. The eta chosen was the smallest among
    # those with the best AutoAttack accuracy; more noise or Gaussian noise was weaker. FGSM-PGI's consistency term
    # (weight 10) added 2.4 points of validation AutoAttack and halved Square's drop; it costs a pass, and 15 epochs
    # with it scored within noise of 20. Weight 20 gives up 0.9 points of validation AutoAttack (89.4 against 90.4 %,
    # 3 seeds) for a Square drop of 1.1 instead of 1.7 points. Driving the chain by TRADES's KL to the clean output
    # instead of the cross-entropy then gave the best validation AutoAttack of the sweep, 91.0 % over 3 seeds, at a
    # Square drop of 1.3 (one more forward pass per visit): the only variant within a point of the best under 1.5.
    # Two chain steps per visit with PGD-40 AT's eps warm-up over 3 epochs, 12 epochs (the same gradient budget
    # within 7 %: 4 passes per example and epoch against 3), then scored 91.3 % over 3 seeds at a drop of 0.9 (without
    # the warm-up T = 2 never left chance): the default since, by a rule fixed before its runs
    # (benchmarks/mnist_sweep.py; the runs: README, "Recipes").
    ("atl", "mnist"): Recipe("atl", **_MNIST, epochs=12, steps=2, eta=0.1, noise_scale=0.2, bank_init="uniform",
                             consistency=20.0, chain_target="kl", eps_ramp=3),
    # free ATL: ATL's eta and noise (one step per visit, no warm-up), the chain advanced by the training pass's own
    # input gradient
    ("free-atl", "mnist"): Recipe(
        "free-atl", **_MNIST, epochs=20, steps=1, eta=0.1, noise_scale=0.2, bank_init="uniform"
    ),
    # PGD-40 AT at eps = 0.3 from scratch stays at chance, and so did N-FGSM; growing eps linearly from 0 over the
    # first 3 epochs lets them learn (README, "Recipes"). The same warm-up is given to every single-step baseline.
    ("pgd", "mnist"): Recipe("pgd", **_MNIST, epochs=10, steps=40, step_size=0.01, eps_ramp=3),
    ("fgsm-rs", "mnist"): Recipe("fgsm-rs", **_MNIST, epochs=10, step_size=0.375, eps_ramp=3),
    # N-FGSM's default noise of 2 eps (0.6 at MNIST eps = 0.3) did not train, nor did 0.5 eps; 1 eps did (README,
    # "Recipes").
    ("n-fgsm", "mnist"): Recipe("n-fgsm", **_MNIST, epochs=10, step_size=0.3, eps_ramp=3, noise_mult=1.0),
    # the bank-based prior art with the same warm-up as the other baselines; neither paper has an MNIST setting at
    # this step (FGSM-PGI: none; ATTA's code steps 0.01 over 60 epochs): steps scaled from their CIFAR-10 ones
    ("fgsm-pgi", "mnist"): Recipe("fgsm-pgi", **_MNIST, epochs=10, step_size=0.3, eps_ramp=3),
    ("atta", "mnist"): Recipe("atta", **_MNIST, epochs=10, step_size=0.15, eps_ramp=3, reset_every=10),
    ("clean", "mnist"): Recipe("clean", **_MNIST, epochs=5),
    # ATL: chosen by the CIFAR study's sweep on a validation split of the training set (README, "Recipes"): a step
    # larger than eps (every visit moves the chain to the far side of the ball along the gradient's sign, from where
    # it was), little noise (s = 0.2 made the chains mostly noise), FGSM-PGI's consistency term, the eps warm-up the
    # baselines have, two chains per example (one, drawn at random, moved per visit) and weight averaging (EMA 0.999,
    # the averaged model evaluated): together the sweep's best validation mean over 3 seeds (30.1 % AutoAttack
    # against 28.7 % with one chain and no averaging); the bank holds 2 copies (CIFAR-10: 1.2 GB in float32, 0.3 GB
    # with bank_dtype int8)
    ("atl", "cifar10"): Recipe(
        "atl", **_CIFAR, epochs=30, steps=1, eta=1.25 * 8 / 255, noise_scale=0.05, bank_init="uniform",
        consistency=10.0, eps_ramp=5, copies=2, ema_decay=0.999,
    ),
    # free ATL: ATL's chain (its consistency term needs a separate first pass, which free ATL does not have)
    ("free-atl", "cifar10"): Recipe(
        "free-atl", **_CIFAR, epochs=30, steps=1, eta=1.25 * 8 / 255, noise_scale=0.05, bank_init="uniform",
        eps_ramp=5,
    ),
    # without a warm-up PGD-10 AT and FGSM-RS stayed at chance on the small CNN (README, "Recipes")
    ("pgd", "cifar10"): Recipe("pgd", **_CIFAR, epochs=30, steps=10, step_size=2 / 255, eps_ramp=5),
    ("fgsm-rs", "cifar10"): Recipe("fgsm-rs", **_CIFAR, epochs=30, step_size=10 / 255, eps_ramp=5),
    ("n-fgsm", "cifar10"): Recipe("n-fgsm", **_CIFAR, epochs=30, step_size=8 / 255, eps_ramp=5),
    # FGSM-PGI: step eps, lam 10, momentum decay 0.3, reset every 40 epochs (inert within 30), as Jia et al. 2022's
    # code but for its label smoothing (0.6 on the true class), which these recipes leave out; ATTA: step 0.015 at
    # eps 0.031 (here eps/2), reset every 10 epochs, as Zheng et al. 2020's code but for its attack in eval mode
    # (these recipes keep every method's inner step in train mode). Both papers train without an eps warm-up.
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
    # data.dataset_flip; ImageNet: ResNet-50 from timm at RobustBench's eps 4/255, ATL with one bank copy: each is
    # 193 GB in int8 there)
    changes = {}
    if dataset == "imagenet":
        changes = {"model": "timm:resnet50", "eps": 4 / 255, **({"copies": 1} if method == "atl" else {})}
    return dataclasses.replace(RECIPES[(method, "cifar10")], dataset=dataset, **changes)


_MOVED = {
    "build_method": "adv_transport.training",
    "build_optimizer": "adv_transport.training",
    "build_training": "adv_transport.training",
    "epoch_check": "adv_transport.eval",
    "validation_check": "adv_transport.eval",
}


def __getattr__(name: str):
    """The run-building and per-epoch-check functions that used to live here (deprecated aliases, one release)."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import warnings

    warnings.warn(f"adv_transport.recipes.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
