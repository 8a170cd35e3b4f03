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


def _write_read(bank, x, delta):
    n = x.shape[0]
    idx, copy = torch.arange(n), torch.zeros(n, dtype=torch.long)
    bank.write(idx, copy, delta, x)
    return bank.read(idx, x, copy)[0]


@pytest.mark.parametrize("shape,eps", [((3, 32, 32), 0.5), ((1, 28, 28), 2.0)])
def test_int8_l2_delta_of_norm_eps_reads_back_with_its_norm(shape, eps):
    # one grid of step eps/127 for the whole bank stored a third of an l2 delta's coordinates as zero and shrank its
    # norm to 0.84 eps on every write; a per-example grid keeps the norm
    g = torch.Generator().manual_seed(0)
    n = 16
    threat = ThreatModel("l2", eps)
    for x in (torch.full((n,) + shape, 0.5), torch.rand((n,) + shape, generator=g)):
        v = torch.randn((n,) + shape, generator=g)
        delta = threat.delta_to(x, x + 2 * eps * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        assert delta.flatten(1).norm(dim=1).min() >= eps * (1 - 1e-6)
        got = _write_read(AdversarialBank(n, shape, threat, dtype="int8"), x, delta)
        norms = got.flatten(1).norm(dim=1)
        assert (norms >= 0.99 * eps).all() and (norms <= eps * (1 + 1e-6)).all()
        rel = (got - delta).flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
        assert rel.max() <= 0.02
        assert ((got == 0) & (delta != 0)).float().mean() <= 0.03


@settings(max_examples=60, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    dtype=st.sampled_from(["float32", "float16", "int8"]),
    eps=st.floats(0.01, 0.5),
    d=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_read_back_error_is_within_the_documented_bound(norm, dtype, eps, d, seed):
    # the table in adv_transport.bank's docstring; x = 0.5 and eps <= 0.5 keep the image box from binding
    g = torch.Generator().manual_seed(seed)
    n, shape = 8, (1, d)
    threat = ThreatModel(norm, eps)
    x = torch.full((n,) + shape, 0.5)
    delta = threat.delta_to(x, x + eps * 2 * (torch.rand((n,) + shape, generator=g) * 2 - 1))
    got = _write_read(AdversarialBank(n, shape, threat, dtype=dtype), x, delta)
    err = (got - delta).abs()
    rounding = 1e-6  # one float32 rounding of the bank's own projection, with margin
    if dtype == "float32":
        assert err.max() <= rounding
    elif dtype == "float16":
        assert (err <= 2**-10 * delta.abs() + 2**-24 + rounding).all()
    elif norm == "linf":
        assert err.max() <= eps / 127 + rounding
    else:
        flat = delta.flatten(1)
        kappa = d**0.5 * flat.abs().amax(1) / flat.norm(dim=1).clamp_min(1e-12)
        assert (err.flatten(1).norm(dim=1) <= kappa / 127 * flat.norm(dim=1) + rounding).all()
        assert torch.allclose(got.flatten(1).norm(dim=1), flat.norm(dim=1), rtol=1e-5, atol=1e-7)


def test_duplicate_indices_in_one_write_last_write_wins():
    # index_put with repeated indices stores an unspecified one of them (on the CPU it races between threads, on the
    # GPU between blocks); the bank defines it: the last occurrence of each (example, copy)
    shape = (3, 64, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for dtype, norm in [("float32", "linf"), ("int8", "l2")]:
            threat = ThreatModel(norm, 0.3 if norm == "linf" else 5.0)
            for _ in range(5):
                bank = AdversarialBank(4, shape, threat, copies=2, dtype=dtype)
                x = torch.full((8,) + shape, 0.5)
                idx = torch.tensor([1, 1, 2, 1, 1, 2, 1, 1])
                copy = torch.tensor([0, 1, 0, 0, 0, 0, 0, 1])
                delta = (torch.arange(8.0) + 1).view(8, 1, 1, 1).expand(8, *shape) * (0.03 if norm == "linf" else 0.001)
                bank.write(idx, copy, delta.clone(), x)
                got, _ = bank.read(torch.tensor([1, 1, 2]), x[:3], torch.tensor([0, 1, 0]))
                for row, last in zip(got, (6, 7, 5)):
                    assert torch.allclose(row, delta[last], atol=1e-6)
    finally:
        torch.set_num_threads(threads)


def test_int8_l2_bank_saved_without_scales_loads_on_the_old_grid():
    threat = ThreatModel("l2", 1.0)
    bank = AdversarialBank(2, (1, 4), threat, dtype="int8")
    state = bank.state_dict()
    state.pop("row_scale")
    state["storage"][0, 0] = torch.tensor([[127, -127, 0, 1]], dtype=torch.int8)
    state["initialized"][0, 0] = True
    fresh = AdversarialBank(2, (1, 4), threat, dtype="int8")
    fresh.load_state_dict(state)
    got, _ = fresh.read(torch.tensor([0]), torch.full((1, 1, 4), 0.5), torch.tensor([0]))
    assert got.flatten().tolist() == pytest.approx([1.0, -1.0, 0.0, 1 / 127])
