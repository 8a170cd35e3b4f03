import json

import pytest
import torch

from adv_transport.cli import main


def _train(mnist_dir, out, *extra):
    argv = "train --method atl --dataset mnist --epochs 2 --batch-size 32 --eval-n 20 --no-progress".split()
    return main(argv + ["--data-dir", str(mnist_dir), "--out", str(out), *extra])


def test_train_writes_checkpoint_and_jsonl_log(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(mnist_dir, out) == 0
    # without progress bars, one plain line per epoch on stderr
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "adversarial acc" in lines[0] and "test PGD" in lines[0]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "clean_acc", "pgd_acc", "epoch_seconds", "input_grad_evals", "param_grad_evals"):
        assert key in records[-1]
    # 2 epochs x 200 examples x the 2 chain steps of ATL's MNIST recipe
    assert records[-1]["input_grad_evals"] == 2 * 200 * 2 and records[-1]["eval_pgd_steps"] == 40
    assert (out / "checkpoint.pt").is_file()


def test_existing_run_is_not_overwritten_without_resume(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(mnist_dir, out) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert _train(mnist_dir, out) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert _train(mnist_dir, out, "--resume", "--bank-dtype", "int8") == 2
    assert "settings differ (bank_dtype" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert _train(mnist_dir, out, "--resume") == 0  # already finished: resumes and stops at once


def test_train_with_chain_momentum_and_kl_target_saves_the_velocities_and_resumes(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(mnist_dir, out, "--chain-momentum", "0.3", "--chain-target", "kl") == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)["method"]
    assert state["velocity"].shape[1:] == (1, 28, 28) and state["velocity"].abs().sum() > 0
    assert _train(mnist_dir, out, "--resume", "--chain-momentum", "0.5", "--chain-target", "kl") == 2
    assert "settings differ (chain_momentum" in capsys.readouterr().err
    assert _train(mnist_dir, out, "--resume", "--chain-momentum", "0.3", "--chain-target", "kl") == 0
    with pytest.raises(SystemExit) as e:  # argparse names the accepted targets
        _train(mnist_dir, tmp_path / "bad", "--chain-target", "mse")
    assert e.value.code == 2 and "choose from 'ce', 'kl'" in capsys.readouterr().err


@pytest.mark.parametrize("eps,message", [("0", "eps must be a finite number > 0"), ("8", "0 < eps < 1")])
def test_bad_eps_is_explained(mnist_dir, tmp_path, capsys, eps, message):
    assert _train(mnist_dir, tmp_path / "run", "--eps", eps) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_eval_prints_table_and_writes_reports(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(mnist_dir, out) == 0
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", str(out), "--n-examples", "20", "--data-dir", str(mnist_dir), "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "| clean |" in printed and "| FGSM |" in printed and "PGD-40" in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["n_examples"] == 20 and report["pgd_acc"] <= report["clean_acc"]
    assert (out / "eval.md").read_text().startswith("### atl")


def test_demo_trains_evaluates_and_plots(mnist_dir, tmp_path):
    out = tmp_path / "demo"
    argv = "demo --epochs 1 --eval-n 20 --no-progress".split()
    assert main(argv + ["--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    assert (out / "training.png").stat().st_size > 1000
    assert (out / "eval.md").is_file()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "0"], "--epochs 0 is not accepted; accepted: an integer >= 1"),
        (["--lr", "nan"], "--lr nan is not accepted; accepted: a finite number > 0"),
        (["--lr", "-1"], "--lr -1.0 is not accepted"),
        (["--batch-size", "0"], "--batch-size 0 is not accepted"),
        (["--eta", "inf"], "--eta inf is not accepted"),
        (["--ema-decay", "1"], "--ema-decay 1.0 is not accepted; accepted: a number in [0, 1); 0 turns weight"),
        (["--step-size", "0.1"], "atl takes a Langevin step eta (--eta, Recipe.eta), not step_size=0.1"),
        (["--model", "timm:resnet19"], "has no model 'resnet19'; close names: resnet18"),
        (["--model", "resnet18"], "unknown model 'resnet18'; accepted: mnist-cnn"),
        (["--model", "wrn-27-10"], "wrn-27-10"),
        # settings that used to fail inside torch (a traceback) or only after an epoch (NaN)
        (["--replay", "0"], "--replay 0 is not accepted; accepted: an integer >= 1"),
        (["--pct-start", "2"], "--pct-start 2.0 is not accepted; accepted: a number in (0, 1)"),
        (["--pct-start", "nan"], "--pct-start nan is not accepted"),
        (["--momentum", "-1"], "--momentum -1.0 is not accepted; accepted: a finite number >= 0"),
        (["--momentum", "nan"], "--momentum nan is not accepted"),
        (["--trades-beta", "nan"], "--trades-beta nan is not accepted"),
        (["--label-smoothing", "1"], "--label-smoothing 1.0 is not accepted; accepted: a number in [0, 1)"),
        (["--chain-momentum", "-0.1"], "--chain-momentum -0.1 is not accepted"),
        (["--consistency", "-1"], "--consistency -1.0 is not accepted"),
        (["--reset-every", "-1"], "--reset-every -1 is not accepted; accepted: an integer >= 0"),
        (["--eps", "nan"], "--eps nan is not accepted: eps must be a finite number > 0"),
        (["--eval-n", "0"], "--eval-n 0 is not accepted; accepted: an integer >= 1"),
        (["--train-subset", "0"], "--train-subset 0 is not accepted"),
        (["--checkpoint-every", "-1"], "--checkpoint-every -1 is not accepted; accepted: an integer >= 0"),
        (["--checkpoint-epochs", "0"], "--checkpoint-epochs 0 is not accepted; accepted: an integer >= 1"),
        (["--sync-every", "0"], "--sync-every 0 is not accepted; accepted: an integer >= 1"),
        (["--copy-select", "max-loss"], "--copy-select 'max-loss' is not accepted; it chooses among an example's"),
        (["--device", "foo"], "--device 'foo' is not a device; accepted: auto, cpu, cuda, cuda:<index>"),
    ],
)
def test_bad_settings_are_one_line_errors(mnist_dir, tmp_path, capsys, extra, message):
    assert _train(mnist_dir, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    # a host library's import may add a one-line warning (timm's first import in a process: torch's FutureWarning)
    errors = [line for line in err.strip().splitlines() if "Warning: " not in line]
    assert message in err and len(errors) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_is_refused_with_the_accepted_list(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "stl10"])
    assert "accepted: mnist, cifar10, cifar100, svhn, imagenet, folder:<path>" in capsys.readouterr().err


