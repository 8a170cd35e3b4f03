"""Exceptions raised by adv_transport.

Every error says what was wrong and what is accepted. They subclass ``ValueError`` (bad input) or
``RuntimeError`` (a failure during a run) so that generic handlers keep working.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping


class AdvTransportError(Exception):
    """Base class of all adv_transport errors."""


class ConfigError(AdvTransportError, ValueError):
    """An argument or setting is outside what is accepted."""


class DataRangeError(AdvTransportError, ValueError):
    """Input data is not float in [0, 1] (normalisation belongs inside the model)."""


class MissingIndexError(AdvTransportError, ValueError):
    """A data loader yielded batches without the per-example dataset index that the bank needs."""


class EmptyLoaderError(MissingIndexError):
    """A data loader yielded no batches at all (an empty dataset or subset).

    It subclasses :class:`MissingIndexError` only so that code written when that was raised for an empty loader keeps
    working; that base goes in the next release."""


class BankMismatchError(AdvTransportError, ValueError):
    """A stored adversarial bank does not match the run it is being loaded into."""


class NonFiniteError(AdvTransportError, RuntimeError):
    """Training produced a NaN or infinite value; ``epoch``, ``step`` and the last good ``checkpoint`` say where."""

    def __init__(self, message: str, *, epoch: int, step: int, checkpoint: str | None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite; the run stopped before writing anything from that step."""


class NonFiniteParameterError(NonFiniteError):
    """A model parameter became NaN or infinite; the checkpoint was not overwritten with it."""


def settings_differ(
    what: str,
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    same: Callable[[str, Any, Any], bool] | None = None,
    advice: str = "",
) -> str | None:
    """The one message for stored settings that do not match the current ones: ``"<what>: the settings differ (k:
    stored a, now b; ...). <advice>"``, or None when every key agrees. ``keys`` default to ``current``'s;
    ``same(key, a, b)`` compares (default ``==``)."""
    same = same or (lambda key, a, b: a == b)
    diffs = [
        f"{k}: stored {stored.get(k)!r}, now {current.get(k)!r}"
        for k in (current if keys is None else keys)
        if not same(k, stored.get(k), current.get(k))
    ]
    if not diffs:
        return None
    return f"{what}: the settings differ ({'; '.join(diffs)})." + (f" {advice}" if advice else "")
