"""Inner steps of adversarial training: how each method turns a clean batch into the batch the model is trained on.

All methods run through the same training loop (:class:`adv_transport.trainer.Trainer`) and differ only here:

- ``clean``: no perturbation.
- ``pgd``: PGD-k from a uniform random start (Madry et al. 2018).
- ``fgsm-rs``: one signed step of size alpha (default 1.25 eps) from a uniform start, projected (Wong et al. 2020).
- ``n-fgsm``: one signed step of size alpha (default eps) from a start uniform in a k*eps box (default k = 2),
  *not* projected back to the eps ball, only to [0, 1] (de Jorge et al. 2022).
- ``atl``: Langevin adversarial transport: T warm-started Langevin steps from the sample kept in the bank.
- ``free-atl``: free ATL: the model trains on the stored sample, and the input gradient of that same backward pass
  advances the chain (one backward per batch; see :class:`FreeATL`).
- ``atta``: ATTA (Zheng et al., CVPR 2020): the bank's perturbation advanced by one projected signed step per visit
  (no noise), the bank reset every ``reset_every`` epochs (10 in the paper's code).
- ``fgsm-pgi``: FGSM-PGI (Jia et al., ECCV 2022, the momentum-prior variant FGSM-MEP): one FGSM step of size eps from
  the stored per-example perturbation; the stored one is advanced along a per-example gradient momentum; the training
  loss adds ``lam`` times the mean squared error between the logits at the stored and at the new perturbation.

``input_grad_passes`` is how many input-gradient evaluations each example costs per visit; ``extra_forward_passes``
how many forward passes without a gradient it costs besides (ATL's KL chain target: the clean output).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .accel import as_training_logits
from .attacks import fgsm, input_gradient, pgd
from .bank import AdversarialBank, _last_occurrence_rows
from .errors import ConfigError
from .langevin import LangevinSampler
from .modes import check_model_mode, model_mode
from .schedules import value_at
from .threat import ThreatModel


def warmed_up(threat: ThreatModel, t: float, ramp: float) -> ThreatModel:
    """The threat at progress ``t`` (epochs) under an eps warm-up of ``ramp`` epochs: eps grows linearly from 0 over
    the first ``ramp`` epochs (``ramp = 0``: no warm-up), then stays at eps."""
    if ramp <= 0 or t >= ramp:
        return threat
    return ThreatModel(threat.norm, threat.eps * max(t / ramp, 1e-3))


def _check_ramp(eps_ramp: float) -> float:
    if not eps_ramp >= 0:
        raise ConfigError(f"eps_ramp must be >= 0 epochs, got {eps_ramp!r}")
    return float(eps_ramp)


class InnerStep:
    """Base class of the inner steps: how a method turns a clean batch into the batch the model is trained on.

    ``perturb`` returns the inputs to train on; ``commit`` is called once the parameter step succeeded (ATL writes
    its bank there, so a failed step leaves the bank untouched).

    ``regularizer(logits, y)`` may return an extra training-loss term computed from the logits of the perturbed batch
    (FGSM-PGI's output consistency); ``extra_param_passes`` counts the additional backward passes through the model
    that term costs per example."""

    name = "base"
    input_grad_passes = 0
    extra_param_passes = 0
    extra_forward_passes = 0  # forward passes without a gradient per example per visit (not gradient evaluations)
    wants_input_grad = False  # True: the trainer hands over the training pass's input gradient (receive_input_grad)
    threat: ThreatModel | None = None

    def receive_input_grad(self, grad: torch.Tensor) -> None:
        """The gradient of the training loss with respect to the returned inputs (only if ``wants_input_grad``)."""

    def regularizer(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, t: float) -> torch.Tensor:
        raise NotImplementedError

    def commit(self) -> None:
        """Make the last perturbation permanent (no-op for stateless methods)."""

    def discard(self) -> None:
        """Forget the last perturbation without storing it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """The settings of this inner step, under the :class:`~adv_transport.recipes.Recipe` field names (stored in
        checkpoints as ``method_info`` and in the benchmarks' results)."""
        return {"method": self.name}


class Clean(InnerStep):
    """No perturbation: standard training through the same loop (the baseline without an inner step)."""

    name = "clean"

    def perturb(self, model, x, y, idx, t):
        return x


class _Attacked(InnerStep):
    """An inner step computed by an attack: a threat with an optional eps warm-up, and a model mode.
    ``described``: the attributes :meth:`describe` reports besides the method, model mode and warm-up."""

    described: tuple[str, ...] = ()

    def __init__(self, threat: ThreatModel, model_mode: str = "train", eps_ramp: float = 0.0):
        self.threat = threat
        self.model_mode = check_model_mode(model_mode)
        self.eps_ramp = _check_ramp(eps_ramp)

    def threat_at(self, t: float) -> ThreatModel:
        """The threat at progress ``t`` (epochs), see :func:`warmed_up` (the warm-up lets PGD-40 training at MNIST
        eps = 0.3 leave chance level)."""
        return warmed_up(self.threat, t, self.eps_ramp)

    def describe(self):
        settings = {k: getattr(self, k) for k in self.described}
        return {"method": self.name, **settings, "model_mode": self.model_mode, "eps_ramp_epochs": self.eps_ramp}


class PGD(_Attacked):
    """PGD-k adversarial training with a uniform random start."""

    name = "pgd"
    described = ("steps", "step_size")

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 40,
        step_size: float = 0.01,
        model_mode: str = "train",
        eps_ramp: float = 0.0,
    ):
        super().__init__(threat, model_mode, eps_ramp)
        if int(steps) < 1 or step_size <= 0:
            raise ConfigError(f"PGD needs steps >= 1 and step_size > 0, got steps={steps}, step_size={step_size}")
        self.steps, self.step_size = int(steps), float(step_size)
        self.input_grad_passes = self.steps

    def perturb(self, model, x, y, idx, t):
        with model_mode(model, self.model_mode):
            return pgd(model, x, y, self.threat_at(t), self.steps, self.step_size, random_start=True)


