"""robustbench 1.1.1 + pyautoattack from PyPI, through adv_transport.plugins.robustbench (its own functions called)."""

import importlib
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from adv_transport.models import build_model


class Tiny32(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)
        )

    def forward(self, x):
        return self.net(x)


def _data(n=24):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 10
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.2
    for c in range(10):
        x[y == c, c % 3, 3 * c : 3 * c + 3] += 0.7
    return x.clamp(0, 1), y


def test_robustbench_does_not_import_without_the_plugin():
    code = "import robustbench"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0 and "autoattack" in res.stderr  # the bug the plugin works around


def test_plugin_makes_robustbench_import():
    code = "import adv_transport.plugins.robustbench as rb, robustbench, autoattack; print(autoattack.AutoAttack)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "adv_transport" in res.stdout


def test_benchmark_runs_autoattack_and_resumes_from_its_state(tmp_path, monkeypatch):
    import adv_transport.plugins.robustbench as rb  # first: it makes robustbench importable

    robustbench_eval = importlib.import_module("robustbench.eval")

    x, y = _data()
    monkeypatch.setattr(robustbench_eval, "load_clean_dataset", lambda dataset, n, data_dir, prepr: (x[:n], y[:n]))
    model = Tiny32().eval()
    clean, robust = rb.benchmark(
        model, n_examples=24, dataset="cifar10", threat_model="Linf", eps=8 / 255, batch_size=12
    )
    with torch.no_grad():
        expected_clean = (model(x).argmax(1) == y).float().mean().item()
    assert clean == pytest.approx(expected_clean)
    assert 0.0 <= robust <= clean
    # the state file: a fresh run writes it; a second run with the same file finds all batches done
    state = tmp_path / "aa_state.json"
    _, robust_a = rb.benchmark(
        model, n_examples=24, dataset="cifar10", threat_model="Linf", eps=8 / 255, batch_size=12, aa_state_path=state
    )
    saved = json.loads(state.read_text())
    assert saved["done"] == 2 and len(saved["robust_flags"]) == 24
    calls = []
    monkeypatch.setattr(rb, "autoattack_flags", lambda *a, **k: calls.append(1))
    _, robust_b = rb.benchmark(
        model, n_examples=24, dataset="cifar10", threat_model="Linf", eps=8 / 255, batch_size=12, aa_state_path=state
    )
    assert calls == [] and robust_b == robust_a == robust


def _trained_like(arch, dataset, seed=0):
    """A model of ``arch`` whose batch-norm statistics and affine weights are not the initial ones (as after training),
    so that a wrong key mapping or a missing final BN shows in the outputs."""
    torch.manual_seed(seed)
    model = build_model(arch, dataset)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def _run_dir(tmp_path, arch, dataset, eps=8 / 255, norm="linf", report=None):
    model = _trained_like(arch, dataset)
    run = tmp_path / f"{dataset}-{arch.replace(':', '-')}"
    run.mkdir()
    recipe = {"dataset": dataset, "model": arch, "eps": eps, "method": "atl", "norm": norm}
    torch.save({"config": {"recipe": recipe}, "model": model.state_dict(), "epoch": 1}, run / "checkpoint.pt")
    if report is not None:
        (run / "eval.json").write_text(json.dumps(report))
    return run, model


def test_preact_resnet18_maps_onto_robustbench_preactresnet():
    from robustbench.model_zoo.architectures.resnet import PreActBlock, PreActResNet

    import adv_transport.plugins.robustbench as rb

    ours = _trained_like("preact-resnet18", "cifar10")
    theirs = PreActResNet(PreActBlock, [2, 2, 2, 2], num_classes=10, bn_before_fc=True, out_shortcut=True).eval()
    mapped = rb.preact_to_robustbench(ours.model.state_dict())
    assert set(mapped) == set(theirs.state_dict())  # the same key names, nothing left over
    theirs.load_state_dict(mapped, strict=True)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs((x - ours.mean) / ours.std), ours(x), atol=1e-5)


