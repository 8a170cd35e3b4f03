"""Differentiable per-example data augmentation applied *after* the perturbation.

The bank stores delta in each example's un-augmented frame. On every visit the trainer draws fresh augmentation
parameters, freezes them for the visit, and feeds ``augment(x + delta)`` to the model, both in the inner (Langevin or
attack) steps and in the parameter step. Gradients flow back through the augmentation to delta, so delta stays
aligned with its example whatever crop or flip a visit used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError


@dataclass
class CropFlipParams:
    """Per-example crop offsets (in the padded image) and flip flags for one visit."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor


def crop_flip(x: torch.Tensor, params: CropFlipParams, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the input size at per-example offsets, then flip where asked.
    Pure indexing, so it is differentiable with respect to ``x``."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = params.dy.view(b, 1) + torch.arange(h, device=x.device).view(1, h)
    cols = params.dx.view(b, 1) + torch.arange(w, device=x.device).view(1, w)
    out = padded[
        torch.arange(b, device=x.device).view(b, 1, 1, 1),
        torch.arange(c, device=x.device).view(1, c, 1, 1),
        rows.view(b, 1, h, 1),
        cols.view(b, 1, 1, w),
    ]
    return torch.where(params.flip.view(b, 1, 1, 1), out.flip(-1), out)


class RandomCropFlip:
    """Random crop with zero padding (``padding`` pixels) and horizontal flip (if ``flip``), drawn per example."""

    def __init__(self, padding: int = 4, flip: bool = True):
        if int(padding) < 0:
            raise ConfigError(f"crop padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> CropFlipParams:
        b = x.shape[0]
        hi = 2 * self.padding + 1
        dy = torch.randint(hi, (b,), generator=generator)
        dx = torch.randint(hi, (b,), generator=generator)
        flip = torch.rand(b, generator=generator) < 0.5 if self.flip else torch.zeros(b, dtype=torch.bool)
        return CropFlipParams(dy.to(x.device), dx.to(x.device), flip.to(x.device))

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class Augmented(nn.Module):
    """``model(augment(x))`` with augmentation parameters frozen for one visit; mode changes reach ``model``."""

    def __init__(self, model: nn.Module, params: CropFlipParams, padding: int):
        super().__init__()
        self.model = model
        self.params = params
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(crop_flip(x, self.params, self.padding))
