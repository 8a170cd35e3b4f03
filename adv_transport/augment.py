"""Differentiable per-example data augmentation applied *after* the perturbation.

The bank stores delta in each example's un-augmented frame. On every visit the trainer draws fresh augmentation
parameters, freezes them for the visit, and feeds ``augment(x + delta)`` to the model, both in the inner (Langevin or
attack) steps and in the parameter step. Gradients flow back through the augmentation to delta, so delta stays
aligned with its example whatever crop or flip a visit used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    _index: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _key: tuple | None = field(default=None, repr=False, compare=False)

    def gather_index(self, c: int, h: int, w: int, padding: int) -> torch.Tensor:
        """Flat indices into each padded image (shape ``(b, c, h * w)``), built once per visit and reused by every
        forward pass of that visit. A flip is folded in by reading the crop's columns right to left."""
        b = self.dy.shape[0]
        if self._key != (b, c, h, w, padding):
            device = self.dy.device
            cols = torch.arange(w, device=device).view(1, w)
            cols = torch.where(self.flip.view(b, 1), w - 1 - cols, cols) + self.dx.view(b, 1)
            rows = self.dy.view(b, 1) + torch.arange(h, device=device).view(1, h)
            flat = rows.view(b, h, 1) * (w + 2 * padding) + cols.view(b, 1, w)
            self._index = flat.view(b, 1, h * w).expand(b, c, h * w)
            self._key = (b, c, h, w, padding)
        return self._index


def crop_flip(x: torch.Tensor, params: CropFlipParams, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the input size at per-example offsets, then flip where asked.
    One ``gather`` over the flattened padded images, so it is differentiable with respect to ``x`` (its backward is
    a single scatter-add)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    index = params.gather_index(c, h, w, padding)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


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
        self.training = model.training  # mode changes see the model's own mode (adv_transport.modes)
        self.model = model
        self.params = params
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(crop_flip(x, self.params, self.padding))
