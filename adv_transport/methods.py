"""Inner steps of adversarial training: how each method turns a clean batch into the batch the model is trained on.

All methods run through the same training loop (:class:`adv_transport.trainer.Trainer`) and differ only here:

- ``clean``: no perturbation.
- ``pgd``: PGD-k from a uniform random start (Madry et al. 2018).
- ``fgsm-rs``: one signed step of size alpha (default 1.25 eps) from a uniform start, projected (Wong et al. 2020).
- ``n-fgsm``: one signed step of size alpha (default eps) from a start uniform in a k*eps box (default k = 2),
  *not* projected back to the eps ball, only to [0, 1] (de Jorge et al. 2022).
- ``atl``: Langevin adversarial transport: T warm-started Langevin steps from the sample kept in the bank.

``input_grad_passes`` is how many input-gradient evaluations each example costs per visit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .attacks import input_gradient, pgd
from .bank import AdversarialBank
from .errors import ConfigError
from .langevin import LangevinSampler
from .modes import check_mode, model_mode
from .threat import ThreatModel


class InnerStep:
    """Base class. ``perturb`` returns the inputs to train on; ``commit`` is called once the parameter step
    succeeded (ATL writes its bank there, so a failed step leaves the bank untouched)."""

    name = "base"
    input_grad_passes = 0
    threat: ThreatModel | None = None

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
        return {"method": self.name}


class Clean(InnerStep):
    name = "clean"

    def perturb(self, model, x, y, idx, t):
        return x


class _Attacked(InnerStep):
    def __init__(self, threat: ThreatModel, model_mode: str = "train", eps_ramp: float = 0.0):
        self.threat = threat
        self.model_mode = check_mode(model_mode)
        if not eps_ramp >= 0:
            raise ConfigError(f"eps_ramp must be >= 0 epochs, got {eps_ramp!r}")
        self.eps_ramp = float(eps_ramp)

    def threat_at(self, t: float) -> ThreatModel:
        """The threat at progress ``t`` (epochs): eps grows linearly from 0 over the first ``eps_ramp`` epochs (a
        warm-up that lets PGD-40 training at MNIST eps = 0.3 leave chance level), then stays at eps."""
        if self.eps_ramp <= 0 or t >= self.eps_ramp:
            return self.threat
        return ThreatModel(self.threat.norm, self.threat.eps * max(t / self.eps_ramp, 1e-3))


class PGD(_Attacked):
    """PGD-k adversarial training with a uniform random start."""

    name = "pgd"

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

    def describe(self):
        return {
            "method": self.name,
            "steps": self.steps,
            "step_size": self.step_size,
            "model_mode": self.model_mode,
            "eps_ramp_epochs": self.eps_ramp,
        }


class FGSMRS(_Attacked):
    """FGSM from a uniform random start in the ball, step ``alpha`` (default 1.25 eps), projected."""

    name = "fgsm-rs"
    input_grad_passes = 1

    def __init__(
        self, threat: ThreatModel, step_size: float | None = None, model_mode: str = "train", eps_ramp: float = 0.0
    ):
        super().__init__(threat, model_mode, eps_ramp)
        self.step_size = 1.25 * threat.eps if step_size is None else float(step_size)

    def perturb(self, model, x, y, idx, t):
        threat = self.threat_at(t)
        step = self.step_size * threat.eps / self.threat.eps
        x_start = x + threat.uniform(x)
        with model_mode(model, self.model_mode):
            grad, _ = input_gradient(model, x_start, y)
        return threat.clip(x, x_start + step * threat.direction(grad)).detach()

    def describe(self):
        return {
            "method": self.name,
            "step_size": self.step_size,
            "model_mode": self.model_mode,
            "eps_ramp_epochs": self.eps_ramp,
        }


class NFGSM(_Attacked):
    """N-FGSM: noise of k*eps, a step of ``alpha`` (default eps), clipped to [0, 1] but not to the eps ball."""

    name = "n-fgsm"
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
            grad, _ = input_gradient(model, x_start, y)
        return (x_start + self.step_size * scale * threat.direction(grad)).clamp(0, 1).detach()

    def describe(self):
        return {
            "method": self.name,
            "step_size": self.step_size,
            "noise_mult": self.noise_mult,
            "model_mode": self.model_mode,
            "eps_ramp_epochs": self.eps_ramp,
        }


class ATL(InnerStep):
    """Langevin adversarial transport: read delta from the bank, advance it T Langevin steps, and (on commit)
    write it back."""

    name = "atl"

    def __init__(self, bank: AdversarialBank, sampler: LangevinSampler):
        if bank.threat != sampler.threat:
            raise ConfigError(f"bank threat {bank.threat} and sampler threat {sampler.threat} differ")
        self.bank = bank
        self.sampler = sampler
        self.threat = sampler.threat
        self.input_grad_passes = sampler.steps
        self._pending = None

    def perturb(self, model, x, y, idx, t):
        delta, copy = self.bank.read(idx, x)
        delta = self.sampler.sample(model, x, y, delta, t)
        self._pending = (idx, copy, delta, x.detach())
        return (x + delta).detach()

    def commit(self):
        if self._pending is not None:
            self.bank.write(*self._pending)
            self._pending = None

    def discard(self):
        self._pending = None

    def state_dict(self):
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state):
        self.bank.load_state_dict(state["bank"])

    def describe(self):
        s = self.sampler
        return {
            "method": self.name,
            "steps": s.steps,
            "step_size": s.step_size if not callable(s.step_size) else repr(s.step_size),
            "noise_scale": s.noise_scale if not callable(s.noise_scale) else repr(s.noise_scale),
            "noise": s.noise,
            "model_mode": s.model_mode,
            "bank": self.bank.metadata(),
            "bank_bytes": self.bank.memory_bytes,
        }
