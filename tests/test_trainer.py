import json

import pytest
import torch

from adv_transport import (
    ATL,
    PGD,
    AdversarialBank,
    BankMismatchError,
    Clean,
    ConfigError,
    DataRangeError,
    EmptyLoaderError,
    IndexedBatches,
    LangevinSampler,
    MissingIndexError,
    NonFiniteLossError,
    RandomCropFlip,
    ThreatModel,
    Trainer,
)
from adv_transport.checkpoint import safe_load

from conftest import TinyCNN, synthetic_dataset

THREAT = ThreatModel("linf", 0.1)


def make_trainer(run_dir=None, dtype="float32", eps=0.1, checkpoint_every=0, model=None, augment=True, lr=0.05):
    torch.manual_seed(0)
    data = synthetic_dataset(48)
    model = model or TinyCNN()
    threat = ThreatModel("linf", eps)
    bank = AdversarialBank(len(data), data.shape, threat, dtype=dtype, copies=2, init="uniform")
    method = ATL(bank, LangevinSampler(threat, eta=0.02, noise_scale=0.2, steps=2))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    aug = RandomCropFlip(padding=1) if augment else None
    trainer = Trainer(
        model,
        opt,
        method,
        scheduler=sched,
        augment=aug,
        run_dir=run_dir,
        progress=False,
        checkpoint_every=checkpoint_every,
        clean_weight=0.5,
    )
    return trainer, IndexedBatches(data, batch_size=10, seed=1)


class Killed(Exception):
    pass


def fit_until_killed(trainer, batches, epochs: int, at_step: int = 8) -> None:
    """``trainer.fit`` killed at its ``at_step``-th optimizer step (that step never happens)."""
    calls = {"n": 0}
    original = trainer.optimizer.step

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == at_step:
            raise Killed()
        return original(*a, **k)

    trainer.optimizer.step = dying_step
    with pytest.raises(Killed):
        trainer.fit(batches, epochs=epochs)


def test_resume_after_kill_is_bit_identical(tmp_path):
    full, batches = make_trainer(tmp_path / "full")
    full.fit(batches, epochs=3)

    # the same run, killed in the middle of epoch 2 (5 steps per epoch: the 8th optimizer step dies)
    part, batches = make_trainer(tmp_path / "part", checkpoint_every=1)
    fit_until_killed(part, batches, 3)

    resumed, batches = make_trainer(tmp_path / "part")
    torch.manual_seed(1234)  # the global RNG state must come from the checkpoint, not from here
    assert resumed.resume()
    assert (resumed.epoch, resumed.step) == (1, 2)
    resumed.fit(batches, epochs=3)

    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.method.bank.storage, resumed.method.bank.storage)
    assert full.counts == resumed.counts
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    logged = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3]


