"""Schedules for the Langevin step size and noise scale, as functions of training progress.

A schedule is any callable ``f(t) -> float`` where ``t`` is the training progress in epochs (a float: 2.5 is half-way
through the third epoch). Plain numbers are constant schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

from .errors import ConfigError

Schedule = Union[float, Callable[[float], float]]


def value_at(schedule: Schedule, t: float) -> float:
    """The value of ``schedule`` at progress ``t`` (epochs)."""
    return float(schedule(t)) if callable(schedule) else float(schedule)


@dataclass(frozen=True)
class Linear:
    """Linear from ``start`` to ``end`` over the first ``epochs`` epochs, then constant at ``end``."""

    start: float
    end: float
    epochs: float

    def __post_init__(self):
        if self.epochs <= 0:
            raise ConfigError(f"Linear schedule needs epochs > 0, got {self.epochs}")

    def __call__(self, t: float) -> float:
        frac = min(max(t / self.epochs, 0.0), 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from ``start`` to ``end`` over ``epochs`` epochs, then constant at ``end``."""

    start: float
    end: float
    epochs: float

    def __post_init__(self):
        if self.epochs <= 0:
            raise ConfigError(f"Cosine schedule needs epochs > 0, got {self.epochs}")

    def __call__(self, t: float) -> float:
        frac = min(max(t / self.epochs, 0.0), 1.0)
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * frac))
