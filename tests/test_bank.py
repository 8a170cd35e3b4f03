import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adv_transport import AdversarialBank, BankMismatchError, ConfigError, ThreatModel

SHAPE = (2, 3, 3)


@settings(max_examples=60, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.001, 0.9),
    dtype=st.sampled_from(["float32", "float16", "int8"]),
    init=st.sampled_from(["zero", "uniform"]),
    copies=st.integers(1, 3),
    scale=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_every_write_keeps_delta_in_ball_and_image_in_box(norm, eps, dtype, init, copies, scale, seed):
    g = torch.Generator().manual_seed(seed)
    n = 6
    threat = ThreatModel(norm, eps)
    bank = AdversarialBank(n, SHAPE, threat, copies=copies, dtype=dtype, init=init, seed=seed)
    # images with exact 0 and 1 pixels, the box corners where rounding goes wrong first
    x = torch.randint(0, 256, (n,) + SHAPE, generator=g).float() / 255
    x[0] = 0.0
    x[1] = 1.0
    idx = torch.randperm(n, generator=g)[:4]
    delta, copy = bank.read(idx, x[idx])
    # arbitrary, out-of-ball proposals: the bank must project them
    proposal = delta + scale * (torch.rand(delta.shape, generator=g) * 2 - 1)
    bank.write(idx, copy, proposal, x[idx])
    for k in range(copies):
        stored, _ = bank.read(torch.arange(n), x, copy=torch.full((n,), k))
        assert threat.contains(stored, atol=1e-6).all()
        assert (x + stored).min() >= -1e-6 and (x + stored).max() <= 1 + 1e-6
        if init == "zero":
            untouched = torch.ones(n, dtype=torch.bool)
            untouched[idx[copy == k]] = False
            assert (stored[untouched] == 0).all()


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-7), ("float16", 3e-4), ("int8", 0.3 / 127 / 2 + 1e-7)])
def test_round_trip_error_is_within_quantisation_step(dtype, tol):
    threat = ThreatModel("linf", 0.3)
    bank = AdversarialBank(4, SHAPE, threat, dtype=dtype)
    x = torch.full((4,) + SHAPE, 0.5)
    delta = (torch.rand((4,) + SHAPE) * 2 - 1) * 0.3
    bank.write(torch.arange(4), torch.zeros(4, dtype=torch.long), delta, x)
    back, _ = bank.read(torch.arange(4), x)
    assert (back - delta).abs().max() <= tol


def test_memory_bytes_reports_storage_size():
    threat = ThreatModel("linf", 0.3)
    n, k = 10, 2
    d = 2 * 3 * 3
    for dtype, width in [("float32", 4), ("float16", 2), ("int8", 1)]:
        bank = AdversarialBank(n, SHAPE, threat, copies=k, dtype=dtype)
        assert bank.memory_bytes == n * k * d * width + n * k


def test_read_write_by_index_and_copy():
    threat = ThreatModel("linf", 0.5)
    bank = AdversarialBank(5, (1, 1, 1), threat, copies=2)
    x = torch.full((5, 1, 1, 1), 0.5)
    bank.write(torch.tensor([3]), torch.tensor([1]), torch.full((1, 1, 1, 1), 0.25), x[:1])
    d, _ = bank.read(torch.arange(5), x, copy=torch.ones(5, dtype=torch.long))
    assert d.flatten().tolist() == [0, 0, 0, 0.25, 0]
    d0, _ = bank.read(torch.arange(5), x, copy=torch.zeros(5, dtype=torch.long))
    assert (d0 == 0).all()


def test_random_copy_per_visit_when_k_above_one():
    bank = AdversarialBank(200, (1, 1, 1), ThreatModel("linf", 0.1), copies=3)
    _, copy = bank.read(torch.arange(200), torch.zeros(200, 1, 1, 1))
    assert set(copy.tolist()) == {0, 1, 2}


def test_memmap_bank_stores_on_disk(tmp_path):
    threat = ThreatModel("linf", 0.3)
    bank = AdversarialBank(4, SHAPE, threat, dtype="int8", path=tmp_path / "bank.npy")
    x = torch.full((4,) + SHAPE, 0.5)
    bank.write(torch.arange(4), torch.zeros(4, dtype=torch.long), torch.full((4,) + SHAPE, 0.3), x)
    assert (tmp_path / "bank.npy").stat().st_size >= 4 * 18
    back, _ = bank.read(torch.arange(4), x)
    assert torch.allclose(back, torch.full_like(back, 0.3))


def test_load_refuses_mismatching_bank_and_keeps_current_one():
    threat = ThreatModel("linf", 0.3)
    saved = AdversarialBank(4, SHAPE, threat, dtype="int8")
    state = saved.state_dict()
    for other in [
        AdversarialBank(5, SHAPE, threat, dtype="int8"),
        AdversarialBank(4, (2, 3, 4), threat, dtype="int8"),
        AdversarialBank(4, SHAPE, ThreatModel("linf", 0.1), dtype="int8"),
        AdversarialBank(4, SHAPE, threat, dtype="float16"),
        AdversarialBank(4, SHAPE, threat, dtype="int8", copies=2),
    ]:
        before = other.storage.clone()
        with pytest.raises(BankMismatchError, match="does not match"):
            other.load_state_dict(state)
        assert torch.equal(other.storage, before)


def test_bad_bank_arguments_are_explained():
    threat = ThreatModel("linf", 0.3)
    with pytest.raises(ConfigError, match="accepted: float32, float16, int8"):
        AdversarialBank(4, SHAPE, threat, dtype="bfloat16")
    with pytest.raises(ConfigError, match="accepted: zero, uniform"):
        AdversarialBank(4, SHAPE, threat, init="gaussian")
    bank = AdversarialBank(4, SHAPE, threat)
    with pytest.raises(ConfigError, match="out of range"):
        bank.read(torch.tensor([4]), torch.zeros((1,) + SHAPE))
