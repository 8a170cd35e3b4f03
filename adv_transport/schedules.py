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
class _Ramp:
    """From ``start`` to ``end`` over the first ``epochs`` epochs, then constant at ``end``."""

    start: float
    end: float
    epochs: float

    def __post_init__(self):
        if self.epochs <= 0:
            raise ConfigError(f"{type(self).__name__} needs epochs > 0, got {self.epochs}")

    def progress(self, t: float) -> float:
        """The share of the ramp done at progress ``t`` (epochs), in [0, 1]."""
        return min(max(t / self.epochs, 0.0), 1.0)


class LinearSchedule(_Ramp):
    """Linear from ``start`` to ``end`` over the first ``epochs`` epochs, then constant at ``end``."""

    def __call__(self, t: float) -> float:
        return self.start + (self.end - self.start) * self.progress(t)


class CosineSchedule(_Ramp):
    """Cosine decay from ``start`` to ``end`` over ``epochs`` epochs, then constant at ``end``."""

    def __call__(self, t: float) -> float:
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * self.progress(t)))


_OLD_NAMES = {"Linear": LinearSchedule, "Cosine": CosineSchedule}


def __getattr__(name: str):
    """``Linear`` and ``Cosine``: the former names of the schedules (deprecated aliases, one release)."""
    if name in _OLD_NAMES:
        import warnings

        new = _OLD_NAMES[name].__name__
        warnings.warn(f"adv_transport.schedules.{name} is now {new}", DeprecationWarning, stacklevel=2)
        return _OLD_NAMES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
