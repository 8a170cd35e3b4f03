"""Which mode (train or eval) a model is in while adversarial examples are computed."""

from __future__ import annotations

import contextlib

import torch.nn as nn

from .errors import ConfigError

MODEL_MODES = ("train", "eval", "keep")


def check_mode(mode: str) -> str:
    if mode not in MODEL_MODES:
        raise ConfigError(f"model_mode {mode!r} is not accepted; accepted: {', '.join(MODEL_MODES)}")
    return mode


def ensure_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, skipped when every module already is in that mode (``train()`` walks the whole
    module tree through ``nn.Module.__setattr__``, a measurable cost when it runs several times per batch)."""
    if any(m.training != training for m in model.modules()):
        model.train(training)


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str):
    """Put ``model`` in ``mode`` ('train', 'eval' or 'keep' as it is); afterwards every module gets back the mode
    it had before (so submodules a user froze in eval mode stay frozen)."""
    check_mode(mode)
    if mode == "keep":
        yield model
        return
    modules = list(model.modules())
    before = [m.training for m in modules]
    ensure_mode(model, mode == "train")
    try:
        yield model
    finally:
        for m, flag in zip(modules, before):
            if m.training != flag:
                m.training = flag