def test_truncated_checkpoint_is_a_one_line_error_for_eval_and_resume(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(mnist_dir, out) == 0
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.prev.pt").unlink()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data-dir", str(mnist_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is truncated or corrupt, not an adv-transport checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert _train(mnist_dir, out, "--resume") == 2
    err = capsys.readouterr().err
    assert "no previous checkpoint checkpoint.prev.pt to resume from" in err and len(err.strip().splitlines()) == 1


def test_the_langevin_step_is_eta_and_the_attack_step_is_step_size():
    from adv_transport.cli import build_parser, make_recipe
    from adv_transport.errors import ConfigError
    from adv_transport.recipes import Recipe, recipe

    r = make_recipe(build_parser().parse_args(["train", "--method", "atl", "--eta", "0.02"]))
    assert (r.eta, r.step_size) == (0.02, None)
    r = make_recipe(build_parser().parse_args(["train", "--method", "atta", "--step-size", "0.02"]))
    assert (r.eta, r.step_size) == (None, 0.02)
    with pytest.raises(ConfigError, match="eta \\(--eta\\) is the Langevin step of atl, free-atl; pgd takes step_size"):
        recipe("pgd", "mnist").replace(eta=0.1)
    # another kind of inner step takes the step along into the field it reads
    as_pgd = recipe("atl", "mnist").replace(method="pgd")
    assert (as_pgd.step_size, as_pgd.eta) == (0.1, None)
    assert recipe("atta", "cifar10").replace(method="atl").eta == recipe("atta", "cifar10").step_size
    assert recipe("atl", "mnist").replace(method="pgd", step_size=0.02).step_size == 0.02
    # a recipe stored before eta existed (ATL's eta under step_size) reads back with its eta
    old = {**recipe("atl", "mnist").to_dict(), "step_size": 0.05}
    del old["eta"]
    assert (Recipe.from_dict(old).eta, Recipe.from_dict(old).step_size) == (0.05, None)
    assert Recipe.from_dict(recipe("pgd", "mnist").to_dict()) == recipe("pgd", "mnist")
    from adv_transport.checkpoint import _current_recipe  # what load_run reports as the run's recipe

    assert (_current_recipe(old)["eta"], _current_recipe(old)["step_size"]) == (0.05, None)
    assert _current_recipe({"model": "x"}) == {"model": "x"}  # not a whole recipe: as stored
    for bad in (lambda: recipe("atl", "mnist").replace(etaa=0.1), lambda: Recipe.from_dict({**old, "etaa": 0.1})):
        with pytest.raises(ConfigError, match=r"unknown recipe field\(s\) \['etaa'\]"):
            bad()
    with pytest.raises(ConfigError, match="lacks the field"):
        Recipe.from_dict({"method": "atl", "dataset": "mnist"})


def test_train_flags_are_derived_from_the_recipe_fields():
    import dataclasses

    from adv_transport.cli import build_parser, make_recipe
    from adv_transport.recipes import Recipe

    args = build_parser().parse_args(
        ["train", "--method", "pgd", "--step-size", "0.02", "--batch-size", "64", "--no-augment", "--noise", "gaussian"]
    )
    r = make_recipe(args)
    assert (r.step_size, r.batch_size, r.augment, r.noise, r.steps) == (0.02, 64, False, "gaussian", 40)
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    exposed = {f.name for f in dataclasses.fields(Recipe) if f.metadata.get("cli")}
    assert exposed <= flags and {"step_size", "eps", "model", "model_mode", "bank_dtype"} <= exposed


def test_wide_resnet_names_are_accepted_by_train():
    from adv_transport.cli import build_parser, make_recipe

    r = make_recipe(build_parser().parse_args(["train", "--dataset", "cifar10", "--model", "wrn-28-10"]))
    assert r.model == "wrn-28-10"


def test_out_that_is_a_file_and_resume_without_a_checkpoint_are_said_before_any_work(mnist_dir, tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("notes")
    assert _train(mnist_dir, afile) == 2
    assert "is a file, not a folder; choose a folder (nothing was written)" in capsys.readouterr().err
    assert afile.read_text() == "notes"
    if not torch.cuda.is_available():  # a machine without a GPU refuses --device cuda at once
        assert _train(mnist_dir, tmp_path / "gpu", "--device", "cuda") == 2
        assert "has no CUDA GPU that torch can use" in capsys.readouterr().err
    # --resume on a folder without a checkpoint (a first start, or a typo) starts a new run and says so
    assert _train(mnist_dir, tmp_path / "new", "--resume", "--epochs", "1") == 0
    assert "holds no checkpoint; starting a new run there" in capsys.readouterr().err


def test_eval_refuses_bad_settings_and_keeps_a_fuller_report(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(mnist_dir, out, "--epochs", "1") == 0
    base = ["eval", "--checkpoint", str(out), "--data-dir", str(mnist_dir), "--no-progress"]
    for extra, message in ((["--batch-size", "0"], "--batch-size 0 is not accepted"),
                           (["--n-examples", "0"], "--n-examples 0 is not accepted"),
                           (["--pgd-steps", "0"], "--pgd-steps 0 is not accepted"),
                           (["--pgd-step-size", "nan"], "--pgd-step-size nan is not accepted"),
                           (["--pgd-restarts", "0"], "--pgd-restarts 0 is not accepted"),
                           (["--device", "cuda:x"], "is not a device")):
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (out / "eval.json").exists()
    assert main(base + ["--n-examples", "12", "--attacks", "clean,pgd"]) == 0
    full = (out / "eval.json").read_text()
    # a quicker check afterwards (fewer points) goes beside it; the fuller report stays where submit reads it
    assert main(base + ["--n-examples", "6", "--attacks", "clean,pgd"]) == 0
    assert (out / "eval.json").read_text() == full
    assert json.loads((out / "eval-n6-clean+pgd.json").read_text())["n_examples"] == 6
    # one with as many points and more attacks replaces it; the one it replaces is moved aside, not lost
    assert main(base + ["--n-examples", "12", "--attacks", "clean,fgsm,pgd"]) == 0
    assert json.loads((out / "eval.json").read_text())["attacks"] == ["clean", "fgsm", "pgd"]
    assert (out / "eval-n12-clean+pgd.json").read_text() == full
    # neither covers the other (more points, fewer attacks): the new one is eval.json, the old one moved aside
    assert main(base + ["--n-examples", "16", "--attacks", "clean,pgd"]) == 0
    assert json.loads((out / "eval.json").read_text())["n_examples"] == 16
    assert json.loads((out / "eval-n12-clean+fgsm+pgd.json").read_text())["attacks"] == ["clean", "fgsm", "pgd"]
    # a report of other weights (a retrained model) never holds its place, whatever it covers
    stale = json.loads((out / "eval.json").read_text()) | {"model_fingerprint": "other weights", "n_examples": 500}
    (out / "eval.json").write_text(json.dumps(stale))
    capsys.readouterr()
    assert main(base + ["--n-examples", "8", "--attacks", "clean,pgd"]) == 0
    assert json.loads((out / "eval.json").read_text())["n_examples"] == 8
    assert json.loads((out / "eval-n500-clean+pgd.json").read_text())["model_fingerprint"] == "other weights"
    assert "moved the earlier eval.json (other weights or another threat)" in capsys.readouterr().err


def test_checkpoint_epochs_reaches_the_trainer(mnist_dir, tmp_path, monkeypatch):
    from adv_transport.trainer import Trainer

    saved = []
    original = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: saved.append(self.epoch) or original(self))
    assert _train(mnist_dir, tmp_path / "run", "--epochs", "3", "--checkpoint-epochs", "2") == 0
    assert saved == [2, 3]


def test_demo_refuses_unknown_attacks_before_training(tmp_path, capsys):
    assert main(["demo", "--attacks", "clean,foo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 2
    assert "--attacks: unknown attack(s) ['foo']" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