class FGSMRS(_Attacked):
    """FGSM from a uniform random start in the ball, step ``alpha`` (default 1.25 eps), projected."""

    name = "fgsm-rs"
    described = ("step_size",)
    input_grad_passes = 1

    def __init__(
        self, threat: ThreatModel, step_size: float | None = None, model_mode: str = "train", eps_ramp: float = 0.0
    ):
        super().__init__(threat, model_mode, eps_ramp)
        self.step_size = 1.25 * threat.eps if step_size is None else float(step_size)

    def perturb(self, model, x, y, idx, t):
        threat = self.threat_at(t)
        step = self.step_size * threat.eps / self.threat.eps
        with model_mode(model, self.model_mode):
            return fgsm(model, x, y, threat, step, start=x + threat.uniform(x))


class NFGSM(_Attacked):
    """N-FGSM: noise of k*eps, a step of ``alpha`` (default eps), clipped to [0, 1] but not to the eps ball."""

    name = "n-fgsm"
    described = ("step_size", "noise_mult")
    input_grad_passes = 1

    def __init__(
        self,
        threat: ThreatModel,
        step_size: float | None = None,
        noise_mult: float = 2.0,
        model_mode: str = "train",
        eps_ramp: float = 0.0,
    ):
        super().__init__(threat, model_mode, eps_ramp)
        self.step_size = threat.eps if step_size is None else float(step_size)
        self.noise_mult = float(noise_mult)

    def perturb(self, model, x, y, idx, t):
        threat = self.threat_at(t)
        scale = threat.eps / self.threat.eps
        if threat.norm == "linf":
            noise = (torch.rand_like(x) * 2 - 1) * threat.eps * self.noise_mult
            x_start = (x + noise).clamp(0, 1)
        else:
            x_start = x + ThreatModel(threat.norm, threat.eps * self.noise_mult).uniform(x)
        with model_mode(model, self.model_mode):
            return fgsm(model, x, y, threat, self.step_size * scale, start=x_start, project=False)


CHAIN_TARGETS = ("ce", "kl")  # the loss whose input gradient drives ATL's chain
COPY_SELECTS = ("random", "max-loss")  # which of an example's K chains a visit moves


