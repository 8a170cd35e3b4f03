"""The training loop shared by ATL and every baseline; they differ only in their inner step
(:mod:`adv_transport.methods`).

Per batch ``(x, y, idx)``: draw augmentation parameters (if any) for this visit, let the method perturb the batch
(ATL reads delta from its bank by ``idx`` and runs the Langevin sampler), take one optimizer step on the perturbed
batch (plus ``clean_weight`` times the clean loss, if set), then let the method commit (ATL writes delta back).
The loop counts input-gradient and parameter-gradient evaluations (one per example per backward pass) and, apart,
forward passes without a gradient (ATL's KL chain target), logs one JSON line per epoch, and checkpoints atomically
so that a killed run resumes bit-identically on CPU.

Modes: :meth:`Trainer.fit` trains the model in the modes it finds (a submodule the user put in eval mode, e.g. a
frozen batch-norm, stays in eval mode and is not updated; a model in eval mode as a whole is trained in train mode)
and leaves every module in the mode it found it in.

Resuming part-way through an epoch: an :class:`~adv_transport.data.IndexedBatches` order depends only on (seed,
epoch). Any other loader (a shuffling ``torch.utils.data.DataLoader``) is replayed: the trainer records the random
states its order depends on at the start of every epoch (torch, numpy and Python global states and the generators
of the loader and its samplers), stores them in checkpoints, and on resume re-creates that epoch's order from them,
skipping the batches already done. This is exact for loaders whose randomness comes from those states (DataLoader
with RandomSampler, with or without ``generator=``, any ``num_workers`` without persistent workers); a loader with
persistent workers is refused mid-epoch (its workers' random states cannot be replayed).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import Augmented, RandomCropFlip
from .checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_states, set_rng_states
from .errors import ConfigError, EmptyLoaderError, MissingIndexError, NonFiniteLossError, NonFiniteParameterError
from .methods import InnerStep
from .modes import capture_modes, ensure_mode, restore_modes
from .threat import check_unit_range

# one plain line per finished epoch at INFO (silent unless the application configures logging, as the command line
# and the benchmark scripts do without progress bars: :func:`log_epochs`)
logger = logging.getLogger(__name__)


class _EpochLines(logging.Handler):
    """Writes each record's message as a line to ``stream``, or to whatever ``sys.stderr`` is at the time."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=self.stream or sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise into the training loop
            self.handleError(record)


def log_epochs(stream=None) -> None:
    """Print the trainer's one-line epoch summaries (``logging`` INFO of ``adv_transport.trainer``) to ``stream``
    (default: stderr): for runs without progress bars, whose output goes to a file. Calling it again changes the
    stream; no line is printed twice."""
    for handler in [h for h in logger.handlers if isinstance(h, _EpochLines)]:
        logger.removeHandler(handler)
    logger.addHandler(_EpochLines(stream))
    logger.setLevel(logging.INFO)


def epoch_line(record: dict, epochs: int) -> str:
    """``epoch 3/15: train loss 1.2346, adversarial acc 34.5 %; val PGD 31.2 % (clean 52.0 %); test PGD 30.1 % (clean
    55.0 %); 67.2 s (training 201 s so far)``: the parts the record has."""
    parts = [f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, adversarial acc "
             f"{100 * record['train_adv_acc']:.1f} %"]
    for name, prefix in (("val", "val_"), ("test", "")):
        if f"{prefix}pgd_acc" in record:
            clean = record.get(f"{prefix}clean_acc")
            parts.append(f"{name} PGD {record[f'{prefix}pgd_acc']:.1f} %"
                         + ("" if clean is None else f" (clean {clean:.1f} %)"))
    secs = lambda v: f"{v:.1f}" if v < 100 else f"{v:.0f}"  # noqa: E731
    parts.append(f"{secs(record['epoch_seconds'])} s (training {secs(record['train_seconds'])} s so far)")
    return "; ".join(parts)

SCHEDULER_STEPS = ("batch", "epoch")
LOSSES = ("ce", "trades")
SELECTIONS = ("last", "best")