def test_checkpoint_epochs_saves_every_nth_epoch_and_the_last_and_a_resume_redoes_the_rest(tmp_path):
    full, batches = make_trainer(tmp_path / "full")
    full.fit(batches, epochs=5)

    sparse, batches = make_trainer(tmp_path / "sparse")
    sparse.checkpoint_epochs = 2
    saved = []
    original = sparse.save_checkpoint
    sparse.save_checkpoint = lambda: saved.append(sparse.epoch) or original()
    fit_until_killed(sparse, batches, 5, at_step=19)  # 5 steps per epoch: killed in epoch 4, after epoch 2's save
    assert saved == [2]
    resumed, batches = make_trainer(tmp_path / "sparse")
    assert resumed.resume() and resumed.epoch == 2  # epoch 3 is redone from epoch 2's checkpoint
    resumed.checkpoint_epochs = 2
    saved.clear()
    original = resumed.save_checkpoint
    resumed.save_checkpoint = lambda: saved.append(resumed.epoch) or original()
    resumed.fit(batches, epochs=5)
    assert saved == [4, 5]  # every second epoch, and the last
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    logged = [json.loads(line) for line in (tmp_path / "sparse" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3, 4, 5]  # epoch 3's line once, from the rerun
    with pytest.raises(ConfigError, match="checkpoint_epochs must be an integer >= 1"):
        Trainer(TinyCNN(), torch.optim.SGD(TinyCNN().parameters(), lr=0.1), Clean(), checkpoint_epochs=0)


def test_counts_input_and_parameter_gradient_evaluations():
    trainer, batches = make_trainer()
    trainer.fit(batches, epochs=1)
    assert trainer.counts["input_grad_evals"] == 48 * 2  # T = 2 Langevin steps
    assert trainer.counts["param_grad_evals"] == 48 * 2  # adversarial + clean loss terms
    data = synthetic_dataset(48)
    pgd = Trainer(
        TinyCNN(), torch.optim.SGD(TinyCNN().parameters(), lr=0.1), PGD(THREAT, steps=3, step_size=0.05), progress=False
    )
    pgd.fit(IndexedBatches(data, 16), epochs=1)
    assert pgd.counts == {"input_grad_evals": 48 * 3, "param_grad_evals": 48, "forward_evals": 0, "examples": 48}


def test_loader_without_indices_is_rejected_with_explanation():
    trainer, _ = make_trainer()
    data = synthetic_dataset(20)
    loader = [(data.get(torch.arange(10))[0], data.get(torch.arange(10))[1])]
    with pytest.raises(MissingIndexError, match=r"needs \(x, y, idx\)"):
        trainer.fit(loader, epochs=1)
    x, y, _ = data.get(torch.arange(10))
    with pytest.raises(MissingIndexError, match="integer tensor"):
        trainer.fit([(x, y, torch.rand(10))], epochs=1)
    with pytest.raises(EmptyLoaderError, match="no batches"):
        trainer.fit([], epochs=1)


def test_data_outside_unit_range_is_rejected():
    trainer, _ = make_trainer()
    data = synthetic_dataset(20)
    x, y, idx = data.get(torch.arange(10))
    with pytest.raises(DataRangeError, match=r"\[0, 1\].*Normalize"):
        trainer.fit([((x - 0.5) / 0.25, y, idx)], epochs=1)


def test_bank_mismatch_on_resume_is_refused_and_checkpoint_kept(tmp_path):
    trainer, batches = make_trainer(tmp_path, dtype="int8")
    trainer.fit(batches, epochs=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    for kwargs in ({"dtype": "float16"}, {"eps": 0.2}):
        other, _ = make_trainer(tmp_path, **kwargs)
        with pytest.raises(BankMismatchError):
            other.resume()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_non_finite_loss_stops_names_the_step_and_keeps_last_good_checkpoint(tmp_path):
    trainer, batches = make_trainer(tmp_path)
    trainer.fit(batches, epochs=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    bank_before = trainer.method.bank.storage.clone()
    params_before = [p.detach().clone() for p in trainer.model.parameters()]
    with torch.no_grad():
        trainer.model.net[-1].bias[0] = float("nan")
    params_before[-1][0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 0") as info:
        trainer.fit(batches, epochs=2)
    assert info.value.step == 0 and info.value.epoch == 1
    assert info.value.checkpoint == str(tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert torch.equal(trainer.method.bank.storage, bank_before)  # no bank write from the failed step
    for p, q in zip(trainer.model.parameters(), params_before):  # no parameter update from the failed step
        assert torch.equal(p.nan_to_num(7.0), q.nan_to_num(7.0))


class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.2)
        self.head = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_fit_keeps_the_modes_the_user_set():
    # a batch-norm the user froze (eval mode) is neither switched to train mode nor updated, during or after fit
    model = BNNet()
    model.bn.eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.25)
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone(), model.bn.num_batches_tracked.clone())
    seen = []
    model.bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    trainer, batches = make_trainer(model=model, augment=False)
    trainer.fit(batches, epochs=1)
    assert seen and not any(seen)
    assert [m.training for m in (model, model.conv, model.bn, model.drop, model.head)] == [
        True,
        True,
        False,
        True,
        True,
    ]
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    assert torch.equal(model.bn.num_batches_tracked, stats[2])
    # a model in eval mode as a whole trains in train mode and is handed back in eval mode
    model.eval()
    seen.clear()
    trainer.fit(batches, epochs=2)
    assert seen and all(seen)
    assert not any(m.training for m in model.modules())


def test_failing_model_load_on_resume_leaves_bank_and_model_untouched(tmp_path):
    trainer, batches = make_trainer(tmp_path, dtype="int8")
    trainer.fit(batches, epochs=1)
    other, other_batches = make_trainer(dtype="int8", lr=0.01)
    other.fit(other_batches, epochs=1)  # a bank and a model that differ from the checkpoint's
    ckpt = safe_load(tmp_path / "checkpoint.pt", "a checkpoint")
    ckpt["model"].pop("net.3.bias")  # the model load fails (missing key)
    bank = other.method.bank.storage.clone()
    params = [p.detach().clone() for p in other.model.parameters()]
    opt_state = other.optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    with pytest.raises(RuntimeError, match="net.3.bias"):
        other.load_state_dict(ckpt)
    assert torch.equal(other.method.bank.storage, bank)
    assert all(torch.equal(p, q) for p, q in zip(other.model.parameters(), params))
    assert torch.equal(other.optimizer.state_dict()["state"][0]["momentum_buffer"], opt_state)
    assert (other.epoch, other.step) == (1, 0)
    # a failing optimizer load after a successful model load is rolled back too
    ckpt = safe_load(tmp_path / "checkpoint.pt", "a checkpoint")
    ckpt["optimizer"]["param_groups"].append(dict(ckpt["optimizer"]["param_groups"][0]))
    with pytest.raises(ValueError):
        other.load_state_dict(ckpt)
    assert torch.equal(other.method.bank.storage, bank)
    assert all(torch.equal(p, q) for p, q in zip(other.model.parameters(), params))


def _loader_trainer(run_dir, checkpoint_every=0):
    trainer, _ = make_trainer(run_dir, checkpoint_every=checkpoint_every, augment=False)
    loader = torch.utils.data.DataLoader(synthetic_dataset(48), batch_size=10, shuffle=True)
    return trainer, loader


def test_resume_with_a_shuffling_dataloader_is_bit_identical(tmp_path):
    torch.manual_seed(5)
    full, loader = _loader_trainer(tmp_path / "full")
    full.fit(loader, epochs=2)

    torch.manual_seed(5)
    part, loader = _loader_trainer(tmp_path / "part", checkpoint_every=1)
    fit_until_killed(part, loader, 2)

    resumed, loader = _loader_trainer(tmp_path / "part")
    torch.manual_seed(1234)  # every random state must come from the checkpoint
    assert resumed.resume()
    assert (resumed.epoch, resumed.step) == (1, 2)
    resumed.fit(loader, epochs=2)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.method.bank.storage, resumed.method.bank.storage)


def test_mid_epoch_resume_without_a_recorded_loader_state_is_refused(tmp_path):
    part, loader = _loader_trainer(tmp_path, checkpoint_every=1)
    original = part.optimizer.step

    def dying_step(*a, **k):
        if part.step == 2:
            raise Killed()
        return original(*a, **k)

    part.optimizer.step = dying_step
    with pytest.raises(Killed):
        part.fit(loader, epochs=1)
    ckpt = safe_load(tmp_path / "checkpoint.pt", "a checkpoint")
    ckpt["loader_rng"] = None  # as written by a version that did not record it
    resumed, loader = _loader_trainer(None)
    resumed.load_state_dict(ckpt)
    with pytest.raises(ConfigError, match="IndexedBatches"):
        resumed.fit(loader, epochs=1)


def test_non_finite_parameters_are_not_checkpointed_and_say_so(tmp_path):
    from adv_transport import NonFiniteError, NonFiniteParameterError

    trainer, batches = make_trainer(tmp_path)
    trainer.fit(batches, epochs=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.model.net[-1].bias[0] = float("inf")
    with pytest.raises(NonFiniteParameterError, match="is not finite") as info:
        trainer.save_checkpoint()
    assert isinstance(info.value, NonFiniteError) and not isinstance(info.value, NonFiniteLossError)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_resume_keeps_the_optimizer_implementation_this_run_built():
    """A checkpoint of a non-fused optimizer resumed into a fused one (a GPU run resuming a CPU or older checkpoint)
    stays fused, so GradScaler can hand it its scale; and the other way round."""
    from adv_transport.trainer import _keep_implementation

    torch.manual_seed(0)
    model, x = TinyCNN(), torch.rand(4, 1, 8, 8)
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    plain.step()
    fused = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    fused.load_state_dict(_keep_implementation(plain.state_dict(), fused))
    assert fused.param_groups[0]["fused"] is True
    buffer = plain.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(fused.state_dict()["state"][0]["momentum_buffer"], buffer)
    scaler = torch.amp.GradScaler("cpu")
    fused.zero_grad()
    scaler.scale(model(x).sum()).backward()
    scaler.step(fused)  # torch's own load_state_dict left fused=None here: AssertionError (grad_scale given)
    again = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    again.load_state_dict(_keep_implementation(fused.state_dict(), again))
    assert not again.param_groups[0]["fused"]


class _InputBackwards(torch.autograd.Function):
    """Identity at the model's input that counts the backward passes that reach the input."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _InputBackwards.calls += 1
        return grad


class _CountingInput(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(_InputBackwards.apply(x))


def test_training_backward_skips_the_input_gradient_of_the_consistency_anchor():
    # the consistency term keeps the graph of the chain's first step, whose input is a leaf that requires grad: the
    # training backward must not compute that input's gradient (the first layer's costly backward) for nothing
    torch.manual_seed(0)
    data = synthetic_dataset(32)
    threat = ThreatModel("linf", 0.1)
    model = _CountingInput(TinyCNN())
    bank = AdversarialBank(len(data), data.shape, threat, init="uniform")
    method = ATL(bank, LangevinSampler(threat, eta=0.02, steps=2), consistency=10.0)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), method, progress=False)
    _InputBackwards.calls = 0
    trainer.fit(IndexedBatches(data, 16, seed=0), epochs=1)
    assert _InputBackwards.calls == 2 * 2  # the 2 chain steps of each of the 2 batches, none in training
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("free", [False, True])
def test_restricting_the_training_backward_changes_no_result(monkeypatch, free):
    # the same runs with the backward into every leaf (the behaviour before) give the same parameters and bank
    from adv_transport.methods import FreeATL

    def run():
        torch.manual_seed(0)
        data = synthetic_dataset(32)
        threat = ThreatModel("linf", 0.1)
        model = TinyCNN()
        bank = AdversarialBank(len(data), data.shape, threat, init="uniform")
        sampler = LangevinSampler(threat, eta=0.02, steps=1 if free else 2)
        method = FreeATL(bank, sampler) if free else ATL(bank, sampler, consistency=10.0)
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), method, progress=False)
        trainer.fit(IndexedBatches(data, 16, seed=0), epochs=2)
        return [p.detach().clone() for p in model.parameters()], bank.storage.clone()

    params, storage = run()
    every_leaf = torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, inputs=None, **kw: every_leaf(self, *a, **kw))
    old_params, old_storage = run()
    assert all(torch.equal(a, b) for a, b in zip(params, old_params)) and torch.equal(storage, old_storage)


def test_parameters_outside_the_optimizer_still_get_their_gradients():
    # the restricted backward covers the model's trainable parameters too (DDP's reducer waits for each of them),
    # not only the optimiser's: a head-only optimiser leaves the body's gradients as a plain backward would
    torch.manual_seed(0)
    data = synthetic_dataset(32)
    threat = ThreatModel("linf", 0.1)
    model = TinyCNN()
    head = list(model.parameters())[-2:]
    bank = AdversarialBank(len(data), data.shape, threat, init="uniform")
    method = ATL(bank, LangevinSampler(threat, eta=0.02), consistency=10.0)
    trainer = Trainer(model, torch.optim.SGD(head, lr=0.05), method, progress=False)
    trainer.fit(IndexedBatches(data, 16, seed=0), epochs=1)
    assert all(p.grad is not None for p in model.parameters())


def test_each_finished_epoch_is_one_plain_log_line(caplog):
    """``logging`` INFO of adv_transport.trainer, one line per epoch with the parts the record has (silent unless the
    application asks: log_epochs prints them, the command line and the benchmark scripts do without progress bars)."""
    import io
    import logging

    from adv_transport.trainer import epoch_line, log_epochs, logger

    trainer, batches = make_trainer()
    with caplog.at_level(logging.INFO, logger="adv_transport.trainer"):
        trainer.fit(batches, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "adv_transport.trainer"]
    assert lines == [epoch_line(h, 2) for h in trainer.history] and lines[1].startswith("epoch 2/2: train loss ")
    record = {"epoch": 3, "train_loss": 1.23456, "train_adv_acc": 0.345, "epoch_seconds": 67.2, "train_seconds": 201.0,
              "val_pgd_acc": 31.2, "val_clean_acc": 52.0, "pgd_acc": 30.1}
    assert epoch_line(record, 15) == ("epoch 3/15: train loss 1.2346, adversarial acc 34.5 %; val PGD 31.2 % (clean "
                                      "52.0 %); test PGD 30.1 %; 67.2 s (training 201 s so far)")
    out = io.StringIO()
    log_epochs(out)
    log_epochs(out)  # a second call replaces the handler: no line twice
    try:
        trainer.fit(batches, 3)
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
    assert out.getvalue() == epoch_line(trainer.history[-1], 3) + "\n"
