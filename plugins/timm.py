"""timm integration: build any timm model by name for 28x28 or 32x32 inputs in [0, 1].

Used by :func:`adv_transport.models.build_model` for names ``timm:<name>``.
"""

from __future__ import annotations

import timm
import torch.nn as nn


def create_model(name: str, in_chans: int = 3, num_classes: int = 10, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with the channel count and class count of our datasets."""
    try:
        return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes, **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError('Unknown model ...')
        raise ValueError(f"timm has no model {name!r} ({e}); see timm.list_models()") from None
