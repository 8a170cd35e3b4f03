"""Exceptions raised by adv_transport.

Every error says what was wrong and what is accepted. They subclass ``ValueError`` (bad input) or
``RuntimeError`` (a failure during a run) so that generic handlers keep working.
"""

from __future__ import annotations


class AdvTransportError(Exception):
    """Base class of all adv_transport errors."""


class ConfigError(AdvTransportError, ValueError):
    """An argument or setting is outside what is accepted."""


class DataRangeError(AdvTransportError, ValueError):
    """Input data is not float in [0, 1] (normalisation belongs inside the model)."""


class MissingIndexError(AdvTransportError, ValueError):
    """A data loader yielded batches without the per-example dataset index that the bank needs."""


class BankMismatchError(AdvTransportError, ValueError):
    """A stored adversarial bank does not match the run it is being loaded into."""


class NonFiniteLossError(AdvTransportError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped before writing anything from that step."""

    def __init__(self, message: str, *, epoch: int, step: int, checkpoint: str | None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
