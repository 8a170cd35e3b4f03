import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adv_transport import ThreatModel
from adv_transport import threat as threat_module


def slow_l2_box_projection(v: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference in float64: bisection on t in clamp(t * v, -x, 1 - x), the largest t whose result is in the ball."""
    v, x = v.double(), x.double()
    out = torch.empty_like(v)
    for i in range(v.shape[0]):

        def d(t, i=i):
            return torch.minimum(torch.maximum(t * v[i], -x[i]), 1 - x[i])

        if d(1.0).norm() <= eps:
            out[i] = d(1.0)
            continue
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if d(mid).norm() <= eps else (lo, mid)
        out[i] = d(lo)
    return out


def test_l2_delta_to_is_the_projection_onto_ball_and_box_not_ball_then_box():
    threat = ThreatModel("l2", 0.6)
    x = torch.tensor([[0.5, 0.5]])
    v = torch.tensor([[2.0, 0.4]])
    # the first coordinate is clipped by the box at 0.5; the second takes the rest of the radius: sqrt(0.36 - 0.25)
    assert threat.delta_to(x, x + v).flatten().tolist() == pytest.approx([0.5, 0.11**0.5], abs=1e-6)
    assert (threat.clip(x, x + v) - x).flatten().tolist() == pytest.approx([0.5, 0.6 / 1.04**0.5 * 0.2], abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    d=st.integers(1, 12),
    n=st.integers(1, 4),
    eps=st.floats(0.01, 3.0),
    scale=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**16),
    corners=st.booleans(),
    rounds=st.sampled_from([0, 1, 8]),
)
def test_l2_delta_to_is_feasible_and_optimal(d, n, eps, scale, seed, corners, rounds):
    # rounds: active-set rounds before the sorted-threshold solve (0: that solve alone; 8: the default)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, d), generator=g)
    if corners:  # pixels exactly at 0 and 1, where the box binds at once
        x = x.round()
    v = torch.randn((n, 1, d), generator=g) * scale
    threat = ThreatModel("l2", eps)
    default_rounds, threat_module._ACTIVE_SET_ROUNDS = threat_module._ACTIVE_SET_ROUNDS, rounds
    try:
        delta = threat.delta_to(x, x + v)
    finally:
        threat_module._ACTIVE_SET_ROUNDS = default_rounds
    # feasible: in the ball (up to one float rounding) and x + delta in [0, 1]
    assert (delta.flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all()
    assert (x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6
    # optimal: the slow float64 reference, and the variational inequality <v - p, z - p> <= 0 for feasible z
    ref = slow_l2_box_projection(v.flatten(1), x.flatten(1), eps)
    assert torch.allclose(delta.flatten(1).double(), ref, atol=1e-5 * max(1.0, eps))
    x64 = (x + v).double() - x.double()  # the proposal v as the projection sees it
    for _ in range(4):
        z = threat.delta_to(x, x + torch.randn((n, 1, d), generator=g)).double()
        ip = ((x64 - delta.double()) * (z - delta.double())).flatten(1).sum(1)
        assert (ip <= 1e-4 * max(1.0, scale) * max(1.0, eps)).all()


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 12), eps=st.floats(0.01, 0.99), seed=st.integers(0, 2**16))
def test_linf_delta_to_is_clamp_to_box_then_ball(d, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((3, d), generator=g)
    x_adv = x + torch.randn((3, d), generator=g)
    expected = x_adv.clamp(0, 1).sub(x).clamp(-eps, eps)
    assert torch.equal(ThreatModel("linf", eps).delta_to(x, x_adv.clone()), expected)
