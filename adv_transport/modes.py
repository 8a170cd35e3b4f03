"""Which mode (train or eval) a model is in while adversarial examples are computed, and while it is trained.

"Mode" in this library means this, a model's mode, always spelled ``model_mode``; the order of a GAN's updates is
``order`` (:mod:`adv_transport.gan`), and targeting keeps the host libraries' words in the plugins.

A model whose root module is in train mode is taken to be in its training configuration: a submodule in eval mode
under it was frozen on purpose (``model.bn.eval()``, a frozen backbone) and stays in eval mode. A model whose root is
in eval mode (``model.eval()``) is switched to train mode as a whole when train mode is asked for.

Modes of :func:`model_mode` (``model_mode=`` of every inner step):

- ``train``: train mode (dropout on; batch-norm normalises with the batch's statistics *and* updates its running
  statistics with the perturbed batch, once per forward pass: T times per batch for T Langevin steps).
- ``batch-stats``: train mode, but batch-norm layers leave their running statistics (and batch counters) untouched:
  they normalise with the batch's statistics as in ``train`` (``track_running_stats`` is switched off for the
  duration, a flag, no copy).
- ``eval``: eval mode (dropout off, batch-norm normalises with its running statistics).
- ``keep``: leave the model as it is.
"""

from __future__ import annotations

import contextlib

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError

MODEL_MODES = ("train", "eval", "keep", "batch-stats")


def check_model_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODEL_MODES`, else a :class:`ConfigError` listing them."""
    if mode not in MODEL_MODES:
        raise ConfigError(f"model_mode {mode!r} is not accepted; accepted: {', '.join(MODEL_MODES)}")
    return mode


def capture_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module of ``model`` with its current mode (for :func:`restore_modes`)."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(saved: list[tuple[nn.Module, bool]]) -> None:
    """Give every module its saved mode back (only the flags that differ are written)."""
    for m, flag in saved:
        if m.training != flag:
            m.training = flag


def ensure_mode(model: nn.Module, training: bool) -> None:
    """Put ``model`` in train (``training=True``) or eval mode.

    Eval: ``model.eval()``, skipped when every module already is in eval mode (``eval()`` walks the whole module tree
    through ``nn.Module.__setattr__``, a measurable cost when it runs several times per batch). Train: nothing when the
    root module is in train mode (its submodules in eval mode were frozen on purpose and stay so), else
    ``model.train()``.
    """
    if training:
        if not model.training:
            model.train(True)
    elif any(m.training for m in model.modules()):
        model.train(False)


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str):
    """Put ``model`` in ``mode`` ('train', 'batch-stats', 'eval' or 'keep' as it is; see the module docstring);
    afterwards every module gets back the mode (and batch-norm flags) it had before."""
    check_model_mode(mode)
    if mode == "keep":
        yield model
        return
    saved = capture_modes(model)
    ensure_mode(model, mode != "eval")
    paused = []
    if mode == "batch-stats":
        paused = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
        for m in paused:
            m.track_running_stats = False  # normalise with batch statistics, leave the running ones alone
    try:
        yield model
    finally:
        for m in paused:
            m.track_running_stats = True
        restore_modes(saved)
