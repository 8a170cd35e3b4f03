"""The Langevin sampler as a torchattacks ``Attack``.

    >>> import adv_transport.plugins.torchattacks as ta
    >>> atk = ta.Langevin(model, eps=0.3, eta=0.01, noise_scale=0.2, steps=40)
    >>> x_adv = atk(images, labels)

Like every torchattacks attack, it puts the model in eval mode unless ``atk.set_model_training_mode(...)`` says
otherwise (torchattacks decides the mode, so the sampler is told to keep it). ``supported_mode`` is torchattacks'
word for targeting (``'default'``: untargeted only), kept as the host library spells it.
"""

from __future__ import annotations

import warnings

import torch
import torchattacks

from adv_transport.langevin import LangevinSampler
from adv_transport.threat import ThreatModel


class Langevin(torchattacks.attack.Attack):
    """Projected Langevin dynamics from the clean input (``random_start=False``) or a uniform start in the ball.

    Arguments:
        model (nn.Module): model to attack (inputs in [0, 1]).
        eps (float): radius of the threat ball. norm (str): ``'Linf'`` or ``'L2'``.
        eta (float): Langevin step size (``step_size``: its former name, deprecated). noise_scale (float): s; the
            noise is ``s * sqrt(2 eta) * xi``.
        steps (int): T. noise (str): ``'uniform'`` or ``'gaussian'``.
    """

    def __init__(
        self,
        model,
        eps=0.3,
        eta=0.01,
        noise_scale=0.2,
        steps=10,
        norm="Linf",
        noise="uniform",
        random_start=False,
        step_size=None,
    ):
        if step_size is not None:
            warnings.warn("Langevin(step_size=...) is deprecated: use eta=...", DeprecationWarning, stacklevel=2)
            eta = step_size
        super().__init__("Langevin", model)
        self.threat = ThreatModel(norm, eps)
        self.eps = eps
        self.sampler = LangevinSampler(self.threat, eta, noise_scale, steps, noise, model_mode="keep")
        self.random_start = random_start
        self.supported_mode = ["default"]

    def forward(self, images, labels):
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        delta = self.threat.uniform(images) if self.random_start else None
        return (images + self.sampler.sample(_Logits(self), images, labels, delta)).detach()


class _Logits(torch.nn.Module):
    """Routes forward passes through ``Attack.get_logits`` (so torchattacks' normalisation settings apply)."""

    def __init__(self, attack):
        super().__init__()
        self._attack = [attack]  # a list: do not register the attack's model twice

    def forward(self, x):
        return self._attack[0].get_logits(x)
