import json

import pytest
import torch

from adv_transport import (
    ATL,
    PGD,
    AdversarialBank,
    BankMismatchError,
    DataRangeError,
    IndexedBatches,
    LangevinSampler,
    MissingIndexError,
    NonFiniteLossError,
    RandomCropFlip,
    ThreatModel,
    Trainer,
)

from conftest import TinyCNN, synthetic_dataset

THREAT = ThreatModel("linf", 0.1)


def make_trainer(run_dir=None, dtype="float32", eps=0.1, checkpoint_every=0, model=None, augment=True, lr=0.05):
    torch.manual_seed(0)
    data = synthetic_dataset(48)
    model = model or TinyCNN()
    threat = ThreatModel("linf", eps)
    bank = AdversarialBank(len(data), data.shape, threat, dtype=dtype, copies=2, init="uniform")
    method = ATL(bank, LangevinSampler(threat, step_size=0.02, noise_scale=0.2, steps=2))
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


def test_resume_after_kill_is_bit_identical(tmp_path):
    full, batches = make_trainer(tmp_path / "full")
    full.fit(batches, epochs=3)

    # the same run, killed in the middle of epoch 2 (5 steps per epoch: the 8th optimizer step dies)
    part, batches = make_trainer(tmp_path / "part", checkpoint_every=1)
    calls = {"n": 0}
    original = part.optimizer.step

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise Killed()
        return original(*a, **k)

    part.optimizer.step = dying_step
    with pytest.raises(Killed):
        part.fit(batches, epochs=3)

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
    assert pgd.counts == {"input_grad_evals": 48 * 3, "param_grad_evals": 48, "examples": 48}


def test_loader_without_indices_is_rejected_with_explanation():
    trainer, _ = make_trainer()
    data = synthetic_dataset(20)
    loader = [(data.get(torch.arange(10))[0], data.get(torch.arange(10))[1])]
    with pytest.raises(MissingIndexError, match=r"needs \(x, y, idx\)"):
        trainer.fit(loader, epochs=1)
    x, y, _ = data.get(torch.arange(10))
    with pytest.raises(MissingIndexError, match="integer tensor"):
        trainer.fit([(x, y, torch.rand(10))], epochs=1)
    with pytest.raises(MissingIndexError, match="no batches"):
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