def _loader_generators(batches) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects a loader draws its order from (its own, its sampler's, its batch
    sampler's sampler's), in a fixed order."""
    found: list[torch.Generator] = []
    for owner in (
        batches,
        getattr(batches, "sampler", None),
        getattr(getattr(batches, "batch_sampler", None), "sampler", None),
    ):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found



# the optimizer's implementation choices: how it steps, not what it has learnt
_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def _keep_implementation(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """``saved`` (an optimizer state dict) with the current ``optimizer``'s implementation choices (fused, foreach,
    ...) in its param groups: a checkpoint written on another device, or before the optimizer was fused on GPUs,
    resumes with the implementation this run built (torch's ``load_state_dict`` would take the saved one, and a
    fused optimizer that is no longer fused breaks ``GradScaler``)."""
    groups = [
        {**g, **{k: cur[k] for k in _IMPLEMENTATION if k in cur}}
        for g, cur in zip(saved["param_groups"], optimizer.param_groups)
    ]
    return {**saved, "param_groups": groups + saved["param_groups"][len(groups):]}

class Trainer:
    """Adversarial training with any inner step, optimizer and LR scheduler.

    Args:
        model: the classifier (inputs in [0, 1], logits out).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        method: the inner step (:class:`~adv_transport.methods.ATL`, ``PGD``, ``FGSMRS``, ``NFGSM``, ``Clean``).
        scheduler: optional LR scheduler, stepped after every batch (``scheduler_step='batch'``) or epoch.
        clean_weight: weight of an added clean cross-entropy term (0 = adversarial loss only).
        augment: optional :class:`~adv_transport.augment.RandomCropFlip`, applied after adding delta.
        run_dir: folder for ``checkpoint.pt`` and ``log.jsonl`` (nothing is written when None).
        checkpoint_every: also checkpoint every this many steps inside an epoch (0 = at epoch ends only).
        checkpoint_epochs: checkpoint at the end of every this many epochs (and of the last one, and of an early stop);
            1 = every epoch. A larger value saves the time of writing a large bank every epoch (CIFAR-10's two
            float32 chains: 1.2 GB, several seconds) at the price of redoing up to that many epochs after a crash
            (bit-identically for a bank in memory; a memory-mapped bank is not written into checkpoints, so it gains
            nothing there, and is not rolled back).
        eval_fn: ``eval_fn(model) -> dict`` run after each epoch (e.g. clean and PGD accuracy on held-out data).
        progress: show a tqdm progress bar.
        config: a JSON-serialisable description of the run, stored in checkpoints.
        label_smoothing: label smoothing of the training cross-entropy (0 = none).
        loss: ``ce`` (cross-entropy on the perturbed batch) or ``trades`` (Zhang et al. 2019: cross-entropy on the
            clean batch plus ``trades_beta`` times KL(p(x) || p(x_adv))).
        ema_decay: keep an exponential moving average of the parameters and buffers (weight averaging), updated
            after every optimizer step with this decay (e.g. 0.999); the averaged model is the one evaluated. 0 (or
            None): no averaging.
        val_fn: ``val_fn(model) -> dict`` with ``val_pgd_acc`` (and ``val_clean_acc``), run after each epoch on a
            validation split of the *training* data; it drives ``select`` and ``early_stop_drop``.
        select: ``last`` (the final weights) or ``best`` (the epoch with the highest ``val_pgd_acc``, ties broken by
            ``val_clean_acc``); :meth:`final_model` returns the selected model.
        replay: train on each batch this many times in a row (Free-AT's minibatch replay, Shafahi et al. 2019;
            divide the epochs by it for the same cost). A per-batch LR scheduler steps once per replay.
        early_stop_drop: stop training when ``val_pgd_acc`` falls more than this many points below its best so far
            (Wong et al. 2020's guard against catastrophic overfitting); the best epoch's weights are kept.
        runtime: how the steps run beyond one process on one device (:class:`adv_transport.distributed.Runtime`:
            DistributedDataParallel, a sharded bank, per-example random numbers, mixed precision, statistics kept on
            the device); None runs everything here, as before.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        method: InnerStep,
        *,
        scheduler: Any = None,
        scheduler_step: str = "batch",
        clean_weight: float = 0.0,
        augment: RandomCropFlip | None = None,
        run_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        checkpoint_epochs: int = 1,
        eval_fn: Callable[[nn.Module], dict] | None = None,
        progress: bool = True,
        config: dict | None = None,
        label_smoothing: float = 0.0,
        loss: str = "ce",
        trades_beta: float = 6.0,
        ema_decay: float | None = 0.0,
        val_fn: Callable[[nn.Module], dict] | None = None,
        select: str = "last",
        early_stop_drop: float | None = None,
        replay: int = 1,
        runtime: Any = None,
    ):
        if loss not in LOSSES:
            raise ConfigError(f"loss {loss!r} not accepted; accepted: {', '.join(LOSSES)}")
        if select not in SELECTIONS:
            raise ConfigError(f"select {select!r} not accepted; accepted: {', '.join(SELECTIONS)}")
        if not (0 <= label_smoothing < 1):
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        ema_decay = 0.0 if ema_decay is None else ema_decay
        if not (0 <= ema_decay < 1):
            raise ConfigError(f"ema_decay must be in [0, 1) (0 or None: no weight averaging), got {ema_decay!r}")
        if (select == "best" or early_stop_drop is not None) and val_fn is None:
            raise ConfigError(
                "select='best' and early_stop_drop need a val_fn (a validation split of the training set)"
            )
        if int(replay) < 1:
            raise ConfigError(f"replay must be an integer >= 1 (visits of each batch in a row), got {replay!r}")
        if scheduler_step not in SCHEDULER_STEPS:
            raise ConfigError(f"scheduler_step {scheduler_step!r} not accepted; accepted: {', '.join(SCHEDULER_STEPS)}")
        if not (math.isfinite(clean_weight) and clean_weight >= 0):
            raise ConfigError(f"clean_weight must be a finite number >= 0, got {clean_weight!r}")
        if not isinstance(method, InnerStep):
            raise ConfigError(f"method must be an adv_transport.methods.InnerStep, got {type(method).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.scheduler = scheduler
        self.scheduler_step = scheduler_step
        self.clean_weight = float(clean_weight)
        self.augment = augment
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        if not isinstance(checkpoint_epochs, int) or isinstance(checkpoint_epochs, bool) or checkpoint_epochs < 1:
            raise ConfigError(f"checkpoint_epochs must be an integer >= 1 (1: every epoch), got {checkpoint_epochs!r}")
        self.checkpoint_epochs = int(checkpoint_epochs)
        self.eval_fn = eval_fn
        self.progress = progress
        self.config = dict(config or {})
        self.replay = int(replay)
        self.label_smoothing = float(label_smoothing)
        self.loss = loss
        self.trades_beta = float(trades_beta)
        self.val_fn = val_fn
        self.select = select
        self.early_stop_drop = early_stop_drop
        self.ema = None
        if ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.best: dict | None = None  # {"epoch", "val_pgd_acc", "val_clean_acc", "state"} of the selected epoch
        self.stopped_early_at: int | None = None
        # progress state (all of it goes into checkpoints)
        self.epoch = 0
        self.step = 0  # next step to run within self.epoch
        # forward_evals: forward passes without a gradient (ATL's KL chain target), counted apart from gradient evals
        self.counts = {"input_grad_evals": 0, "param_grad_evals": 0, "forward_evals": 0, "examples": 0}
        self.elapsed = 0.0  # training seconds (evaluation excluded)
        self.eval_seconds = 0.0
        self.history: list[dict] = []
        self._epoch_stats = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self._loader_rng = None  # random states at the start of the current epoch (loaders other than IndexedBatches)
        self._train_modes = None  # the modes the model trains in, set by fit
        self._round = 0  # which replay of the current batch
        self.runtime = runtime
        if runtime is not None:
            runtime.attach(self)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoint.pt"

    @property
    def log_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "log.jsonl"

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "adv_transport.checkpoint/1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "method_info": self.method.describe(),
            "rng": rng_states(),
            "epoch": self.epoch,
            "step": self.step,
            "counts": dict(self.counts),
            "elapsed": self.elapsed,
            "eval_seconds": self.eval_seconds,
            "history": list(self.history),
            "epoch_stats": dict(self._epoch_stats),
            "loader_rng": self._loader_rng,
            "config": self.config,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "best": self.best,
            "stopped_early_at": self.stopped_early_at,
            "grad_scaler": None if self._scaler is None else self._scaler.state_dict(),
        }

    @property
    def _scaler(self):
        """The float16 GradScaler of the runtime, if any (its scale is part of a bit-identical resume)."""
        return None if self.runtime is None else self.runtime.scaler

    def save_checkpoint(self) -> Path | None:
        if self.checkpoint_path is None:
            return None
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteParameterError(
                    f"parameter {name!r} is not finite at epoch {self.epoch} step {self.step}; the checkpoint was not "
                    f"overwritten (last good one: {self.checkpoint_path})",
                    epoch=self.epoch,
                    step=self.step,
                    checkpoint=str(self.checkpoint_path),
                )
        if self.runtime is not None:  # every rank's file, then rank 0's checkpoint.pt
            return self.runtime.save_checkpoint(self)
        return atomic_save(self.state_dict(), self.checkpoint_path, keep_previous=True)  # and checkpoint.prev.pt

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint: everything is read and checked first, then applied; if any part fails (a model of
        another architecture, a mismatching bank, a corrupt optimizer state), nothing of this trainer changes."""
        stored = state.get("method_info", {}).get("method")
        if stored != self.method.name:
            raise ConfigError(f"checkpoint was trained with method {stored!r}, this run uses {self.method.name!r}")
        try:
            progress = {
                "epoch": int(state["epoch"]),
                "step": int(state["step"]),
                "counts": dict(state["counts"]),
                "elapsed": float(state["elapsed"]),
                "eval_seconds": float(state.get("eval_seconds", 0.0)),
                "history": list(state["history"]),
                "epoch_stats": dict(state["epoch_stats"]),
                "loader_rng": state.get("loader_rng"),
            }
            parts = {k: state[k] for k in ("model", "optimizer", "method", "rng")}
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"the checkpoint is incomplete or corrupt ({type(e).__name__}: {e}); nothing was loaded"
            ) from None
        if hasattr(self.method, "bank"):  # checked before anything is applied
            self.method.bank.check_state_dict(parts["method"]["bank"])
        backup = {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict()),
            "ema": None if self.ema is None else copy.deepcopy(self.ema.state_dict()),
            "rng": rng_states(),
        }
        try:
            self.model.load_state_dict(parts["model"])
            self.optimizer.load_state_dict(_keep_implementation(parts["optimizer"], self.optimizer))
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            set_rng_states(parts["rng"])
            self.method.load_state_dict(parts["method"])  # last: the bank can be large, it is not backed up
        except BaseException:
            self.model.load_state_dict(backup["model"])
            self.optimizer.load_state_dict(backup["optimizer"])
            if backup["scheduler"] is not None:
                self.scheduler.load_state_dict(backup["scheduler"])
            if backup["ema"] is not None:
                self.ema.load_state_dict(backup["ema"])
            set_rng_states(backup["rng"])
            raise
        self.epoch, self.step = progress["epoch"], progress["step"]
        # checkpoints written before forward_evals lack it: the method made its forward passes at every visit
        self.counts = {"forward_evals": progress["counts"].get("examples", 0) * self.method.extra_forward_passes,
                       **progress["counts"]}
        self.elapsed = progress["elapsed"]
        self.eval_seconds = progress["eval_seconds"]
        self.history = progress["history"]
        self._epoch_stats = progress["epoch_stats"]
        self._loader_rng = progress["loader_rng"]
        if self._scaler is not None and state.get("grad_scaler") is not None:
            self._scaler.load_state_dict(state["grad_scaler"])
        self.best = state.get("best")
        self.stopped_early_at = state.get("stopped_early_at")

    def resume(self, path: str | Path | None = None) -> bool:
        """Resume from ``path`` (default: this run's checkpoint). Returns False when there is none to resume."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None or not (path.is_file() or (path.is_dir() and (path / "checkpoint.pt").is_file())):
            return False
        state = load_checkpoint(path)
        self.load_state_dict(state)
        if self.runtime is not None:  # this rank's random states and bank shard
            self.runtime.resumed(self, state, path)
        if self.log_path is not None and (self.runtime is None or self.runtime.is_main):
            # the log holds exactly the epochs the checkpoint knows
            atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.log_path)
        return True

    # ------------------------------------------------------------------ the loop
    def _batches(self, batches, epoch: int, start_step: int):
        if hasattr(batches, "iterate"):
            yield from batches.iterate(epoch, start_step)
            return
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        if hasattr(getattr(batches, "sampler", None), "set_epoch"):
            batches.sampler.set_epoch(epoch)
        generators = _loader_generators(batches)
        if start_step == 0:
            self._loader_rng = {"rng": rng_states(), "generators": [g.get_state() for g in generators]}
            yield from batches
            return
        # resumed part-way through the epoch: replay the epoch's order from the states recorded at its start
        if self._loader_rng is None or len(self._loader_rng["generators"]) != len(generators):
            raise ConfigError(
                f"cannot resume at epoch {epoch} step {start_step} with this loader: the checkpoint holds no record of "
                "the random state its order was drawn from (written by an older version or with another kind of "
                "loader), so the remaining batches would differ from the interrupted run's. Resume from an epoch "
                "boundary, or train with adv_transport.IndexedBatches, whose order depends only on (seed, epoch)."
            )
        if getattr(batches, "persistent_workers", False) and getattr(batches, "num_workers", 0) > 0:
            raise ConfigError(
                f"cannot resume at epoch {epoch} step {start_step} with a DataLoader with persistent_workers=True: "
                "the workers' random states cannot be replayed. Use persistent_workers=False or "
                "adv_transport.IndexedBatches."
            )
        now = rng_states()
        set_rng_states(self._loader_rng["rng"])
        for g, st in zip(generators, self._loader_rng["generators"]):
            g.set_state(st)
        iterator = iter(batches)
        try:
            for _ in range(start_step):
                next(iterator)
        except StopIteration:
            set_rng_states(now)
            return
        set_rng_states(now)  # the checkpoint's states: the next batch is drawn as in the interrupted run
        yield from iterator

    @staticmethod
    def _unpack(batch, epoch: int, step: int):
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            n = len(batch) if isinstance(batch, (tuple, list)) else type(batch).__name__
            raise MissingIndexError(
                f"epoch {epoch} step {step}: the loader yielded a batch of {n} items; the trainer needs (x, y, idx) "
                "with idx the dataset index of each example (the bank is addressed by it). Wrap your dataset in "
                "adv_transport.data.IndexedDataset or return the index from __getitem__."
            )
        x, y, idx = batch
        if (
            not isinstance(idx, torch.Tensor)
            or idx.dim() != 1
            or idx.numel() != x.shape[0]
            or torch.is_floating_point(idx)
        ):
            raise MissingIndexError(
                f"epoch {epoch} step {step}: the third item of each batch must be a 1-d integer tensor of {x.shape[0]} "
                f"dataset indices, got {type(idx).__name__} {tuple(getattr(idx, 'shape', ()))}"
            )
        return x, y, idx

    def _training_modes(self) -> None:
        """Put the model back in the modes it trains in (cheap when nothing changed)."""
        if self._train_modes is None:
            ensure_mode(self.model, True)
        else:
            restore_modes(self._train_modes)

    def _train_step(self, x, y, idx, t: float) -> tuple[float, int]:
        model = self.model
        self._training_modes()
        view = outer = model
        rt = self.runtime
        if rt is not None:  # inner steps on the bare module, the training pass through DDP; keyed random numbers
            view, outer = rt.views
            self.method.visit = rt.visit(self.epoch, idx, self._round)
        if self.augment is not None:
            params = self.augment.sample(x) if rt is None else rt.augment_params(self.augment, x, self.method.visit)
            view = Augmented(view, params, self.augment.padding)
            outer = Augmented(outer, params, self.augment.padding)
        x_adv = self.method.perturb(view, x, y, idx, t)
        if self.method.wants_input_grad:  # free ATL: the same backward also gives the input gradient
            x_adv = x_adv.detach().requires_grad_(True)
        self._training_modes()
        view = outer
        logits = view(x_adv)
        clean_passes = 0
        if self.loss == "trades":
            clean_logits = view(x)
            loss = F.cross_entropy(clean_logits, y, label_smoothing=self.label_smoothing)
            loss = loss + self.trades_beta * F.kl_div(
                F.log_softmax(logits, 1), F.softmax(clean_logits, 1), reduction="batchmean"
            )
            clean_passes = 1
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.clean_weight > 0:
            loss = loss + self.clean_weight * F.cross_entropy(view(x), y, label_smoothing=self.label_smoothing)
            clean_passes += 1
        extra = self.method.regularizer(logits, y)
        if extra is not None:
            loss = loss + extra
        loss_value = loss.detach()
        deferred = rt is not None and rt.sync_every > 1  # no host synchronisation: checked every sync_every steps
        bad = False if deferred else not bool(torch.isfinite(loss_value))
        where = ""
        if not deferred and rt is not None and rt.distributed:  # every rank stops at the same step, or none does
            ranks = rt.ranks_agreeing(bad)
            bad, where = ranks > 0, f" on {ranks} of the {rt.world_size} ranks"
        if bad:
            self.method.discard()
            ckpt = str(self.checkpoint_path) if self.checkpoint_path and self.checkpoint_path.is_file() else None
            raise NonFiniteLossError(
                f"non-finite training loss{where} (this rank's: {loss_value.item()}) at epoch {self.epoch} step "
                f"{self.step}; stopped "
                "before the parameter and bank updates of that step. "
                f"Last good checkpoint: {ckpt or 'none written yet'}. "
                "Lower the learning rate or the Langevin step size, then resume.",
                epoch=self.epoch,
                step=self.step,
                checkpoint=ckpt,
            )
        self.optimizer.zero_grad(set_to_none=True)
        scaler = None if rt is None else rt.scaler  # float16 mixed precision
        # gradients into the parameters only (and the input, for free ATL): a sample whose graph the inner
        # step kept (the consistency term's anchor) is a leaf that requires grad, and its gradient, the first layer's
        # costly backward to the input, would otherwise be computed and thrown away
        # (every parameter that requires grad: the optimised ones and the model's, which DDP's reducer waits for)
        wanted = {id(p): p for p in model.parameters() if p.requires_grad}
        for group in self.optimizer.param_groups:
            wanted.update((id(p), p) for p in group["params"] if p.requires_grad)
        wanted = list(wanted.values()) + ([x_adv] if self.method.wants_input_grad else [])
        (loss if scaler is None else scaler.scale(loss)).backward(inputs=wanted or None)
        if self.method.wants_input_grad:
            self.method.receive_input_grad(x_adv.grad)
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(model)
        self.method.commit()
        if self.scheduler is not None and self.scheduler_step == "batch":
            self.scheduler.step()
        b = x.shape[0]
        self.counts["input_grad_evals"] += b * self.method.input_grad_passes
        self.counts["param_grad_evals"] += b * (1 + clean_passes + self.method.extra_param_passes)
        self.counts["forward_evals"] += b * self.method.extra_forward_passes
        self.counts["examples"] += b
        if deferred:  # statistics stay on the device until the next sync
            return loss_value.double() * b, (logits.argmax(1) == y).sum()
        return float(loss.detach()) * b, int((logits.argmax(1) == y).sum())

    def fit(self, batches, epochs: int, eval_fn: Callable[[nn.Module], dict] | None = None) -> list[dict]:
        """Train until ``epochs`` epochs are done (continuing from the current epoch/step after :meth:`resume`)."""
        eval_fn = eval_fn or self.eval_fn
        try:
            steps_per_epoch = len(batches)
        except TypeError:
            steps_per_epoch = None
        if steps_per_epoch == 0:
            raise EmptyLoaderError("the loader yields no batches (empty dataset?)")
        found = capture_modes(self.model)
        ensure_mode(self.model, True)  # a model in eval mode as a whole trains in train mode; frozen parts stay
        self._train_modes = capture_modes(self.model)
        try:
            while self.epoch < epochs and self.stopped_early_at is None:
                self._run_epoch(batches, steps_per_epoch, eval_fn, epochs)
        finally:
            self._train_modes = None
            restore_modes(found)  # every module as the user left it
        return self.history

    @property
    def evaluated_model(self) -> nn.Module:
        """The model the per-epoch checks see: the weight average when ``ema_decay`` is set, else the model."""
        return self.model if self.ema is None else self.ema.module

    def final_model(self) -> nn.Module:
        """The model to report: with ``select='best'`` (or after an early stop) a copy of the evaluated model holding
        the best validation epoch's weights; else :attr:`evaluated_model`. Eval mode is left to the caller."""
        if self.best is None or (self.select == "last" and self.stopped_early_at is None):
            return self.evaluated_model
        import copy

        model = copy.deepcopy(self.evaluated_model)
        model.load_state_dict(self.best["state"])
        return model

    def _validate(self, record: dict) -> None:
        """Validation check of the epoch just trained: keep the best state, stop on a collapse."""
        val = self.val_fn(self.evaluated_model)
        record.update(val)
        score = (val["val_pgd_acc"], val.get("val_clean_acc", 0.0))
        if self.best is None or score > (self.best["val_pgd_acc"], self.best["val_clean_acc"]):
            state = {k: v.detach().clone() for k, v in self.evaluated_model.state_dict().items()}
            self.best = {"epoch": self.epoch + 1, "val_pgd_acc": score[0], "val_clean_acc": score[1], "state": state}
        record["best_epoch"] = self.best["epoch"]
        if self.early_stop_drop is not None and val["val_pgd_acc"] < self.best["val_pgd_acc"] - self.early_stop_drop:
            self.stopped_early_at = self.epoch + 1
            record["stopped_early"] = True

    def _run_epoch(self, batches, steps_per_epoch, eval_fn, epochs):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=steps_per_epoch,
            initial=self.step,
            desc=f"{self.method.name} epoch {self.epoch + 1}/{epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        stats = self._epoch_stats
        for batch in self._batches(batches, self.epoch, self.step):
            x, y, idx = self._unpack(batch, self.epoch, self.step)
            if self.runtime is None or not self.runtime.data_checked:  # else checked once, when loaded
                check_unit_range(x, f"epoch {self.epoch} step {self.step}: training inputs")
            t = self.epoch + (self.step / steps_per_epoch if steps_per_epoch else 0.0)
            for replay_round in range(self.replay):  # Free-AT's minibatch replay (1 = each batch once)
                self._round = replay_round
                start = time.perf_counter()
                loss_sum, correct = self._train_step(x, y, idx, t)
                dt = time.perf_counter() - start
                self.elapsed += dt
                stats["seconds"] += dt
                stats["loss_sum"] += loss_sum
                stats["correct"] += correct
                stats["seen"] += x.shape[0]
            self.step += 1
            bar.update(1)
            if self.runtime is None or self.runtime.step_done(self):  # else read every sync_every steps
                bar.set_postfix(
                    loss=f"{stats['loss_sum'] / stats['seen']:.3f}", acc=f"{stats['correct'] / stats['seen']:.3f}"
                )
            # a step checkpoint at the epoch's last step is left to the epoch-end rule (checkpoint_epochs): it would
            # write the bank every epoch, and under a stamp that marks no epoch end
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step != steps_per_epoch:
                self.save_checkpoint()
        bar.close()
        if stats["seen"] == 0:
            raise EmptyLoaderError(f"epoch {self.epoch}: the loader yielded no batches")
        if self.scheduler is not None and self.scheduler_step == "epoch":
            self.scheduler.step()
        if self.runtime is not None:  # totals over every rank, read from the device
            self.runtime.sync_stats(self)
        record = {
            "epoch": self.epoch + 1,
            "method": self.method.name,
            "train_loss": stats["loss_sum"] / stats["seen"],
            "train_adv_acc": stats["correct"] / stats["seen"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": stats["seconds"],
            "train_seconds": self.elapsed,
            **self.counts,
        }
        if eval_fn is not None or self.val_fn is not None:
            start = time.perf_counter()
            if self.val_fn is not None:
                self._validate(record)
            if eval_fn is not None:
                record.update(eval_fn(self.evaluated_model))
            self.eval_seconds += time.perf_counter() - start
            record["eval_seconds"] = self.eval_seconds
        self.history.append(record)
        if (self.runtime is None or self.runtime.is_main) and logger.isEnabledFor(logging.INFO):
            logger.info(epoch_line(record, epochs))  # the line is built only when someone listens
        self.epoch += 1
        self.step = 0
        self._epoch_stats = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        if self.log_path is not None and (self.runtime is None or self.runtime.is_main):
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.epoch % self.checkpoint_epochs == 0 or self.epoch >= epochs or self.stopped_early_at is not None:
            self.save_checkpoint()
