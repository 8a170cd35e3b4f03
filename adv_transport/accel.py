"""The model's forward pass on a GPU: mixed precision, channels-last memory format and ``torch.compile``.

:class:`Forward` wraps the model for both passes of a training step: the inner step (Langevin, PGD, FGSM: input
gradients only) and the training pass. With ``amp`` the forward runs under ``torch.autocast`` (bfloat16 or float16)
and the logits come back in float32.

Input gradients in float16. The inner step only needs the *direction* of the input gradient (its sign for l-inf,
``g / ||g||_2`` for l2), but a float16 backward pass flushes small gradients to zero, and ``sign(0) = 0`` is no step
at all. The inner step's wrapper therefore multiplies the gradient reaching the logits by ``input_grad_scale``
(default 1024 for float16) and divides it again, in float32, where it leaves the input: the backward pass through the
network runs on values 1024 times larger, and the gradient handed to the sampler is the true one. bfloat16 has the
exponent range of float32 and needs no scale. The training pass uses ``torch.amp.GradScaler`` for float16 (the
trainer's ``runtime.scaler``).

``torch.compile``: the compiled module shares the model's parameters; the trainer keeps, checkpoints and hands back
the model itself, so a checkpoint's keys carry no ``_orig_mod.`` prefix and load with or without ``--compile``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import ConfigError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_INPUT_GRAD_SCALE = 1024.0


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def as_training_logits(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` computed through an inner-step view (``model``: a :class:`Forward`, possibly wrapped, e.g. by
    :class:`~adv_transport.augment.Augmented`) made fit for the training loss: a float16 view multiplies the gradient
    at its logits by ``input_grad_scale`` (for input gradients only), which is undone here; identity otherwise."""
    while not isinstance(model, Forward) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    scale = getattr(model, "input_grad_scale", 1.0) if isinstance(model, Forward) else 1.0
    if scale != 1.0 and logits.requires_grad:
        return _ScaleGrad.apply(logits, 1.0 / scale)
    return logits


def check_amp(amp: str | None) -> str:
    amp = "off" if amp is None else amp
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp {amp!r} is not accepted; accepted: {', '.join(AMP_DTYPES)}")
    return amp


class Forward(nn.Module):
    """``model(x)`` with the options of a fast GPU path.

    Args:
        model: the model (its parameters are this module's).
        compiled: the callable to run instead of ``model`` (``torch.compile(model)``); default ``model``.
        amp: ``off``, ``bf16`` or ``fp16`` (autocast for the forward pass; logits returned in float32).
        channels_last: feed 4-d inputs in the channels-last memory format.
        input_grad_scale: multiply the gradient at the logits by this and divide it at the input (inner steps in
            float16, see the module docstring); 1 = off.
    """

    def __init__(self, model: nn.Module, compiled=None, amp: str = "off", channels_last: bool = False,
                 input_grad_scale: float = 1.0):
        super().__init__()
        self.model = model
        object.__setattr__(self, "compiled", compiled)  # not a submodule: the same parameters, counted once
        self.dtype = AMP_DTYPES[check_amp(amp)]
        self.channels_last = bool(channels_last)
        self.input_grad_scale = float(input_grad_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        run = self.model if self.compiled is None else self.compiled
        if self.dtype is None:
            return run(x)
        scale = self.input_grad_scale
        if scale != 1.0 and x.requires_grad:
            x = _ScaleGrad.apply(x, 1.0 / scale)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = run(x)
        out = out.float()
        if scale != 1.0 and out.requires_grad:
            out = _ScaleGrad.apply(out, scale)
        return out


def forwards(model: nn.Module, amp: str = "off", channels_last: bool = False, compile: bool = False,
             compile_backend: str = "inductor", input_grad_scale: float | None = None) -> tuple[Forward, Forward]:
    """``(inner, outer)``: the wrappers of the inner step (input gradients, float16-safe) and of the training pass."""
    amp = check_amp(amp)
    compiled = torch.compile(model, backend=compile_backend) if compile else None
    if input_grad_scale is None:
        input_grad_scale = FP16_INPUT_GRAD_SCALE if amp == "fp16" else 1.0
    inner = Forward(model, compiled, amp, channels_last, input_grad_scale)
    outer = Forward(model, compiled, amp, channels_last, 1.0)
    return inner, outer


def grad_scaler(amp: str, device: torch.device):
    """A ``GradScaler`` for float16 training on ``device`` (None otherwise: bfloat16 and float32 need none)."""
    if check_amp(amp) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
