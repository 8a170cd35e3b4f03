import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adv_transport import ConfigError, LangevinSampler, ThreatModel
from adv_transport.schedules import LinearSchedule

from conftest import Linear2

# two classes, four input values; for label 0 the input gradient of CE is p1 * (w1 - w0) = p1 * [1, -1, 2, 0]
W = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0]])
X = torch.full((1, 1, 2, 2), 0.5)
Y = torch.tensor([0])


def test_linf_step_without_noise_is_signed_gradient_step():
    s = LangevinSampler(ThreatModel("linf", 0.3), eta=0.1, noise_scale=0.0, steps=1)
    delta = s.sample(Linear2(W), X, Y)
    assert delta.flatten().tolist() == pytest.approx([0.1, -0.1, 0.1, 0.0])


def test_linf_steps_are_projected_onto_the_ball():
    s = LangevinSampler(ThreatModel("linf", 0.15), eta=0.1, noise_scale=0.0, steps=2)
    delta = s.sample(Linear2(W), X, Y)
    assert delta.flatten().tolist() == pytest.approx([0.15, -0.15, 0.15, 0.0])


def test_warm_start_continues_from_given_delta_and_clips_to_box():
    s = LangevinSampler(ThreatModel("linf", 0.3), eta=0.1, noise_scale=0.0, steps=1)
    x = torch.tensor([[[[0.95, 0.05], [0.5, 0.5]]]])
    start = torch.tensor([[[[0.0, 0.0], [0.15, 0.1]]]])
    delta = s.sample(Linear2(W), x, Y, start)
    # coord 0: 0.95 + 0.1 clipped to 1; coord 1: 0.05 - 0.1 clipped to 0; coord 2: 0.15 + 0.1; coord 3: unchanged
    assert delta.flatten().tolist() == pytest.approx([0.05, -0.05, 0.25, 0.1])


