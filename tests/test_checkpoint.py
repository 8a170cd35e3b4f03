"""Checkpoints: weights_only loading, one-line errors for files that are not ours, the previous checkpoint kept and
resumed from, and the trained model one call away (load_model / load_run)."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import adv_transport as at
from adv_transport.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    atomic_save,
    load_checkpoint,
    previous_path,
    rng_states,
    set_rng_states,
)
from adv_transport.cli import main


def _train(mnist_dir, out, *extra, epochs=2):
    argv = f"train --method atl --dataset mnist --epochs {epochs} --batch-size 50 --eval-n 20 --no-progress".split()
    return main(argv + ["--data-dir", str(mnist_dir), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny ATL run on synthetic MNIST (2 epochs), shared by the read-only tests below."""
    from conftest import write_synthetic_mnist

    root = tmp_path_factory.mktemp("ckpt")
    data = write_synthetic_mnist(root / "data")
    assert _train(data, root / "run") == 0
    return data, root / "run"


def test_checkpoint_holds_only_weights_only_types(trained):
    _, run = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # no allow-list needed
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert previous_path(run / "checkpoint.pt") == run / "checkpoint.prev.pt"
    assert torch.load(run / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1  # the predecessor is kept
    assert state["epoch"] == 2
    mapped = load_checkpoint(run, mmap=True)  # the same content, tensors mapped from the file instead of read
    assert mapped["config"] == state["config"] and mapped["method"].keys() == state["method"].keys()
    assert all(torch.equal(v, state["model"][k]) for k, v in mapped["model"].items())


def test_rng_states_round_trip_through_a_file(tmp_path):
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    atomic_save({"model": {}, "rng": rng_states()}, tmp_path / "c.pt")
    expected = (np.random.rand(3), random.random(), torch.rand(3))
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    set_rng_states(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (np.random.rand(3), random.random(), torch.rand(3))
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1] and torch.equal(expected[2], got[2])


def test_checkpoint_of_the_previous_version_still_loads(tmp_path):
    """0.1.0 stored np.random.get_state() as it is (an ndarray inside): read through a scoped numpy allow-list."""
    state = {"model": {"w": torch.zeros(2)}, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    set_rng_states({**loaded["rng"], "python": random.getstate()})
    assert isinstance(loaded["rng"]["numpy"][1], np.ndarray)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/adv_transport_pwned",))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "pickle", "code", "not-ours"])
def test_files_that_are_not_ours_are_one_line_errors(trained, tmp_path, kind):
    _, run = trained
    bad = tmp_path / "checkpoint.pt"
    if kind == "truncated":
        data = (run / "checkpoint.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"this is not a checkpoint\n" * 10)
    elif kind == "pickle":
        bad.write_bytes(pickle.dumps({"model": {}}))
    elif kind == "code":
        torch.save({"model": {}, "payload": _Exploit()}, bad)
    else:
        torch.save([1, 2, 3], bad)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert "checkpoint" in message  # what was expected
    assert not os.path.exists("/tmp/adv_transport_pwned")  # never code execution


def test_corrupt_evaluation_state_is_a_one_line_error(tmp_path):
    from adv_transport.eval import evaluate

    from conftest import TinyCNN, synthetic_dataset

    state = tmp_path / "eval.state.pt"
    state.write_bytes(b"PK\x03\x04 truncated zip")
    model = TinyCNN()
    with pytest.raises(CheckpointError, match="eval.state.pt is truncated or corrupt, not an adv-transport evaluation"):
        evaluate(model, synthetic_dataset(8), at.ThreatModel("linf", 0.1), ["clean"], state_path=state, sanity=False)


def test_load_model_returns_the_trained_model_in_eval_mode(trained):
    data, run = trained
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    by_hand = at.build_model("mnist-cnn", "mnist")
    by_hand.load_state_dict(state["model"])
    by_hand.eval()
    for where in (run, run / "checkpoint.pt"):
        model = at.load_model(where)
        assert not model.training and isinstance(model, at.Normalized)
        x = torch.rand(5, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(model(x), by_hand(x))
    assert main(["eval", "--checkpoint", str(run), "--n-examples", "20", "--data-dir", str(data), "--no-progress"]) == 0
    loaded = at.load_run(run, device="cpu")
    assert loaded.recipe["method"] == "atl" and loaded.recipe["dataset"] == "mnist" and loaded.epoch == 2
    assert [r["epoch"] for r in loaded.history] == [1, 2]
    assert loaded.evaluation == json.loads((run / "eval.json").read_text())
    assert loaded.config["num_classes"] == 10 and loaded.config["image_size"] == 28
    assert loaded.weights == "model"  # no weight average, no selection: the last weights


def test_load_run_without_a_recipe_says_what_to_do(tmp_path):
    torch.save({"model": at.build_model("mnist-cnn").state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds no recipe"):
        at.load_model(tmp_path)


def test_corrupt_latest_checkpoint_resumes_from_its_predecessor(mnist_dir, tmp_path, capsys):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _train(mnist_dir, ref) == 0
    assert _train(mnist_dir, out, epochs=2) == 0
    # the newest file is cut short (a full disk, a copy interrupted): the library falls back, with a warning ...
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[:1000])
    with pytest.warns(CheckpointFallbackWarning, match="loaded the previous checkpoint"):
        assert load_checkpoint(out)["epoch"] == 1
    with pytest.warns(CheckpointFallbackWarning, match="loaded the previous checkpoint"):
        assert load_checkpoint(out, mmap=True)["epoch"] == 1  # a truncated file does not map either
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(out, fallback=False)
    # ... and train --resume says so, moves the broken file aside and redoes epoch 2 from epoch 1's checkpoint
    capsys.readouterr()
    assert _train(mnist_dir, out, "--resume") == 0
    err = capsys.readouterr().err
    assert "resuming from the previous checkpoint checkpoint.prev.pt (epoch 1" in err and "Traceback" not in err
    assert (out / "checkpoint.corrupt.pt").read_bytes() == data[:1000]
    # eval falls back too, saying so in one line (not Python's warning format with a file, line and source line)
    good = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[:1000])
    assert main(["eval", "--checkpoint", str(out), "--attacks", "clean", "--n-examples", "20", "--data-dir",
                 str(mnist_dir), "--no-progress"]) == 0
    fallback = [line for line in capsys.readouterr().err.splitlines() if "CheckpointFallbackWarning" in line]
    assert len(fallback) == 1 and fallback[0].startswith("adv-transport eval: CheckpointFallbackWarning: ")
    assert "loaded the previous checkpoint" in fallback[0]
    (out / "checkpoint.pt").write_bytes(good)
    final, expected = load_checkpoint(out), load_checkpoint(ref)
    assert final["epoch"] == 2
    for k, v in expected["model"].items():
        assert torch.equal(final["model"][k], v), k  # bit-identical to the uninterrupted run
    # neither file readable: one line
    (out / "checkpoint.pt").write_bytes(b"x")
    (out / "checkpoint.prev.pt").write_bytes(b"y")
    assert _train(mnist_dir, out, "--resume") == 2
    err = capsys.readouterr().err
    assert "nor can its predecessor" in err or "cannot be read either" in err
    assert len(err.strip().splitlines()) == 1


def test_load_model_reports_the_weight_average_or_the_best_epoch_as_the_run_did(mnist_dir, tmp_path):
    """A run trained with weight averaging is evaluated and exported with the averaged weights; a run that selected
    its epoch on validation (or stopped early) with that epoch's weights."""
    assert _train(mnist_dir, tmp_path / "ema", "--ema-decay", "0.9") == 0
    state = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)
    run = at.load_run(tmp_path / "ema")
    assert run.weights == "ema"
    averaged = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, averaged[k])
    assert not all(torch.equal(v, state["model"][k]) for k, v in run.model.state_dict().items())
    # a checkpoint whose run selected the best validation epoch
    chosen = {k: v + 1.0 if v.is_floating_point() else v for k, v in state["model"].items()}
    state["best"] = {"epoch": 1, "val_pgd_acc": 50.0, "val_clean_acc": 90.0, "state": chosen}
    state["config"]["recipe"]["select"] = "best"
    torch.save(state, tmp_path / "best.pt")
    run = at.load_run(tmp_path / "best.pt")
    assert run.weights == "best"
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, chosen[k])


def test_a_checkpoint_from_before_a_recipe_field_existed_still_resumes(mnist_dir, tmp_path):
    out = tmp_path / "old"
    # a run from before the consistency term existed trained without it (ATL's MNIST default has it since)
    before = ("--consistency", "0")
    assert _train(mnist_dir, out, *before) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for field in ("consistency", "consistency_detached", "replay", "ema_decay"):  # added after 0.1.0: absent before
        del state["config"]["recipe"][field]
    torch.save(state, out / "checkpoint.pt")
    assert _train(mnist_dir, out, "--resume", *before) == 0  # the settings check reads a missing field as its default
    assert at.load_run(out).epoch == 2
    assert _train(mnist_dir, out, "--resume", *before, "--replay", "2") == 2  # a real difference is still refused
    assert _train(mnist_dir, out, "--resume") == 2  # so is today's default (consistency 20) against the stored 0


def test_a_file_that_torch_save_did_not_write_is_named_as_such(tmp_path):
    text, empty = tmp_path / "notes.txt", tmp_path / "empty.pt"
    text.write_text("hello")
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="it is not a file written by torch.save"):
        load_checkpoint(text, fallback=False)
    with pytest.raises(CheckpointError, match=r"empty\.pt is empty \(truncated or corrupt\)"):
        load_checkpoint(empty, fallback=False)
    # torch's older pickle format (torch < 1.6, or _use_new_zipfile_serialization=False) still reads
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy, fallback=False)["model"]["w"], torch.ones(2))
