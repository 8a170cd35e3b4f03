import pytest
import torch
import torch.nn as nn

from adv_transport.errors import ConfigError
from adv_transport.gan import (
    DCGANDiscriminator,
    DCGANGenerator,
    discriminator_objective,
    gan_step,
    generator_loss,
)
from adv_transport.gan.sample_quality import frechet_distance, mode_coverage
from adv_transport.optim import AdaLR, NormalizedSGD


def tiny_players():
    torch.manual_seed(0)
    g = nn.Linear(2, 4)
    d = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    return g, d


def objectives(g, d, real, z):
    with torch.no_grad():
        return float(discriminator_objective(d(real), d(g(z)))), float(generator_loss(d(g(z))))


@pytest.mark.parametrize("order", ["simultaneous", "alternating"])
@pytest.mark.parametrize("opt", ["sgd-maximize", "sgd-negate", "nsgd"])
def test_a_step_moves_each_player_the_way_its_objective_asks(order, opt):
    g, d = tiny_players()
    real = torch.randn(32, 4) + 2.0
    z = torch.randn(32, 2)
    if opt == "sgd-maximize":
        og, od, ascent = torch.optim.SGD(g.parameters(), lr=1e-3), torch.optim.SGD(d.parameters(), lr=1e-3,
                                                                                      maximize=True), "maximize"
    elif opt == "sgd-negate":
        og, od, ascent = torch.optim.SGD(g.parameters(), lr=1e-3), torch.optim.SGD(d.parameters(), lr=1e-3), "negate"
    else:
        og, od, ascent = NormalizedSGD(g.parameters(), lr=1e-3), NormalizedSGD(d.parameters(), lr=1e-3,
                                                                               maximize=True), "maximize"
    d_before, _ = objectives(g, d, real, z)
    # the discriminator's step: its objective (at the generator it saw) goes up
    rng = torch.Generator().manual_seed(1)
    g_snapshot = {k: v.clone() for k, v in g.state_dict().items()}
    log = gan_step(g, d, og, od, real, z_dim=2, order=order, ascent=ascent, generator_rng=rng)
    g_after = {k: v.clone() for k, v in g.state_dict().items()}
    g.load_state_dict(g_snapshot)
    d_after, _ = objectives(g, d, real, z)
    assert d_after > d_before
    # the generator's step: its loss (against the discriminator it now faces) goes down
    _, g_loss_before = objectives(g, d, real, z)
    g.load_state_dict(g_after)
    _, g_loss_after = objectives(g, d, real, z)
    assert g_loss_after < g_loss_before
    assert set(log.g_update_norms) == {"weight", "bias"} and all(v > 0 for v in log.g_update_norms.values())


def test_update_norms_are_the_parameter_changes():
    g, d = tiny_players()
    og, od = AdaLR(g.parameters(), lr=1e-2), AdaLR(d.parameters(), lr=1e-2, maximize=True)
    before = g.weight.detach().clone()
    log = gan_step(g, d, og, od, torch.randn(8, 4), z_dim=2)
    assert log.g_update_norms["weight"] == pytest.approx(float((g.weight.detach() - before).norm()), rel=1e-6)


def test_inconsistent_ascent_settings_are_explained():
    g, d = tiny_players()
    og, od = torch.optim.SGD(g.parameters(), lr=1e-3), torch.optim.SGD(d.parameters(), lr=1e-3)
    with pytest.raises(ConfigError, match="maximize=True"):
        gan_step(g, d, og, od, torch.randn(8, 4), z_dim=2, ascent="maximize")
    with pytest.raises(ConfigError, match="accepted: simultaneous, alternating"):
        gan_step(g, d, og, od, torch.randn(8, 4), z_dim=2, ascent="negate", order="both")


def test_dcgan_shapes_and_range():
    g, d = DCGANGenerator(z_dim=16, width=8), DCGANDiscriminator(width=8)
    x = g(torch.randn(5, 16))
    assert x.shape == (5, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert d(x).shape == (5,)


def test_frechet_distance_of_gaussians():
    torch.manual_seed(0)
    a = torch.randn(20000, 3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a + torch.tensor([1.0, 2.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)  # same covariance: ||mu_a - mu_b||^2
    scaled = a * 2
    # Tr(S + 4S - 2 * 2S) = Tr(S) ~ 3 for identity covariance
    assert frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.05)


def test_mode_coverage_counts_classes_and_kl():
    class ByBrightness(nn.Module):
        def forward(self, x):  # class = brightness bucket
            return nn.functional.one_hot((x.mean((1, 2, 3)) * 10).long().clamp(0, 9), 10).float()

    uniform = torch.arange(10).repeat_interleave(10).float().view(-1, 1, 1, 1).expand(100, 1, 2, 2) / 10 + 0.05
    cov = mode_coverage(ByBrightness(), uniform)
    assert cov["classes_covered"] == 10 and cov["kl_to_uniform"] == pytest.approx(0.0, abs=1e-9)
    collapsed = torch.full((100, 1, 2, 2), 0.35)
    cov = mode_coverage(ByBrightness(), collapsed)
    assert cov["classes_covered"] == 1 and cov["kl_to_uniform"] == pytest.approx(float(torch.log(torch.tensor(10.0))))


def test_old_module_names_still_import_with_a_deprecation_warning():
    import importlib
    import sys

    for name in ("adv_transport.games", "adv_transport.sample_quality"):
        sys.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match="moved to adv_transport.gan"):
            importlib.import_module(name)
    from adv_transport.games import gan_step as old

    assert old is gan_step
    g, d = tiny_players()
    og, od = torch.optim.SGD(g.parameters(), lr=1e-3), torch.optim.SGD(d.parameters(), lr=1e-3, maximize=True)
    with pytest.warns(DeprecationWarning, match="order="):
        gan_step(g, d, og, od, torch.randn(8, 4), z_dim=2, mode="simultaneous")
