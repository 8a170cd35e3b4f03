"""A training run assembled from a :class:`~adv_transport.recipes.Recipe`: the inner step, the optimizer and its LR
schedule, the model, the seeded batches and the :class:`~adv_transport.trainer.Trainer` that runs them."""

from __future__ import annotations

import torch

from .bank import AdversarialBank
from .errors import ConfigError
from .langevin import LangevinSampler
from .methods import ATL, ATTA, FGSMPGI, FGSMRS, NFGSM, PGD, Clean, FreeATL, InnerStep
from .recipes import LR_SCHEDULES, METHODS, OPTIMIZERS, Recipe
from .threat import ThreatModel


def build_method(
    r: Recipe, num_examples: int, shape: tuple[int, ...], seed: int = 0, bank_device: str | torch.device = "cpu",
    make_bank=AdversarialBank,
) -> InnerStep:
    """The inner step described by recipe ``r`` (ATL gets a bank sized for ``num_examples`` inputs of ``shape``, made
    by ``make_bank``: a distributed run's :meth:`~adv_transport.distributed.Runtime.bank` holds one rank's shard)."""
    threat = ThreatModel(r.norm, r.eps)
    threat.check_input_dim(int(torch.tensor(shape).prod()))
    if r.consistency and r.method != "atl":
        raise ConfigError(f"consistency is an ATL option (its chain's first pass gives the anchor logits); "
                          f"{r.method!r} has none (FGSM-PGI has its own: pgi_lam)")
    if r.consistency_detached and not (r.method == "atl" and r.consistency > 0):
        raise ConfigError("consistency_detached changes ATL's consistency term: it needs method 'atl' and "
                          f"consistency > 0, got method {r.method!r}, consistency {r.consistency!r}")
    if (r.chain_momentum or r.chain_target != "ce" or r.copy_select != "random") and r.method != "atl":
        raise ConfigError(f"chain_momentum, chain_target and copy_select change ATL's chain; {r.method!r} has none")
    if r.chain_momentum and make_bank is not AdversarialBank:
        raise ConfigError("chain momentum keeps its velocities beside a single-process bank: a Runtime's sharded "
                          "bank (distributed or GPU runs) does not support it yet")
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
        sampler = LangevinSampler(threat, r.eta or threat.eps / 10, r.noise_scale, r.steps or 1, r.noise, r.model_mode)
        if r.method == "free-atl":
            return FreeATL(bank, sampler, r.eps_ramp, r.reset_every or 0)
        return ATL(bank, sampler, r.eps_ramp, r.reset_every or 0, consistency=r.consistency,
                   consistency_detached=r.consistency_detached, chain_momentum=r.chain_momentum,
                   chain_target=r.chain_target, copy_select=r.copy_select)
    raise ConfigError(f"unknown method {r.method!r}; accepted: {', '.join(METHODS)}")


def build_optimizer(r: Recipe, params, steps_per_epoch: int):
    """Optimizer and per-batch LR scheduler of recipe ``r``. On a GPU the optimizer is torch's fused one: it steps
    without a host synchronisation, also under ``--amp fp16``, whose ``GradScaler`` otherwise reads on the host
    whether the gradients were finite; elsewhere torch's default implementation."""
    # parameters or param groups, each group's parameters as a list (a generator would be used up by the check)
    params = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = {"fused": True} if tensors and all(p.is_cuda for p in tensors) else {}
    if r.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay, **fused)
    elif r.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.momentum > 0, **fused
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
    from .eval import epoch_check, validation_check
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