def _anchored_gradient(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, keep_graph: bool = True,
    clean_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at ``x_adv`` (the anchor of the output-consistency term) and the input gradient there of the
    summed cross-entropy, or, given ``clean_probs``, of the summed ``KL(clean_probs || softmax(logits))`` (TRADES's
    inner loss), from one forward and one backward pass. ``keep_graph``: the logits keep their graph (the term's
    gradient flows through them); else they are detached and the graph is freed. The model's mode is the caller's."""
    x0 = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x0)
        if clean_probs is None:
            loss = F.cross_entropy(logits, y, reduction="sum")
        else:
            loss = F.kl_div(F.log_softmax(logits.float(), dim=1), clean_probs, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x0, retain_graph=keep_graph)
    logits = as_training_logits(model, logits)  # the loss term sees unscaled gradients (fp16 inner views)
    return (logits if keep_graph else logits.detach()), grad


def _l1_normalised(g: torch.Tensor) -> torch.Tensor:
    """``g`` divided, example by example, by its mean absolute value (MI-FGSM's and FGSM-PGI's momentum input)."""
    return g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


class _Stored:
    """Mixin of the inner steps that keep per-example perturbations between visits: they forget them all at the start
    of every ``reset_every``-th epoch (0 = never); ``_cycle`` is the reset period the stored ones belong to.

    They may add FGSM-PGI's output-consistency term to the training loss, ``consistency * mean((logits - anchor)**2)``
    with ``anchor`` the logits at the stored sample (``_anchor``, set by ``perturb``; 0 = off)."""

    reset_every = 0
    _cycle = 0
    consistency = 0.0
    _anchor = None
    _pending = None

    def _forget(self) -> None:
        raise NotImplementedError

    def _maybe_reset(self, t: float) -> None:
        if self.reset_every:
            cycle = int(t) // self.reset_every
            if cycle != self._cycle:
                self._forget()
                self._cycle = cycle

    def regularizer(self, logits, y):
        anchor, self._anchor = self._anchor, None
        if anchor is None or self.consistency == 0:
            return None
        return self.consistency * F.mse_loss(logits.float(), anchor.float())

    def discard(self):
        self._pending = None
        self._anchor = None


class ATL(_Stored, InnerStep):
    """Langevin adversarial transport: each example's chain read from the bank, advanced, written back.

    Per visit: read delta from the bank, advance it T Langevin steps, and (on commit) write it back.

    Args:
        bank, sampler: the bank of chains and the Langevin sampler (same threat).
        eps_ramp: eps warm-up in epochs (see :func:`warmed_up`); the Langevin step size scales with eps during it.
        reset_every: forget every stored chain at the start of every ``reset_every``-th epoch (0 = never).
        consistency: weight ``lam`` of an output-consistency term in the training loss, ``lam * mean((f(x + delta_new)
            - f(x + delta_old))**2)`` on the logits, gradients through both (FGSM-PGI's regulariser). The logits at
            the stored sample come from the chain's first input-gradient pass, so the term costs one more backward
            through that pass and no forward (0 = off).
        consistency_detached: the stored sample's logits are a constant target (no gradient through them): the term
            then costs no pass at all, and ATL T=1 stays at two passes per example. Its gradient no longer cancels
            between the two samples; in the CIFAR-10 study's sweep it broke training (weight 10: non-finite loss in
            the first epoch; weight 1: down to chance in epochs 5-8), so it is off by default.
        chain_momentum: decay ``mu`` of a per-example velocity in the chain (0 = off): at each step
            ``v <- g / mean|g| + mu * v`` (g the input gradient, normalised example by example as in MI-FGSM and
            FGSM-PGI) and the drift follows ``v`` in place of ``g`` (sign(v) in l-inf); the noise and the projection
            are unchanged. The velocities are kept between visits beside the bank (one float32 tensor the size of the
            training set, on the bank's device), forgotten with it, and saved in checkpoints. A momentum-carrying
            (heavy-ball, "underdamped") chain; single-copy, single-process banks only.
        chain_target: the loss whose input gradient drives the chain: ``ce`` (the cross-entropy of the label, the
            entropic worst case's energy) or ``kl``, TRADES's inner loss ``KL(f(x) || f(x + delta))`` against the
            clean output (one more forward pass per visit, on the clean batch, without gradient).
        copy_select: which of an example's K chains (bank copies, K > 1) a visit moves and trains on: ``random`` (one
            drawn uniformly, the authors' choice) or ``max-loss``, the one whose stored sample has the highest
            cross-entropy under the current model (K forward passes per visit, without gradient): of K samples of the
            entropic worst case, the most adversarial now, a greedy resampling of the chains. Single-process only.
    """

    name = "atl"

    def __init__(
        self,
        bank: AdversarialBank,
        sampler: LangevinSampler,
        eps_ramp: float = 0.0,
        reset_every: int = 0,
        *,
        consistency: float = 0.0,
        consistency_detached: bool = False,
        chain_momentum: float = 0.0,
        chain_target: str = "ce",
        copy_select: str = "random",
    ):
        if not (math.isfinite(consistency) and consistency >= 0):
            raise ConfigError(f"consistency must be a finite number >= 0, got {consistency!r}")
        if not (math.isfinite(chain_momentum) and 0 <= chain_momentum < 1):
            raise ConfigError(f"chain_momentum (the velocity's decay) must be in [0, 1), got {chain_momentum!r}")
        if chain_target not in CHAIN_TARGETS:
            raise ConfigError(f"chain_target {chain_target!r} is not accepted; accepted: {', '.join(CHAIN_TARGETS)}")
        if copy_select not in COPY_SELECTS:
            raise ConfigError(f"copy_select {copy_select!r} is not accepted; accepted: {', '.join(COPY_SELECTS)}")
        if copy_select != "random" and bank.copies < 2:
            raise ConfigError(f"copy_select {copy_select!r} chooses among an example's chains: it needs a bank with "
                              f"copies >= 2, got {bank.copies}")
        if copy_select != "random" and getattr(bank, "world_size", 1) != 1:
            raise ConfigError(f"copy_select {copy_select!r} reads every copy of a single-process bank; this bank is "
                              f"one shard of {bank.world_size}")
        if chain_momentum > 0 and bank.copies != 1:
            raise ConfigError(f"chain momentum keeps one velocity per example: it needs a bank with 1 copy, got "
                              f"{bank.copies} (set the recipe's copies to 1; ATL's CIFAR-10 default has 2)")
        if chain_momentum > 0 and getattr(bank, "world_size", 1) != 1:
            raise ConfigError(f"chain momentum keeps its velocities beside a single-process bank; this bank is one "
                              f"shard of {bank.world_size}")
        if bank.threat != sampler.threat:
            raise ConfigError(f"bank threat {bank.threat} and sampler threat {sampler.threat} differ")
        if int(reset_every) < 0:
            raise ConfigError(f"reset_every must be >= 0 epochs (0 = never), got {reset_every!r}")
        self.bank = bank
        self.sampler = sampler
        self.threat = sampler.threat
        self.input_grad_passes = sampler.steps
        self.eps_ramp = _check_ramp(eps_ramp)
        self.reset_every = int(reset_every)
        self.consistency = float(consistency)
        self.consistency_detached = bool(consistency_detached)
        self.extra_param_passes = 1 if self.consistency > 0 and not self.consistency_detached else 0
        self.chain_momentum = float(chain_momentum)
        self.chain_target = chain_target
        self.copy_select = copy_select
        # the clean output the KL is taken to; the K stored samples a max-loss visit chooses among
        self.extra_forward_passes = (1 if chain_target == "kl" else 0) + (bank.copies if copy_select != "random" else 0)
        # the velocities of a momentum chain, on the bank's device; None without momentum
        self.velocity = (torch.zeros((bank.num_examples,) + tuple(bank.shape), device=bank.storage.device)
                         if self.chain_momentum > 0 else None)
        self._cycle = 0  # index of the reset period the bank's contents belong to
        self._pending = None
        self._anchor = None

    def _forget(self) -> None:
        self.bank.reset()
        if self.velocity is not None:
            self.velocity.zero_()

    def _read(self, idx, x):
        """Read the batch's chains; with a keyed visit (set by the trainer of a distributed run, see
        :mod:`adv_transport.rng`) the copy choice, the start and the Langevin noise come from (seed, epoch, index)."""
        visit = getattr(self, "visit", None)
        if visit is None:
            return self.bank.read(idx, x), None
        copy = visit.copies(self.bank.copies, device=x.device)
        start = None
        if self.bank.init == "uniform":
            start = visit.uniform_start(self.bank.threat, x, copy, self.bank.copies)
        return self.bank.read(idx, x, copy=copy, start=start), visit.langevin()

    def _read_max_loss(self, model, idx, x, y, threat):
        """Every copy of the batch's chains, and per example the one of highest cross-entropy under ``model`` now."""
        if getattr(self, "visit", None) is not None:
            raise ConfigError("copy_select 'max-loss' is single-process only: a keyed (distributed) visit draws the "
                              "copy from the example's key")
        n = idx.numel()
        deltas, losses = [], []
        with torch.no_grad(), model_mode(model, self.sampler.model_mode):
            for k in range(self.bank.copies):
                d, _ = self.bank.read(idx, x, copy=torch.full((n,), k, dtype=torch.long))
                if threat is not self.threat:
                    d = threat.delta_to(x, x + d)
                deltas.append(d)
                losses.append(F.cross_entropy(model(x + d).float(), y, reduction="none"))
        best = torch.stack(losses).argmax(0)
        delta = torch.stack(deltas)[best, torch.arange(n, device=best.device)]
        return delta, best

    def perturb(self, model, x, y, idx, t):
        self._maybe_reset(t)
        threat = warmed_up(self.threat, t, self.eps_ramp)
        x = x.detach()
        if self.copy_select == "max-loss":
            (delta, copy), noise = self._read_max_loss(model, idx, x, y, threat), None
        else:
            (delta, copy), noise = self._read(idx, x)
            if threat is not self.threat:  # during the warm-up: the smaller ball, the step scaled with eps
                delta = threat.delta_to(x, x + delta)
        velocity = None if self.velocity is None else self.velocity[idx.to(self.velocity.device)].to(x.device)
        # the sampler's steps, each gradient taken here: the logits at the stored sample (with their graph) come from
        # the first step, the velocity and the KL target change the gradient the drift follows
        with model_mode(model, self.sampler.model_mode):
            clean_probs = None
            if self.chain_target == "kl":
                with torch.no_grad():
                    clean_probs = F.softmax(model(x).float(), dim=1)
            for k in range(self.sampler.steps):
                if k == 0 and self.consistency > 0:
                    self._anchor, grad = _anchored_gradient(model, x + delta, y, not self.consistency_detached,
                                                            clean_probs)
                elif clean_probs is None:
                    grad, _ = input_gradient(model, x + delta, y)
                else:
                    _, grad = _anchored_gradient(model, x + delta, y, False, clean_probs)
                if velocity is not None:
                    velocity = _l1_normalised(grad).add_(velocity, alpha=self.chain_momentum)
                    grad = velocity.clone()
                delta = self.sampler.move(x, delta, grad, t, generator=noise, threat=threat)
        self._pending = (idx, copy, delta, x, velocity)
        return (x + delta).detach()

    def commit(self):
        if self._pending is not None:
            idx, copy, delta, x, velocity = self._pending
            self.bank.write(idx, copy, delta, x)
            if velocity is not None:  # a repeated example keeps its last occurrence's velocity, as the bank does
                rows = idx.to(self.velocity.device)
                (velocity,) = _last_occurrence_rows(rows, len(self.velocity), velocity.to(self.velocity.device))
                self.velocity[rows] = velocity
            self._pending = None

    def state_dict(self):
        state = {"bank": self.bank.state_dict(), "cycle": self._cycle, "chain_target": self.chain_target,
                 "chain_momentum": self.chain_momentum, "copy_select": self.copy_select}
        if self.velocity is not None:
            state["velocity"] = self.velocity.clone()
        return state

    def load_state_dict(self, state):
        # the chain's settings must be the checkpoint's (states saved before they were stored are not checked)
        for key in ("chain_target", "chain_momentum", "copy_select"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(f"the checkpoint's chain has {key} {state[key]!r}, this run {getattr(self, key)!r}: "
                                  f"resume with the checkpoint's setting (--{key.replace('_', '-')} {state[key]})")
        if self.velocity is None and "velocity" in state:
            raise ConfigError("the stored state holds chain velocities (saved with chain_momentum > 0) and this run "
                              "keeps none: resume with the checkpoint's --chain-momentum")
        if self.velocity is not None:
            if "velocity" not in state:
                raise ConfigError("this ATL run keeps chain velocities (chain_momentum > 0) and the stored state has "
                                  "none: it was saved by a run without chain momentum")
            if tuple(state["velocity"].shape) != tuple(self.velocity.shape):
                raise ConfigError(f"stored chain velocities hold {tuple(state['velocity'].shape)}, this run "
                                  f"{tuple(self.velocity.shape)}")
        self.bank.load_state_dict(state["bank"])
        if self.velocity is not None:
            self.velocity.copy_(state["velocity"])
        self._cycle = int(state.get("cycle", 0))

    step_name = "eta"  # the recipe field of the chain's step (ATTA's is an attack step: step_size)

    def describe(self):
        s = self.sampler
        return {
            "method": self.name,
            "steps": s.steps,
            self.step_name: s.eta if not callable(s.eta) else repr(s.eta),
            "noise_scale": s.noise_scale if not callable(s.noise_scale) else repr(s.noise_scale),
            "noise": s.noise,
            "model_mode": s.model_mode,
            "eps_ramp_epochs": self.eps_ramp,
            "reset_every": self.reset_every,
            "consistency": self.consistency,
            "consistency_detached": self.consistency_detached,
            "chain_momentum": self.chain_momentum,
            "chain_target": self.chain_target,
            "copy_select": self.copy_select,
            "bank": self.bank.metadata(),
            "bank_bytes": self.bank.memory_bytes,
        }


class FreeATL(ATL):
    """Free ATL: adversarial training at the cost of clean training.

    Per visit the model trains on the stored sample ``x + delta`` itself; the backward pass of that training step
    also yields the input gradient there, and :meth:`LangevinSampler.move` turns it into the chain's next state (drift
    eta, noise, projection), written to the bank on commit. No separate input-gradient pass: one forward and one
    backward per batch. The gradient is taken at the parameters *before* the step, so the chain lags the model by one
    visit (as Free-AT's replay does, Shafahi et al. 2019); combine with the trainer's ``replay`` to visit each batch
    several times in a row.
    """

    name = "free-atl"
    wants_input_grad = True

    def __init__(self, bank: AdversarialBank, sampler: LangevinSampler, eps_ramp: float = 0.0, reset_every: int = 0):
        if sampler.steps != 1:
            raise ConfigError(f"free ATL moves each chain once per visit (the training pass's gradient): steps must "
                              f"be 1, got {sampler.steps}")
        super().__init__(bank, sampler, eps_ramp, reset_every)
        self.input_grad_passes = 0
        self._grad = None

    def perturb(self, model, x, y, idx, t):
        self._maybe_reset(t)
        (delta, copy), noise = self._read(idx, x)
        threat = warmed_up(self.threat, t, self.eps_ramp)
        if threat is not self.threat:
            delta = threat.delta_to(x, x + delta)
        self._pending = (idx, copy, delta, x.detach(), t, threat, noise)
        self._grad = None
        return (x + delta).detach()

    def receive_input_grad(self, grad):
        self._grad = grad

    def commit(self):
        if self._pending is not None and self._grad is not None:
            idx, copy, delta, x, t, threat, noise = self._pending
            g = self._grad.detach()
            # an example whose gradient is not finite (an fp16 overflow step the GradScaler skips) keeps its chain
            ok = torch.isfinite(g.flatten(1)).all(1).view(-1, *([1] * (g.dim() - 1)))
            moved = self.sampler.move(x, delta, torch.where(ok, g, torch.zeros_like(g)), t, noise, threat)
            self.bank.write(idx, copy, torch.where(ok, moved, delta), x)
        self._pending, self._grad = None, None

    def discard(self):
        self._pending, self._grad = None, None


class ATTA(ATL):
    """ATTA (Zheng et al. 2020): a stored perturbation advanced one noiseless signed step per visit.

    The step is projected, of size the sampler's ``eta``, and the bank is reset every ``reset_every`` epochs. It is
    ATL's loop with a noiseless, one-step chain: the sampler must have ``noise_scale = 0`` and ``steps = 1``."""

    name = "atta"
    step_name = "step_size"

    def __init__(self, bank: AdversarialBank, sampler: LangevinSampler, eps_ramp: float = 0.0, reset_every: int = 10):
        if value_at(sampler.noise_scale, 0.0) != 0 or callable(sampler.noise_scale) or sampler.steps != 1:
            raise ConfigError("ATTA takes one noiseless step per visit: use a sampler with steps=1, noise_scale=0")
        super().__init__(bank, sampler, eps_ramp, reset_every)


class FGSMPGI(_Stored, _Attacked):
    """FGSM-PGI, the momentum-prior variant (Jia et al., ECCV 2022, "FGSM-MEP"), with per-example state.

    Per visit, with stored perturbation ``d`` and momentum ``m`` of each example (``g`` the input gradient of the
    cross-entropy at ``x + d``, ``||g||_1`` taken over the whole batch as in the authors' code)::

        m <- g / ||g||_1 + decay * m
        trained on   x + Proj(d + step * sign(g))        (one FGSM step from the prior, step = eps)
        stored       Proj(d + step * sign(m))            (the prior for the next visit)

    The training loss gets ``lam * mean((f(x_train) - f(x + d))**2)`` (output consistency on the logits; gradients
    flow through both terms). Perturbations start at random corners ``eps * sign(u)``, momenta at 0, and both are
    reset every ``reset_every`` epochs (40 in the paper). State: two float32 tensors the size of the training set.
    """

    name = "fgsm-pgi"
    described = ("step_size", "lam", "decay", "reset_every")
    input_grad_passes = 1
    extra_param_passes = 1

    def __init__(
        self,
        threat: ThreatModel,
        num_examples: int,
        shape: tuple[int, ...],
        step_size: float | None = None,
        lam: float = 10.0,
        decay: float = 0.3,
        reset_every: int = 40,
        model_mode: str = "train",
        eps_ramp: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(threat, model_mode, eps_ramp)
        if threat.norm != "linf":
            raise ConfigError("FGSM-PGI is defined for the l-inf threat model only (its prior is a sign step)")
        if not (lam >= 0 and 0 <= decay and int(reset_every) >= 0):
            raise ConfigError(
                f"FGSM-PGI needs lam >= 0, decay >= 0, reset_every >= 0; got {lam}, {decay}, {reset_every}"
            )
        self.step_size = threat.eps if step_size is None else float(step_size)
        self.lam, self.decay, self.reset_every = float(lam), float(decay), int(reset_every)
        self.extra_param_passes = 1 if self.lam > 0 else 0
        self.delta = torch.zeros((int(num_examples),) + tuple(shape))
        self.momentum = torch.zeros_like(self.delta)
        self.initialized = torch.zeros(int(num_examples), dtype=torch.bool)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._cycle = 0
        self._pending = None

    @property
    def consistency(self) -> float:
        """The weight of the output-consistency term: ``lam``."""
        return self.lam

    def _forget(self) -> None:
        self.initialized.zero_()

    def perturb(self, model, x, y, idx, t):
        self._maybe_reset(t)
        threat = self.threat_at(t)
        step = self.step_size * threat.eps / self.threat.eps
        cpu_idx = idx.cpu()
        fresh = ~self.initialized[cpu_idx]
        if bool(fresh.any()):
            corner = torch.rand((int(fresh.sum()),) + self.delta.shape[1:], generator=self.generator) * 2 - 1
            rows = cpu_idx[fresh]
            (corner,) = _last_occurrence_rows(rows, len(self.delta), corner)
            self.delta[rows] = self.threat.eps * corner.sign()
            self.momentum[rows] = 0.0
        d = self.delta[cpu_idx].to(x.device)
        m = self.momentum[cpu_idx].to(x.device)
        d = threat.delta_to(x, x + d)  # the prior, in the (warmed-up) ball and the image box
        with model_mode(model, self.model_mode):
            self._anchor, g = _anchored_gradient(model, x + d, y)
        m = g / g.abs().sum().clamp_min(1e-12) + self.decay * m
        stored = threat.delta_to(x, x + d + step * m.sign())
        trained = threat.delta_to(x, x + d + step * g.sign())
        self._pending = (cpu_idx, stored.detach().cpu(), m.detach().cpu())
        return (x + trained).detach()

    def commit(self):
        if self._pending is not None:
            idx, d, m = self._pending
            # a repeated example keeps its last occurrence's prior and momentum, as the bank does
            d, m = _last_occurrence_rows(idx, len(self.delta), d, m)
            self.delta[idx], self.momentum[idx] = d, m
            self.initialized[idx] = True
            self._pending = None

    def state_dict(self):
        return {
            "delta": self.delta.clone(),
            "momentum": self.momentum.clone(),
            "initialized": self.initialized.clone(),
            "generator": self.generator.get_state(),
            "cycle": self._cycle,
        }

    def load_state_dict(self, state):
        if tuple(state["delta"].shape) != tuple(self.delta.shape):
            raise ConfigError(
                f"stored FGSM-PGI state holds {tuple(state['delta'].shape)}, this run {tuple(self.delta.shape)}"
            )
        self.delta.copy_(state["delta"])
        self.momentum.copy_(state["momentum"])
        self.initialized.copy_(state["initialized"])
        self.generator.set_state(state["generator"])
        self._cycle = int(state.get("cycle", 0))