def test_l2_step_is_normalised_gradient_and_projection_is_radial():
    s = LangevinSampler(ThreatModel("l2", 1.0), eta=0.2, noise_scale=0.0, steps=1)
    delta = s.sample(Linear2(W), X, Y)
    expected = torch.tensor([1.0, -1.0, 2.0, 0.0]) / math.sqrt(6) * 0.2
    assert delta.flatten().tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    s = LangevinSampler(ThreatModel("l2", 0.3), eta=0.2, noise_scale=0.0, steps=3)
    delta = s.sample(Linear2(W), X, Y)
    expected = torch.tensor([1.0, -1.0, 2.0, 0.0]) / math.sqrt(6) * 0.3  # 0.6 along the direction, scaled back
    assert delta.flatten().tolist() == pytest.approx(expected.tolist(), abs=1e-6)


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_noise_term_is_s_sqrt_2eta_xi(noise):
    eta, s_scale = 0.04, 0.5
    s = LangevinSampler(ThreatModel("linf", 0.3), eta=eta, noise_scale=s_scale, steps=1, noise=noise)
    delta = s.sample(Linear2(W), X, Y, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    xi = torch.rand(X.shape, generator=g) * 2 - 1 if noise == "uniform" else torch.randn(X.shape, generator=g)
    expected = eta * torch.tensor([1.0, -1.0, 1.0, 0.0]).view(X.shape) + s_scale * math.sqrt(2 * eta) * xi
    expected = expected.clamp(-0.3, 0.3)
    assert torch.allclose(delta, expected, atol=1e-6)


def test_uniform_noise_is_bounded_by_its_scale():
    eta, s_scale = 0.01, 0.2
    s = LangevinSampler(ThreatModel("linf", 0.3), eta=eta, noise_scale=s_scale, steps=1)
    x = torch.full((64, 1, 2, 2), 0.5)
    delta = s.sample(Linear2(W), x, torch.zeros(64, dtype=torch.long))
    assert (delta.abs() <= eta + s_scale * math.sqrt(2 * eta) + 1e-6).all()
    assert delta.std() > 0


def test_unseeded_uniform_noise_fills_its_interval():
    # zero weights: zero gradient, so delta is the noise alone, uniform in [-a, a] with a = s * sqrt(2 eta)
    eta, s_scale = 0.005, 1.0
    a = s_scale * math.sqrt(2 * eta)
    torch.manual_seed(0)
    s = LangevinSampler(ThreatModel("linf", 0.3), eta=eta, noise_scale=s_scale, steps=1)
    delta = s.sample(Linear2(torch.zeros(2, 4)), torch.full((2048, 1, 2, 2), 0.5), torch.zeros(2048, dtype=torch.long))
    assert delta.abs().max() <= a + 1e-6
    assert delta.min() < -0.98 * a and delta.max() > 0.98 * a
    assert abs(delta.mean().item()) < 0.01 and delta.std().item() == pytest.approx(a / math.sqrt(3), rel=0.03)


@settings(max_examples=80, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.01, 0.9),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.0, 3.0),
)
def test_delta_to_is_a_feasible_projection(norm, eps, seed, scale):
    g = torch.Generator().manual_seed(seed)
    threat = ThreatModel(norm, eps)
    x = torch.rand(3, 1, 2, 2, generator=g)
    x[0, 0, 0] = 0.0
    x[1, 0, 0] = 1.0
    x_adv = x + scale * (torch.rand(x.shape, generator=g) * 2 - 1)
    delta = threat.delta_to(x, x_adv.clone())
    if norm == "linf":  # l2: delta_to is the exact projection, not ball-then-box (tests/test_threat.py)
        assert torch.allclose(delta, threat.clip(x, x_adv) - x, atol=1e-6)
    else:  # ... which is never farther from the proposal than ball-then-box
        dist = (x_adv - x - delta).flatten(1).norm(dim=1)
        assert (dist <= (x_adv - threat.clip(x, x_adv)).flatten(1).norm(dim=1) + 1e-6).all()
    assert threat.contains(delta, atol=1e-6).all()
    assert (x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6


def test_scheduled_step_size_follows_progress():
    s = LangevinSampler(ThreatModel("linf", 0.3), eta=LinearSchedule(0.01, 0.05, epochs=4), noise_scale=0.0)
    assert s.sample(Linear2(W), X, Y, t=0.0).abs().max().item() == pytest.approx(0.01)
    assert s.sample(Linear2(W), X, Y, t=2.0).abs().max().item() == pytest.approx(0.03)
    assert s.sample(Linear2(W), X, Y, t=10.0).abs().max().item() == pytest.approx(0.05)


def test_model_mode_is_set_while_sampling_and_restored():
    seen = []

    class Spy(Linear2):
        def forward(self, x):
            seen.append(self.training)
            return super().forward(x)

    m = Spy(W).eval()
    LangevinSampler(ThreatModel("linf", 0.3), model_mode="train").sample(m, X, Y)
    assert seen == [True] and not m.training
    seen.clear()
    m.train()
    LangevinSampler(ThreatModel("linf", 0.3), model_mode="eval").sample(m, X, Y)
    assert seen == [False] and m.training


def test_model_mode_restores_each_submodule():
    # a model trained with a frozen (eval-mode) submodule keeps it frozen after the sampler ran in either mode
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2), torch.nn.Dropout(0.5))
    m.train()
    m[2].eval()
    for mode in ("train", "eval"):
        seen = []
        hook = m[1].register_forward_hook(lambda mod, i, o, seen=seen: seen.append(mod.training))
        LangevinSampler(ThreatModel("linf", 0.3), model_mode=mode).sample(m, X, Y)
        hook.remove()
        assert seen == [mode == "train"]
        assert [mod.training for mod in m] == [True, True, False]


def test_bad_sampler_settings_are_explained():
    t = ThreatModel("linf", 0.3)
    with pytest.raises(ConfigError, match="step size must be > 0"):
        LangevinSampler(t, eta=0.0)
    with pytest.raises(ConfigError, match="accepted: uniform, gaussian"):
        LangevinSampler(t, noise="laplace")
    with pytest.raises(ConfigError, match=">= 1"):
        LangevinSampler(t, steps=0)
    with pytest.raises(ConfigError, match="accepted: train, eval, keep"):
        LangevinSampler(t, model_mode="inference")


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), 1.0, 8.0])
def test_eps_out_of_range_is_rejected(eps):
    with pytest.raises(ConfigError, match="eps"):
        ThreatModel("linf", eps)


