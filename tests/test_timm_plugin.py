"""Our optimizers through timm's optimizer factory.

Runs twice in `make test`: in the main environment (timm 1.0.9, pinned by robustbench; no optimizer registry) and
with the latest timm (a registry) put first on PYTHONPATH; ADV_TRANSPORT_EXPECT_TIMM_REGISTRY says which one is
expected, so that neither path can silently be skipped.
"""

import os
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

import adv_transport.plugins.timm as plugin  # noqa: E402
from adv_transport.optim import AdaDir, AdaLR, NormalizedSGD  # noqa: E402


def test_expected_timm_flavour():
    expect = os.environ.get("ADV_TRANSPORT_EXPECT_TIMM_REGISTRY")
    if expect is None:
        pytest.skip("ADV_TRANSPORT_EXPECT_TIMM_REGISTRY not set")
    assert plugin.has_registry() == (expect == "1"), timm.__version__


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10)


@pytest.mark.parametrize("name,cls,normalize", [("nsgd", NormalizedSGD, "global"), ("lnsgd", NormalizedSGD, "layer"),
                                                ("adalr", AdaLR, "layer"), ("adadir", AdaDir, "layer")])
def test_factory_returns_our_optimizer_over_timms_param_groups(model, name, cls, normalize):
    opt = timm.optim.create_optimizer_v2(model, name, lr=0.05, weight_decay=5e-4)
    assert type(opt) is cls and opt.defaults["normalize"] == normalize
    by_decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert set(by_decay) == {0.0, 5e-4}  # biases and norms without weight decay, as timm groups them
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0][0]
    assert all(p.dim() <= 1 for p in no_decay["params"])
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    if cls is NormalizedSGD:
        assert opt.defaults["momentum"] == 0.9  # timm's default momentum, as for its SGD


def test_layer_decay_lr_scale_is_left_to_timms_scheduler(model):
    from timm.scheduler import CosineLRScheduler

    opt = timm.optim.create_optimizer_v2(model, "nsgd", lr=0.1, weight_decay=5e-4, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) > 2 and scales[-1] == 1.0
    assert all(g["lr"] == 0.1 for g in opt.param_groups)  # the optimizer does not apply lr_scale itself
    sched = CosineLRScheduler(opt, t_initial=10)
    sched.step(0)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.1 * g["lr_scale"])  # timm's scheduler does
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()


def test_lookahead_prefix(model):
    opt = timm.optim.create_optimizer_v2(model, "lookahead_nsgd", lr=0.1)
    assert type(opt).__name__ == "Lookahead"
    assert isinstance(opt._base_optimizer if hasattr(opt, "_base_optimizer") else opt.base_optimizer, NormalizedSGD)


def test_timms_own_optimizers_still_work(model):
    assert type(timm.optim.create_optimizer_v2(model, "sgd", lr=0.1)) is torch.optim.SGD
    assert type(timm.optim.create_optimizer_v2(model, "adamw", lr=0.1)) is torch.optim.AdamW
    with pytest.raises((AssertionError, ValueError)):
        timm.optim.create_optimizer_v2(model, "no-such-optimizer", lr=0.1)


def test_listed_where_timm_lists_optimizers():
    if not hasattr(timm.optim, "list_optimizers"):
        pytest.skip(f"timm {timm.__version__} has no list_optimizers")
    names = timm.optim.list_optimizers()
    assert {"nsgd", "lnsgd", "adalr", "adadir"} <= set(names)
    assert timm.optim.get_optimizer_class("adalr") is AdaLR


def test_train_script_style_import_order():
    """timm's train.py imports create_optimizer_v2 first and runs --device-modules later: the name it holds must
    reach our optimizers too."""
    code = (
        "import timm\n"
        "from timm.optim import create_optimizer_v2\n"
        "import importlib; importlib.import_module('adv_transport.plugins.timm')\n"
        "m = timm.create_model('resnet18', num_classes=10)\n"
        "print(type(create_optimizer_v2(m, 'nsgd', lr=0.1)).__name__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "NormalizedSGD"
