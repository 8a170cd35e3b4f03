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


def test_submission_round_trip_through_load_model(tmp_path):
    import adv_transport.plugins.robustbench as rb

    torch.manual_seed(0)
    ours = build_model("preact-resnet18", "cifar10").eval()
    recipe = {"dataset": "cifar10", "model": "preact-resnet18", "eps": 8 / 255, "method": "atl"}
    torch.save({"config": {"recipe": recipe}, "model": ours.state_dict(), "epoch": 1}, tmp_path / "checkpoint.pt")
    report = {"clean_acc": 81.5, "autoattack_acc": 40.25, "n_examples": 1000, "eps": 8 / 255}
    paths = rb.export_submission(
        tmp_path / "checkpoint.pt",
        "Doe2026Langevin",
        "cifar10",
        "Linf",
        tmp_path / "sub",
        report=report,
        card={"authors": "J. Doe"},
    )
    assert paths["checkpoint"] == tmp_path / "sub/models/cifar10/Linf/Doe2026Langevin.pt"
    card = json.loads(paths["card"].read_text())
    assert card["eps"] == "8/255" and card["clean_acc"] == "81.50" and card["authors"] == "J. Doe"
    assert card["autoattack_acc"] == "" and "first 1000" in card["footnote"]  # not the 10,000-point protocol
    assert "'Doe2026Langevin'" in paths["zoo_entry"].read_text()

    rb.register_model("Doe2026Langevin", "preact-resnet18", "cifar10", "Linf")
    loaded = rb.load_model(
        "Doe2026Langevin", model_dir=tmp_path / "sub" / "models", dataset="cifar10", threat_model="Linf"
    )
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ours(x), atol=1e-6)


def test_bad_submission_names_and_datasets_are_explained(tmp_path):
    import adv_transport.plugins.robustbench as rb
    from adv_transport.errors import ConfigError

    with pytest.raises(ConfigError, match="<Name><Year><Word>"):
        rb.export_submission(tmp_path / "x.pt", "my_model", "cifar10", "Linf", tmp_path)
    with pytest.raises(ConfigError, match="no leaderboard for 'mnist'"):
        rb.export_submission(tmp_path / "x.pt", "Doe2026Langevin", "mnist", "Linf", tmp_path)


def test_submit_command_reads_eval_report(tmp_path, capsys):
    from adv_transport.cli import main

    torch.manual_seed(0)
    recipe = {"dataset": "cifar10", "model": "preact-resnet18", "eps": 8 / 255, "method": "atl"}
    torch.save(
        {"config": {"recipe": recipe}, "model": build_model("preact-resnet18", "cifar10").state_dict()},
        tmp_path / "checkpoint.pt",
    )
    (tmp_path / "eval.json").write_text(
        json.dumps({"clean_acc": 80.0, "autoattack_acc": 41.0, "n_examples": 10000, "eps": 8 / 255, "lossy_data": True})
    )
    assert (
        main(
            [
                "submit",
                "--checkpoint",
                str(tmp_path),
                "--name",
                "Doe2026Langevin",
                "--out",
                str(tmp_path / "sub"),
                "--authors",
                "J. Doe",
            ]
        )
        == 0
    )
    card = json.loads((tmp_path / "sub/model_info/cifar10/Linf/Doe2026Langevin.json").read_text())
    assert card["autoattack_acc"] == "41.00" and card["authors"] == "J. Doe"
    assert "JPEG-lossy" in card["footnote"]
    assert main(["submit", "--checkpoint", str(tmp_path), "--name", "bad-name", "--out", str(tmp_path / "x")]) == 2
    assert "<Name><Year><Word>" in capsys.readouterr().err