@pytest.mark.parametrize("depth,width", [(10, 1), (16, 4), (28, 10), (34, 10), (34, 20)])
def test_wide_resnets_have_robustbench_wideresnet_keys(depth, width):
    import adv_transport.plugins.robustbench  # noqa: F401  (first: it makes robustbench importable)
    from adv_transport.models import WideResNet as OurWideResNet

    WideResNet = importlib.import_module("robustbench.model_zoo.architectures.wide_resnet").WideResNet

    with torch.device("meta"):  # shapes only: no memory, no time
        ours = OurWideResNet(depth, width, num_classes=100).state_dict()
        theirs = WideResNet(depth, num_classes=100, widen_factor=width).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_wide_resnet_computes_what_robustbench_wideresnet_computes():
    import adv_transport.plugins.robustbench as rb  # first: it makes robustbench importable

    WideResNet = importlib.import_module("robustbench.model_zoo.architectures.wide_resnet").WideResNet

    ours = _trained_like("wrn-10-1", "cifar10")
    theirs = WideResNet(10, num_classes=10, widen_factor=1).eval()
    mapped = rb.robustbench_state_dict(ours, "wrn-10-1", "cifar10")
    assert set(mapped) == set(theirs.state_dict()) | {"mu", "sigma"}  # the entry's class adds the mu/sigma buffers
    theirs.load_state_dict({k: v for k, v in mapped.items() if k not in ("mu", "sigma")}, strict=True)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs((x - ours.mean) / ours.std), ours(x), atol=1e-5)
    assert rb.architecture_name("wrn-34-10") == "WideResNet-34-10"


AUTOATTACK_ALIAS = """\
# the only stand-in the subprocess uses: robustbench 1.1.1 imports these names of the GitHub-only autoattack package
class AutoAttack:
    pass
"""
STOCK_ROBUSTBENCH = """\
import importlib.abc, json, sys, traceback
from pathlib import Path

class NoAdvTransport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "adv_transport" or name.startswith("adv_transport."):
            raise ImportError("this process must not import adv_transport")

sys.meta_path.insert(0, NoAdvTransport())
root = Path(sys.argv[1])
sys.path.insert(0, str(root / "alias"))
import torch
from robustbench.model_zoo import model_dicts
from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
from robustbench.utils import load_model

results = {}
for case, dataset, threat_model in json.loads(sys.argv[2]):  # one process for all: its imports take the time
    try:
        namespace = {}
        exec((root / case / "sub" / "model_zoo_entry.py").read_text(), namespace)
        name, spec = namespace["ENTRY"]
        model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name] = spec
        model = load_model(name, model_dir=root / case / "sub" / "models", dataset=dataset, threat_model=threat_model)
        ref = torch.load(root / case / "reference.pt", weights_only=True)
        with torch.no_grad():
            out = model(ref["x"])
        results[case] = {"max_diff": (out - ref["logits"]).abs().max().item(), "class": type(model).__name__}
    except Exception:
        results[case] = {"error": traceback.format_exc()}
    results[case]["adv_transport_loaded"] = any(m.startswith("adv_transport") for m in sys.modules)
print(json.dumps(results))
"""

# (architecture, dataset, threat model, eps, norm of the run, robustbench class, what the entry builds it from, card)
STOCK_CASES = [
    ("preact-resnet18", "cifar10", "Linf", 8 / 255, "linf", "Doe2026LangevinNet", "PreActResNet", "PreActResNet-18"),
    ("preact-resnet18", "cifar10", "L2", 0.5, "l2", "Doe2026LangevinNet", "PreActResNet", "PreActResNet-18"),
    ("preact-resnet18", "cifar100", "Linf", 8 / 255, "linf", "Doe2026LangevinNet", "PreActResNet", "PreActResNet-18"),
    ("wrn-10-1", "cifar10", "Linf", 8 / 255, "linf", "Doe2026LangevinNet", "WideResNet", "WideResNet-10-1"),
    ("timm:resnet18", "cifar100", "Linf", 8 / 255, "linf", "Sequential", "normalize_model", "resnet18"),
    ("timm:resnet18", "imagenet", "Linf", 4 / 255, "linf", "Sequential", "normalize_model", "resnet18"),
]
STOCK_IDS = [f"{arch.replace(':', '-')}-{dataset}-{threat}" for arch, dataset, threat, *_ in STOCK_CASES]


