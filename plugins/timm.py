"""timm integration: build any timm model by name for 28x28 or 32x32 inputs in [0, 1].

Used by :func:`adv_transport.models.build_model` for names ``timm:<name>``.
"""

from __future__ import annotations

import torch.nn as nn

from adv_transport.errors import ConfigError
from adv_transport.plugins import quiet_host_import

with quiet_host_import():
    import timm


def check_model_name(name: str) -> None:
    """Raise a one-line :class:`ConfigError` (with close names) when timm has no model ``name``."""
    if not timm.is_model(name):  # timm.create_model would raise RuntimeError('Unknown model ...')
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "e.g. resnet18, resnet50, vit_small_patch16_224"
        raise ConfigError(f"timm {timm.__version__} has no model {name!r}; {hint} (all: timm.list_models())")


def create_model(name: str, in_chans: int = 3, num_classes: int = 10, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with the channel count and class count of our datasets."""
    check_model_name(name)
    return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes, **kwargs)


# ---------------------------------------------------------------------------------------------- optimizers
# ``import adv_transport.plugins.timm`` registers our optimizers with timm's optimizer factory:
#   timm >= 1.0.12 has a registry (timm.optim.OptimInfo, default_registry): we register there;
#   timm 1.0.9 (pinned by robustbench 1.1.1) has a hard-coded if/elif chain: we wrap create_optimizer_v2 and rebind
#   every already-imported reference to it (timm's train.py imports it before running --device-modules).

import sys  # noqa: E402

import timm.optim  # noqa: E402

from adv_transport.optim import AdaDir, AdaLR, NormalizedSGD  # noqa: E402

OPTIMIZERS = {
    # name: (class, defaults, has_momentum, has_betas, description)
    "nsgd": (NormalizedSGD, {"normalize": "global"}, True, False,
             "Normalized SGD, one norm over all parameters (g-nSGDA, Jelassi et al. 2022)"),
    "lnsgd": (NormalizedSGD, {"normalize": "layer"}, True, False,
              "Normalized SGD, one norm per parameter tensor (l-nSGDA)"),
    "adalr": (AdaLR, {}, False, True, "SGD's direction with Adam's update norm (grafting)"),
    "adadir": (AdaDir, {}, False, True, "Adam's direction with SGD's update norm (grafting)"),
}
# keys of torch.optim.SGD's param groups that are not ours (timm's own keys such as lr_scale are kept)
_SGD_KEYS = {"lr", "momentum", "dampening", "nesterov", "maximize", "foreach", "differentiable", "fused",
             "initial_lr"}


def has_registry() -> bool:
    return hasattr(timm.optim, "OptimInfo")


def _register_in_registry() -> None:
    from timm.optim._optim_factory import default_registry

    for name, (cls, defaults, has_momentum, has_betas, description) in OPTIMIZERS.items():
        if name in default_registry._optimizers:
            continue
        default_registry.register(timm.optim.OptimInfo(
            name=name, opt_class=cls, description=description, has_eps=True, has_momentum=has_momentum,
            has_betas=has_betas, defaults=dict(defaults) or None))


def _wrap_legacy_factory() -> None:
    from timm.optim import optim_factory

    original = optim_factory.create_optimizer_v2
    if getattr(original, "_adv_transport", False):
        return

    def create_optimizer_v2(model_or_params, opt: str = "sgd", lr=None, weight_decay: float = 0.0,
                            momentum: float = 0.9, foreach=None, filter_bias_and_bn: bool = True, layer_decay=None,
                            param_group_fn=None, **kwargs):
        split = opt.lower().split("_")
        if split[-1] not in OPTIMIZERS:
            return original(model_or_params, opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
                            foreach=foreach, filter_bias_and_bn=filter_bias_and_bn, layer_decay=layer_decay,
                            param_group_fn=param_group_fn, **kwargs)
        cls, defaults, has_momentum, has_betas, _ = OPTIMIZERS[split[-1]]
        # timm's own param groups (weight decay filtered off biases and norms, layer-decay lr_scale): built by
        # timm for its SGD, then handed to our optimizer without SGD's keys
        sgd = original(model_or_params, "momentum", lr=lr if lr is not None else 0.1, weight_decay=weight_decay,
                       momentum=0.0, filter_bias_and_bn=filter_bias_and_bn, layer_decay=layer_decay,
                       param_group_fn=param_group_fn)
        groups = [{k: v for k, v in g.items() if k not in _SGD_KEYS} for g in sgd.param_groups]
        args = {**defaults, **kwargs}
        if lr is not None:
            args["lr"] = lr
        if has_momentum:
            args.setdefault("momentum", momentum)
        if not has_betas:
            args.pop("betas", None)
        if foreach is not None:
            args["foreach"] = foreach
        optimizer = cls(groups, **args)
        if len(split) > 1 and split[0] == "lookahead":
            optimizer = timm.optim.Lookahead(optimizer)
        return optimizer

    create_optimizer_v2._adv_transport = True
    create_optimizer_v2.__doc__ = original.__doc__
    # rebind every reference (timm.optim, optim_factory, and modules such as timm's train.py that imported it)
    for module in list(sys.modules.values()):
        if getattr(module, "create_optimizer_v2", None) is original:
            module.create_optimizer_v2 = create_optimizer_v2


def register_optimizers() -> None:
    """Make ``nsgd``, ``lnsgd``, ``adalr`` and ``adadir`` known to timm's optimizer factory (idempotent)."""
    if has_registry():
        _register_in_registry()
    else:
        _wrap_legacy_factory()


register_optimizers()
