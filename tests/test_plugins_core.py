import json
import subprocess
import sys

import torch

from adv_transport import LangevinSampler, ThreatModel

from conftest import Linear2


def test_core_import_touches_no_host_library():
    # every module of the core (distributed, rng, accel, bankfile, training, gan, ... and `python -m adv_transport`)
    # and of adv_transport.eval; only adv_transport.plugins.* may import a host library
    code = (
        "import importlib, json, pkgutil, runpy, sys, warnings\n"
        "import adv_transport, adv_transport.eval\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "names = [m.name for p in (adv_transport, adv_transport.eval)\n"
        "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
        "names = [n for n in names if not n.startswith('adv_transport.plugins') and n != 'adv_transport.__main__']\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "sys.argv = ['adv_transport', '--help']\n"
        "try:\n"
        "    runpy.run_module('adv_transport', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "hosts = [m for m in ('timm', 'torchattacks', 'robustbench', 'autoattack') if m in sys.modules]\n"
        "print(json.dumps({'imported': names, 'hosts': hosts}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    seen = json.loads(out.splitlines()[-1])
    assert seen["hosts"] == []
    for name in ("distributed", "rng", "accel", "bankfile", "training", "gan.game", "eval.robustness"):
        assert f"adv_transport.{name}" in seen["imported"]


def test_torchattacks_langevin_attack_matches_sampler():
    from adv_transport.plugins.torchattacks import Langevin

    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0]])
    model = Linear2(w).train()
    x = torch.full((3, 1, 2, 2), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    atk = Langevin(model, eps=0.15, eta=0.1, noise_scale=0.0, steps=2)
    x_adv = atk(x, y)
    expected = x + LangevinSampler(ThreatModel("linf", 0.15), 0.1, 0.0, 2).sample(model, x, y)
    assert torch.allclose(x_adv, expected)
    assert model.training  # torchattacks restores the caller's mode
    assert (x_adv - x).abs().max() <= 0.15 + 1e-6


def test_timm_model_by_name_keeps_inputs_in_unit_range():
    from adv_transport import build_model

    model = build_model("timm:resnet18", "cifar10").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