@pytest.fixture(scope="module")
def stock_loads(tmp_path_factory):
    """Every STOCK_CASES run submitted through the CLI, then loaded in one fresh process that cannot import
    adv_transport. Returns the folder (``<case>/sub`` is a submission) and the process's result per case."""
    from adv_transport.cli import main

    root = tmp_path_factory.mktemp("stock")
    alias = root / "alias" / "autoattack"
    alias.mkdir(parents=True)
    (alias / "__init__.py").write_text(AUTOATTACK_ALIAS)
    (alias / "state.py").write_text("class EvaluationState:\n    pass\n")
    cases = []
    for case, (arch, dataset, threat, eps, norm, *_) in zip(STOCK_IDS, STOCK_CASES):
        (root / case).mkdir()
        run, ours = _run_dir(root / case, arch, dataset, eps=eps, norm=norm)
        argv = ["submit", "--checkpoint", str(run), "--name", "Doe2026Langevin", "--out", str(root / case / "sub")]
        assert main(argv + ["--title", "Langevin adversarial transport"]) == 0, case
        x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.save({"x": x, "logits": ours(x)}, root / case / "reference.pt")
        cases.append([case, dataset, threat])
    res = subprocess.run(
        [sys.executable, "-c", STOCK_ROBUSTBENCH, str(root), json.dumps(cases)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch,dataset,threat,eps,norm,cls,builder,card_arch", STOCK_CASES, ids=STOCK_IDS)
def test_submission_loads_with_stock_robustbench_alone(
    stock_loads, request, arch, dataset, threat, eps, norm, cls, builder, card_arch
):
    """The CLI's submission, loaded in a fresh process that cannot import adv_transport: robustbench's load_model
    (from the file where it looks, so nothing is downloaded) returns a model whose outputs equal ours."""
    root, results = stock_loads
    case = request.node.callspec.id
    got = results[case]
    assert "error" not in got, got.get("error")
    assert got["class"] == cls and not got["adv_transport_loaded"]
    assert got["max_diff"] < 1e-5
    entry = (root / case / "sub" / "model_zoo_entry.py").read_text()
    assert "adv_transport" not in entry and builder in entry
    if builder != "normalize_model":  # our own class: the normalisation in mu/sigma buffers, as RobustBench's entries
        assert "register_buffer('mu'" in entry and "register_buffer('sigma'" in entry
    card = json.loads((root / case / "sub" / "model_info" / dataset / threat / "Doe2026Langevin.json").read_text())
    assert card["architecture"] == card_arch and card["dataset"] == dataset


@pytest.mark.parametrize("dataset,eps", [("cifar100", 8 / 255), ("imagenet", 4 / 255)])
def test_timm_submissions_use_timm_create_model_and_load(tmp_path, dataset, eps):
    import adv_transport.plugins.robustbench as rb

    run, ours = _run_dir(tmp_path, "timm:resnet18", dataset, eps=eps)
    paths = rb.export_submission(run, "Doe2026Langevin", dataset, "Linf", tmp_path / "sub", card={"name": "T"})
    entry = paths["zoo_entry"].read_text()
    assert "timm.create_model('resnet18', pretrained=False" in entry and "normalize_model" in entry
    assert "adv_transport" not in entry
    name = rb.register_entry(paths["zoo_entry"], dataset, "Linf")
    loaded = rb.load_model(name, model_dir=tmp_path / "sub" / "models", dataset=dataset, threat_model="Linf")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ours(x), atol=1e-5)
    card = json.loads(paths["card"].read_text())
    assert card["dataset"] == dataset and card["eps"] == ("4/255" if dataset == "imagenet" else "8/255")
    assert paths["card"].parent == tmp_path / "sub" / "model_info" / dataset / "Linf"


def test_submission_round_trip_through_load_model(tmp_path):
    import adv_transport.plugins.robustbench as rb

    run, ours = _run_dir(tmp_path, "preact-resnet18", "cifar10")
    report = {"clean_acc": 81.5, "autoattack_acc": 40.25, "n_examples": 1000, "eps": 8 / 255}
    paths = rb.export_submission(
        run,
        "Doe2026Langevin",
        "cifar10",
        "Linf",
        tmp_path / "sub",
        report=report,
        card={"authors": "J. Doe", "name": "Langevin adversarial transport"},
    )
    assert paths["checkpoint"] == tmp_path / "sub/models/cifar10/Linf/Doe2026Langevin.pt"
    card = json.loads(paths["card"].read_text())
    assert card["eps"] == "8/255" and card["clean_acc"] == "81.50" and card["authors"] == "J. Doe"
    assert card["name"] == "Langevin adversarial transport" and card["architecture"] == "PreActResNet-18"
    assert card["autoattack_acc"] == "" and "first 1000" in card["footnote"]  # not the 10,000-point protocol
    assert card["reported"] == ""  # only when given
    assert "'Doe2026Langevin'" in paths["zoo_entry"].read_text()

    rb.register_model("Doe2026Langevin", "preact-resnet18", "cifar10", "Linf")
    loaded = rb.load_model(
        "Doe2026Langevin", model_dir=tmp_path / "sub" / "models", dataset="cifar10", threat_model="Linf"
    )
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ours(x), atol=1e-5)


