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


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str):
    """Put ``model`` in ``mode`` ('train', 'eval' or 'keep' as it is) and restore its previous mode afterwards."""
    check_mode(mode)
    was_training = model.training
    if mode != "keep":
        model.train(mode == "train")
    try:
        yield model
    finally:
        model.train(was_training)