def test_l2_eps_beyond_box_diameter_is_rejected():
    with pytest.raises(ConfigError, match="sqrt"):
        ThreatModel("l2", 30.0).check_input_dim(784)


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
@pytest.mark.parametrize("d", [4, 3072])
def test_l2_noise_to_drift_ratio_does_not_depend_on_the_dimension(noise, d):
    # l2 noise is s * sqrt(2 eta) * xi / sqrt(d): its l2 norm (root mean square over examples) is s * sqrt(2 eta)
    # for Gaussian xi and s * sqrt(2 eta / 3) for uniform xi, in any dimension, against a drift of norm eta
    eta, s_scale, n = 0.01, 0.2, 512
    shape = (n, 1, 1, d)
    threat = ThreatModel("l2", 1.0)
    x = torch.full(shape, 0.5)
    y = torch.zeros(n, dtype=torch.long)
    sampler = LangevinSampler(threat, eta=eta, noise_scale=s_scale, steps=1, noise=noise)
    gen = torch.Generator().manual_seed(0)
    noise_only = sampler.sample(Linear2(torch.zeros(2, d)), x, y, generator=gen)  # zero gradient: no drift
    rms = noise_only.flatten(1).norm(dim=1).pow(2).mean().sqrt().item()
    expected = s_scale * math.sqrt(2 * eta) / (math.sqrt(3) if noise == "uniform" else 1.0)
    assert rms == pytest.approx(expected, rel=0.05)
    w = torch.zeros(2, d)
    w[1] = torch.linspace(-1, 1, d)
    drift = LangevinSampler(threat, eta=eta, noise_scale=0.0).sample(Linear2(w), x, y)
    assert drift.flatten(1).norm(dim=1).tolist() == pytest.approx([eta] * n, rel=1e-4)
    assert rms / eta == pytest.approx(s_scale * math.sqrt(2 / eta) / (math.sqrt(3) if noise == "uniform" else 1), 0.05)


def test_batch_stats_mode_normalises_with_the_batch_and_leaves_running_statistics_alone():
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(12, 2)
        )

    x = torch.rand(8, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 2
    threat = ThreatModel("linf", 0.3)
    deltas, stats = {}, {}
    for mode in ("train", "batch-stats", "eval"):
        m = net()
        before = {k: v.clone() for k, v in m[1].state_dict().items()}
        deltas[mode] = LangevinSampler(threat, 0.05, 0.0, steps=3, model_mode=mode).sample(m, x, y)
        stats[mode] = all(torch.equal(v, m[1].state_dict()[k]) for k, v in before.items())
        assert m[1].training and m[1].track_running_stats  # flags restored
    assert torch.equal(deltas["batch-stats"], deltas["train"])  # batch statistics, as in train mode
    assert not torch.equal(deltas["batch-stats"], deltas["eval"])
    assert stats == {"train": False, "batch-stats": True, "eval": True}  # running stats untouched by batch-stats


def test_schedules_are_named_as_schedules_and_the_old_names_still_work():
    import adv_transport as at
    from adv_transport.schedules import CosineSchedule

    assert CosineSchedule(1.0, 0.0, epochs=2)(1.0) == pytest.approx(0.5)
    assert LinearSchedule(0.0, 1.0, epochs=2) == LinearSchedule(0.0, 1.0, epochs=2)
    with pytest.raises(ConfigError, match="LinearSchedule needs epochs > 0"):
        LinearSchedule(0.0, 1.0, epochs=0)
    with pytest.warns(DeprecationWarning, match="is now LinearSchedule"):
        assert at.Linear is LinearSchedule
    with pytest.warns(DeprecationWarning, match="is now CosineSchedule"):
        assert at.Cosine is CosineSchedule


def test_the_step_size_is_called_eta_and_the_old_name_still_works():
    t = ThreatModel("linf", 0.3)
    with pytest.warns(DeprecationWarning, match="use eta="):
        s = LangevinSampler(t, step_size=0.07, noise_scale=0.0)
    assert s.eta == 0.07
    with pytest.warns(DeprecationWarning, match="use .eta"):
        assert s.step_size == 0.07