def test_bad_submission_names_and_datasets_are_explained(tmp_path):
    import adv_transport.plugins.robustbench as rb
    from adv_transport.errors import ConfigError

    with pytest.raises(ConfigError, match="<Name><Year><Word>"):
        rb.export_submission(tmp_path / "x.pt", "my_model", "cifar10", "Linf", tmp_path)
    with pytest.raises(ConfigError, match="no leaderboard for 'mnist'"):
        rb.export_submission(tmp_path / "x.pt", "Doe2026Langevin", "mnist", "Linf", tmp_path)
    with pytest.raises(ConfigError, match="no cifar100 'L2' leaderboard; accepted: cifar10 Linf, cifar10 L2"):
        rb.export_submission(tmp_path / "x.pt", "Doe2026Langevin", "cifar100", "L2", tmp_path)
    run, _ = _run_dir(tmp_path, "small-cnn", "cifar10")
    with pytest.raises(ConfigError, match="RobustBench has no 'small-cnn' architecture"):
        rb.export_submission(run, "Doe2026Langevin", "cifar10", "Linf", tmp_path / "s", card={"name": "T"})
    run, _ = _run_dir(tmp_path, "wrn-10-1", "imagenet")
    with pytest.raises(ConfigError, match="WideResNet pools an 8x8 map"):
        rb.export_submission(run, "Doe2026Langevin", "imagenet", "Linf", tmp_path / "s", card={"name": "T"})
    run, _ = _run_dir(tmp_path, "preact-resnet18", "cifar100")
    with pytest.raises(ConfigError, match="paper's title"):
        rb.export_submission(run, "Doe2026Langevin", "cifar100", "Linf", tmp_path / "s")
    with pytest.raises(ConfigError, match="trained against Linf perturbations, not L2"):
        rb.export_submission(run.parent / "cifar10-small-cnn", "Doe2026Langevin", "cifar10", "L2", tmp_path / "s")


def test_submit_command_reads_eval_report(tmp_path, capsys):
    from adv_transport.cli import main

    report = {"clean_acc": 80.0, "autoattack_acc": 41.0, "n_examples": 10000, "eps": 8 / 255, "lossy_data": True}
    run, _ = _run_dir(tmp_path, "preact-resnet18", "cifar10", report=report)
    argv = ["submit", "--checkpoint", str(run), "--name", "Doe2026Langevin", "--out", str(tmp_path / "sub")]
    argv += ["--authors", "J. Doe", "--title", "Langevin adversarial transport", "--reported", "42.5"]
    assert main(argv) == 0
    card = json.loads((tmp_path / "sub/model_info/cifar10/Linf/Doe2026Langevin.json").read_text())
    assert card["autoattack_acc"] == "41.00" and card["authors"] == "J. Doe" and card["reported"] == "42.50"
    assert card["name"] == "Langevin adversarial transport"
    assert "JPEG-lossy" in card["footnote"]
    # the same name into the same folder again: refused, the card kept; so is an accuracy that is no percentage
    card_file = tmp_path / "sub/model_info/cifar10/Linf/Doe2026Langevin.json"
    before = card_file.read_text()
    assert main(argv[:-2] + ["--reported", "40"]) == 2
    assert "Doe2026Langevin.json already exists: remove it or choose another --out or --name" in capsys.readouterr().err
    assert card_file.read_text() == before
    for reported in ("150", "nan"):
        assert main(argv[:-2] + ["--reported", reported, "--out", str(tmp_path / "other")]) == 2
        assert "accepted: an accuracy in % between 0 and 100" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    bad = ["submit", "--checkpoint", str(run), "--name", "bad-name", "--out", str(tmp_path / "x"), "--title", "T"]
    assert main(bad) == 2
    assert "<Name><Year><Word>" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --title is required
        main(["submit", "--checkpoint", str(run), "--name", "Doe2026Langevin"])
    assert "--title" in capsys.readouterr().err


def test_corrupt_autoattack_state_file_is_a_one_line_error(tmp_path):
    import adv_transport.plugins.robustbench as rb
    from adv_transport.errors import ConfigError

    state = tmp_path / "aa_state.json"
    state.write_text('{"attacks_to_run": ["apgd-ce"], "robust')  # cut short
    with pytest.raises(ConfigError, match="aa_state.json is not an AutoAttack state file"):
        rb.EvaluationState.from_disk(state)


def test_host_imports_do_not_print_the_hosts_own_deprecation_noise():
    """robustbench's and timm's imports warn about their own code (pkg_resources, torch.jit.interface) on every run;
    our plugins silence exactly those two around the import (a fresh interpreter, every warning shown)."""
    code = "import adv_transport.plugins.robustbench, adv_transport.plugins.timm, warnings; warnings.warn('ours')"
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True)
    err = run.stderr
    assert "pkg_resources is deprecated" not in err and "torch.jit.interface" not in err
    assert "UserWarning: ours" in err  # every other warning still shows
