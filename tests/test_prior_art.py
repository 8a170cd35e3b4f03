"""The bank-based prior art (ATTA, FGSM-PGI) and ATL's eps warm-up and periodic reset: their arithmetic on a linear
model whose input gradient is known in closed form."""

import pytest
import torch
import torch.nn.functional as F

from adv_transport import ATL, AdversarialBank, ConfigError, IndexedBatches, LangevinSampler, ThreatModel, Trainer
from adv_transport.distributed import ShardedBank
from adv_transport.methods import ATTA, FGSMPGI, warmed_up
from adv_transport.recipes import recipe
from adv_transport.training import build_method

from conftest import Linear2, synthetic_dataset

W = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0]])
X = torch.full((8, 1, 2, 2), 0.5)
Y = torch.zeros(8, dtype=torch.long)
SIGN = torch.tensor([1.0, -1.0, 1.0, 0.0]).view(1, 1, 2, 2)
IDX = torch.arange(8)


def test_warmed_up_grows_eps_linearly_then_stays():
    t = ThreatModel("linf", 0.2)
    assert warmed_up(t, 1.0, 4).eps == pytest.approx(0.05)
    assert warmed_up(t, 4.0, 4) is t and warmed_up(t, 9.0, 4) is t and warmed_up(t, 0.5, 0) is t
    assert warmed_up(t, 0.0, 4).eps == pytest.approx(0.2e-3)  # never exactly 0


def test_atl_eps_warm_up_shrinks_ball_and_step_together():
    t = ThreatModel("linf", 0.2)
    atl = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0), eps_ramp=4)
    d = atl.perturb(Linear2(W), X, Y, IDX, 1.0) - X  # eps 0.05, step 0.1 * 0.05 / 0.2 = 0.025
    assert torch.allclose(d, 0.025 * SIGN.expand(8, 1, 2, 2))
    atl.commit()
    d = atl.perturb(Linear2(W), X, Y, IDX, 1.0) - X  # a second step hits the smaller ball
    assert torch.allclose(d, 0.05 * SIGN.expand(8, 1, 2, 2))
    atl.commit()
    d = atl.perturb(Linear2(W), X, Y, IDX, 6.0) - X  # after the warm-up: full step, full ball
    assert torch.allclose(d, 0.15 * SIGN.expand(8, 1, 2, 2))


def test_atl_reset_every_forgets_the_chains_at_period_boundaries_only():
    t = ThreatModel("linf", 0.3)
    atl = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0), reset_every=2)
    for epoch, expected in ((0.0, 0.1), (1.5, 0.2), (2.0, 0.1), (3.0, 0.2), (4.2, 0.1)):
        d = atl.perturb(Linear2(W), X, Y, IDX, epoch) - X
        atl.commit()
        assert torch.allclose(d, expected * SIGN.expand(8, 1, 2, 2), atol=1e-6), epoch
    assert atl.state_dict()["cycle"] == 2
    with pytest.raises(ConfigError, match="reset_every"):
        ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t), reset_every=-1)


def test_atta_is_one_noiseless_step_from_the_stored_perturbation_and_resets():
    t = ThreatModel("linf", 0.3)
    r = recipe("atta", "cifar10").replace(eps=0.3, eps_ramp=0, step_size=0.1, reset_every=3)
    atta = build_method(r, 8, (1, 2, 2))
    assert isinstance(atta, ATTA) and atta.reset_every == 3 and atta.sampler.noise_scale == 0
    for epoch, expected in ((0.0, 0.1), (1.0, 0.2), (2.0, 0.3), (2.5, 0.3), (3.0, 0.1)):
        d = atta.perturb(Linear2(W), X, Y, IDX, epoch) - X
        atta.commit()
        assert torch.allclose(d, expected * SIGN.expand(8, 1, 2, 2), atol=1e-6), epoch
    with pytest.raises(ConfigError, match="noiseless"):
        ATTA(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, noise_scale=0.1))


def test_fgsm_pgi_steps_prior_and_momentum_as_in_the_paper():
    t = ThreatModel("linf", 0.1)
    model = Linear2(W)
    pgi = FGSMPGI(t, 8, (1, 2, 2), lam=10.0, decay=0.3, seed=0)
    # first visit: the prior is a random corner eps * sign(u); the trained point one eps-step from it
    x_tr = pgi.perturb(model, X, Y, IDX, 0.0)
    prior = pgi.delta[IDX].clone()
    assert not pgi.initialized.any()  # nothing stored before commit
    corner = torch.Generator().manual_seed(0)
    expected_prior = 0.1 * (torch.rand((8, 1, 2, 2), generator=corner) * 2 - 1).sign()
    assert torch.equal(prior, expected_prior)
    g = SIGN.expand(8, 1, 2, 2)  # d CE / d x for class 0 has the sign of w1 - w0 (p1 > 0): the SIGN pattern
    expected_train = (prior + 0.1 * g.sign()).clamp(-0.1, 0.1)
    assert torch.allclose(x_tr - X, expected_train, atol=1e-6)
    pgi.commit()
    # the momentum: g / ||g||_1 over the whole batch (+ 0.3 * the previous momentum, 0 at first)
    x0 = (X + prior).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), Y, reduction="sum"), x0)
    m1 = grad / grad.abs().sum()
    assert torch.allclose(pgi.momentum, m1, atol=1e-7)
    assert torch.allclose(pgi.delta, (prior + 0.1 * m1.sign()).clamp(-0.1, 0.1))
    # second visit continues from the stored prior with momentum 0.3 * m1
    stored = pgi.delta.clone()
    pgi.perturb(model, X, Y, IDX, 1.0)
    pgi.commit()
    x0 = (X + stored).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), Y, reduction="sum"), x0)
    assert torch.allclose(pgi.momentum, grad / grad.abs().sum() + 0.3 * m1, atol=1e-7)


def test_fgsm_pgi_consistency_term_and_its_cost_are_counted():
    t = ThreatModel("linf", 0.1)
    model = Linear2(W)
    pgi = FGSMPGI(t, 8, (1, 2, 2), lam=10.0)
    x_tr = pgi.perturb(model, X, Y, IDX, 0.0)
    prior_logits = model(X + pgi.delta[IDX]).detach()
    logits = model(x_tr)
    reg = pgi.regularizer(logits, Y)
    assert reg.requires_grad
    assert torch.allclose(reg, 10.0 * ((logits - prior_logits) ** 2).mean())
    assert pgi.regularizer(logits, Y) is None  # consumed once per step
    data = synthetic_dataset(16, shape=(1, 2, 2), classes=2)
    trainer = Trainer(Linear2(W), torch.optim.SGD(Linear2(W).parameters(), lr=0.0), FGSMPGI(t, 16, (1, 2, 2)),
                      progress=False)
    trainer.fit(IndexedBatches(data, 8), epochs=1)
    assert trainer.counts == {"input_grad_evals": 16, "param_grad_evals": 32, "forward_evals": 0,
                              "examples": 16}
    with pytest.raises(ConfigError, match="l-inf"):
        FGSMPGI(ThreatModel("l2", 0.5), 8, (1, 2, 2))


def test_fgsm_pgi_state_round_trips_and_resets():
    t = ThreatModel("linf", 0.1)
    pgi = FGSMPGI(t, 8, (1, 2, 2), reset_every=2)
    pgi.perturb(Linear2(W), X, Y, IDX, 0.0)
    pgi.commit()
    other = FGSMPGI(t, 8, (1, 2, 2), reset_every=2, seed=5)
    other.load_state_dict(pgi.state_dict())
    assert torch.equal(other.delta, pgi.delta) and torch.equal(other.momentum, pgi.momentum)
    pgi.perturb(Linear2(W), X, Y, IDX, 2.0)  # a new period: fresh corners, momentum 0
    assert pgi._cycle == 1 and not pgi.initialized.any()
    with pytest.raises(ConfigError, match="holds"):
        FGSMPGI(t, 4, (1, 2, 2)).load_state_dict(pgi.state_dict())


def test_free_atl_moves_the_chain_with_the_training_pass_gradient_one_backward_per_batch():
    from adv_transport.methods import FreeATL

    t = ThreatModel("linf", 0.3)
    free = FreeATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0))
    assert free.input_grad_passes == 0 and free.wants_input_grad
    x_tr = free.perturb(Linear2(W), X, Y, IDX, 0.0)
    assert torch.equal(x_tr, X)  # trains on the stored sample (clean start here)
    free.receive_input_grad(SIGN.expand(8, 1, 2, 2) * 1e-3)  # any positive multiple of the gradient
    free.commit()
    assert torch.allclose(free.bank.read(IDX, X)[0], 0.1 * SIGN.expand(8, 1, 2, 2))
    free.perturb(Linear2(W), X, Y, IDX, 1.0)
    free.commit()  # no gradient handed over (a failed step): nothing written
    assert torch.allclose(free.bank.read(IDX, X)[0], 0.1 * SIGN.expand(8, 1, 2, 2))
    # in the trainer: one forward and one backward per batch, the chain moved along the loss's input gradient
    data = synthetic_dataset(16, shape=(1, 2, 2), classes=2)
    model = Linear2(W)
    bank = AdversarialBank(16, (1, 2, 2), t)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), FreeATL(bank, LangevinSampler(
        t, eta=0.1, noise_scale=0.0)), progress=False)
    calls = {"backward": 0}
    model.register_full_backward_hook(lambda *a: calls.__setitem__("backward", calls["backward"] + 1))
    trainer.fit(IndexedBatches(data, 8, shuffle=False), epochs=1)
    assert calls["backward"] == 2  # two batches, one backward each
    assert trainer.counts == {"input_grad_evals": 0, "param_grad_evals": 16, "forward_evals": 0, "examples": 16}
    x, y, idx = data.get(torch.arange(16))
    x0 = x.clone().requires_grad_(True)
    F.cross_entropy(model(x0), y).backward()
    expected = t.delta_to(x, x + 0.1 * x0.grad.sign())
    assert torch.allclose(bank.read(idx, x)[0], expected, atol=1e-6)


def test_replay_trains_each_batch_several_times_in_a_row():
    data = synthetic_dataset(16, shape=(1, 2, 2), classes=2)
    seen = []
    from adv_transport import Clean

    class Recording(Clean):
        def perturb(self, model, x, y, idx, t):
            seen.append(idx.tolist())
            return x

    model = Linear2(W)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), Recording(), progress=False, replay=3)
    trainer.fit(IndexedBatches(data, 8, shuffle=False), epochs=1)
    assert seen == [list(range(8))] * 3 + [list(range(8, 16))] * 3
    assert trainer.counts["param_grad_evals"] == 48
    with pytest.raises(ConfigError, match="replay"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), Clean(), replay=0)


def test_atl_consistency_term_uses_the_chains_first_pass_and_is_counted():
    t = ThreatModel("linf", 0.3)
    model = Linear2(W)
    bank = AdversarialBank(8, (1, 2, 2), t)
    start = t.uniform(X)
    bank.write(IDX, torch.zeros(8, dtype=torch.long), start, X)
    atl = ATL(bank, LangevinSampler(t, eta=0.1, noise_scale=0.0), consistency=10.0)
    x_tr = atl.perturb(model, X, Y, IDX, 0.0)
    assert torch.allclose(x_tr - X, t.delta_to(X, X + start + 0.1 * SIGN.expand(8, 1, 2, 2)))  # the same step
    logits = model(x_tr)
    reg = atl.regularizer(logits, Y)
    assert reg.requires_grad
    assert torch.allclose(reg, 10.0 * ((logits - model(X + start)) ** 2).mean())
    assert atl.regularizer(logits, Y) is None and atl.extra_param_passes == 1
    plain = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0))
    assert plain.extra_param_passes == 0 and plain.regularizer(logits, Y) is None
    with pytest.raises(ConfigError, match="consistency"):
        ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t), consistency=-1.0)
    r = recipe("atl", "cifar10").replace(consistency=10.0)
    assert build_method(r, 8, (3, 32, 32)).consistency == 10.0 and "consistency 10" in r.tricks()


def test_atl_detached_consistency_has_the_same_value_no_gradient_through_the_anchor_and_no_extra_pass():
    t = ThreatModel("linf", 0.3)
    start = t.uniform(X)
    atls = []
    for detached in (False, True):
        bank = AdversarialBank(8, (1, 2, 2), t)
        bank.write(IDX, torch.zeros(8, dtype=torch.long), start, X)
        atls.append(ATL(bank, LangevinSampler(t, eta=0.1, noise_scale=0.0), consistency=10.0,
                        consistency_detached=detached))
    grads = []
    for atl in atls:
        model = Linear2(W)
        x_tr = atl.perturb(model, X, Y, IDX, 0.0)
        reg = atl.regularizer(model(x_tr), Y)
        reg.backward()
        grads.append((x_tr, reg.detach(), model.w.grad.clone()))
    (x_a, reg_a, g_a), (x_d, reg_d, g_d) = grads
    assert torch.equal(x_a, x_d) and torch.allclose(reg_a, reg_d) and reg_d > 0  # same chain step, same value
    # the gradient of lam * mean((f(x_tr) - c)^2) with c constant: only through the new sample's logits
    model = Linear2(W)
    anchor = model(X + start).detach()
    (10.0 * ((model(x_d) - anchor) ** 2).mean()).backward()
    assert torch.allclose(g_d, model.w.grad) and not torch.allclose(g_a, g_d)
    assert atls[0].extra_param_passes == 1 and atls[1].extra_param_passes == 0
    data = synthetic_dataset(16, shape=(1, 2, 2), classes=2)
    model = Linear2(W)
    bank = AdversarialBank(16, (1, 2, 2), t)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), ATL(
        bank, LangevinSampler(t, eta=0.1), consistency=10.0, consistency_detached=True), progress=False)
    trainer.fit(IndexedBatches(data, 8), epochs=1)
    # ATL T=1's two passes
    assert trainer.counts == {"input_grad_evals": 16, "param_grad_evals": 16, "forward_evals": 0, "examples": 16}
    r = recipe("atl", "cifar10").replace(consistency=10.0, consistency_detached=True)
    assert build_method(r, 8, (3, 32, 32)).extra_param_passes == 0 and "consistency 10 (detached)" in r.tricks()
    with pytest.raises(ConfigError, match="consistency > 0"):
        build_method(r.replace(consistency=0.0), 8, (3, 32, 32))


def test_atl_chain_momentum_drifts_along_the_velocity_and_keeps_it_between_visits():
    t = ThreatModel("linf", 0.3)
    model = Linear2(W)
    atl = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0), chain_momentum=0.5)

    def normalised_grad(delta):
        x0 = (X + delta).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x0), Y, reduction="sum"), x0)
        return g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)

    # first visit from the clean point: v = g / mean|g| (no velocity yet), the drift follows sign(v) = sign(g)
    x_tr = atl.perturb(model, X, Y, IDX, 0.0)
    assert torch.allclose(x_tr - X, 0.1 * SIGN.expand(8, 1, 2, 2))
    assert not atl.velocity.any()  # nothing stored before commit
    atl.commit()
    v1 = normalised_grad(torch.zeros_like(X))
    assert torch.allclose(atl.velocity, v1, atol=1e-6)
    # second visit with a stored velocity against the gradient: v = g / mean|g| + 0.5 * v_stored, and the drift
    # follows sign(v), here -1 everywhere, where the plain chain would follow sign(g) again
    stored = atl.bank.read(IDX, X)[0].clone()
    atl.velocity[IDX] = -10.0
    x_tr = atl.perturb(model, X, Y, IDX, 1.0)
    v2 = normalised_grad(stored) - 5.0
    assert (v2 < 0).all()
    assert torch.allclose(x_tr - X, t.delta_to(X, X + stored + 0.1 * v2.sign()))
    plain = t.delta_to(X, X + stored + 0.1 * SIGN.expand(8, 1, 2, 2))
    assert not torch.allclose(x_tr - X, plain)  # the velocity changed the step
    atl.commit()
    assert torch.allclose(atl.velocity, v2, atol=1e-5)
    # saved and restored with the bank; forgotten with it
    other = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0), chain_momentum=0.5)
    other.load_state_dict(atl.state_dict())
    assert torch.equal(other.velocity, atl.velocity)
    plain = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t))
    with pytest.raises(ConfigError, match="chain_momentum 0.0, this run 0.5"):
        other.load_state_dict(plain.state_dict())
    old_state = {k: v for k, v in plain.state_dict().items() if not k.startswith("chain_")}  # saved before the keys
    with pytest.raises(ConfigError, match="velocities"):
        other.load_state_dict(old_state)
    with pytest.raises(ConfigError, match="--chain-momentum"):  # the velocities are never dropped silently
        plain.load_state_dict({k: v for k, v in atl.state_dict().items() if not k.startswith("chain_")})
    with pytest.raises(ConfigError, match="chain_target 'kl', this run 'ce'"):
        plain.load_state_dict(ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t), chain_target="kl").state_dict())
    with pytest.raises(ConfigError, match="one shard of 2"):  # a velocity row per example of this process only
        ATL(ShardedBank(8, (1, 2, 2), t, rank=0, world_size=2), LangevinSampler(t), chain_momentum=0.5)
    atl._forget()
    assert not atl.velocity.any()
    assert atl.describe()["chain_momentum"] == 0.5


def test_atl_chain_options_reject_bad_input_and_other_methods():
    t = ThreatModel("linf", 0.3)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t), chain_momentum=bad)
    with pytest.raises(ConfigError, match="1 copy"):
        ATL(AdversarialBank(8, (1, 2, 2), t, copies=2), LangevinSampler(t), chain_momentum=0.5)
    with pytest.raises(ConfigError, match="accepted: ce, kl"):
        ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t), chain_target="mse")
    with pytest.raises(ConfigError, match="ATL's chain"):
        build_method(recipe("pgd", "cifar10").replace(chain_momentum=0.5), 8, (3, 32, 32))
    with pytest.raises(ConfigError, match="sharded"):
        build_method(recipe("atl", "cifar10").replace(chain_momentum=0.5, copies=1), 8, (3, 32, 32),
                     make_bank=lambda *a, **k: AdversarialBank(*a, **k))
    with pytest.raises(ConfigError, match="set the recipe's copies to 1"):  # ATL's CIFAR default has 2 copies
        build_method(recipe("atl", "cifar10").replace(chain_momentum=0.5), 8, (3, 32, 32))
    atl = build_method(recipe("atl", "cifar10").replace(chain_momentum=0.5, chain_target="kl", copies=1), 8,
                       (3, 32, 32))
    assert atl.chain_momentum == 0.5 and atl.chain_target == "kl" and atl.velocity.shape == (8, 3, 32, 32)


def test_atl_kl_chain_target_follows_the_kl_to_the_clean_output():
    t = ThreatModel("linf", 0.3)
    model = Linear2(W)
    start = t.uniform(X, generator=torch.Generator().manual_seed(3))
    steps = {}
    for target in ("ce", "kl"):
        bank = AdversarialBank(8, (1, 2, 2), t)
        bank.write(IDX, torch.zeros(8, dtype=torch.long), start, X)
        atl = ATL(bank, LangevinSampler(t, eta=0.1, noise_scale=0.0), chain_target=target)
        steps[target] = atl.perturb(model, X, Y, IDX, 0.0) - X
    # the KL(softmax(f(x)) || softmax(f(x + delta))) gradient at the stored sample, against the clean output
    clean = F.softmax(model(X), dim=1).detach()
    x0 = (X + start).requires_grad_(True)
    (g,) = torch.autograd.grad(F.kl_div(F.log_softmax(model(x0), dim=1), clean, reduction="sum"), x0)
    assert torch.allclose(steps["kl"], t.delta_to(X, X + start + 0.1 * g.sign()))
    # for this linear model the KL pushes class 1's logit back towards its clean value: where the start raised it, the
    # KL step goes against the cross-entropy's
    assert not torch.allclose(steps["kl"], steps["ce"])
    # from the clean point its gradient is 0: a noiseless KL chain needs a start away from x (uniform bank init)
    atl = ATL(AdversarialBank(8, (1, 2, 2), t), LangevinSampler(t, eta=0.1, noise_scale=0.0), chain_target="kl")
    assert torch.allclose(atl.perturb(model, X, Y, IDX, 0.0), X)
    # the clean output it follows costs one forward pass per example and visit, counted apart from gradient evals
    assert atl.extra_forward_passes == 1
    data = synthetic_dataset(16, shape=(1, 2, 2), classes=2)
    atl = ATL(AdversarialBank(16, (1, 2, 2), t), LangevinSampler(t, eta=0.1), chain_target="kl")
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), atl, progress=False)
    trainer.fit(IndexedBatches(data, 8), epochs=2)
    assert trainer.counts == {"input_grad_evals": 32, "param_grad_evals": 32, "forward_evals": 32, "examples": 32}
    assert [h["forward_evals"] for h in trainer.history] == [16, 32]
    # a checkpoint written before the count existed resumes with the passes its visits made
    state = trainer.state_dict()
    del state["counts"]["forward_evals"]
    atl = ATL(AdversarialBank(16, (1, 2, 2), t), LangevinSampler(t, eta=0.1), chain_target="kl")
    resumed = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), atl, progress=False)
    resumed.load_state_dict(state)
    assert resumed.counts["forward_evals"] == 32


def test_repeated_examples_in_one_batch_keep_their_last_occurrence_in_velocities_and_priors():
    # a loader sampling with replacement can repeat an example in a batch: `table[idx] = v` would store an unspecified
    # occurrence (threads race on large rows); the chain velocities and FGSM-PGI's priors store the last, as the bank
    shape = (3, 64, 64)
    t = ThreatModel("linf", 0.1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 2))
    idx = torch.tensor([1, 1, 2, 1, 1, 2, 1, 1])
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for trial in range(5):
            x = torch.rand((8,) + shape, generator=torch.Generator().manual_seed(trial))
            atl = ATL(AdversarialBank(4, shape, t), LangevinSampler(t, eta=0.05, noise_scale=0.0), chain_momentum=0.5)
            atl.perturb(model, x, y, idx, 0.0)
            velocity = atl._pending[-1].clone()
            atl.commit()
            assert torch.equal(atl.velocity[1], velocity[7]) and torch.equal(atl.velocity[2], velocity[5])
            pgi = FGSMPGI(t, 4, shape, seed=trial)
            pgi.perturb(model, x, y, idx, 0.0)
            corner = torch.rand((8,) + shape, generator=torch.Generator().manual_seed(trial)) * 2 - 1
            # a fresh example's random prior: the corner drawn for its last occurrence
            assert torch.equal(pgi.delta[1], 0.1 * corner[7].sign())
            assert torch.equal(pgi.delta[2], 0.1 * corner[5].sign())
            _, stored, momentum = pgi._pending
            pgi.commit()
            assert torch.equal(pgi.delta[1], stored[7]) and torch.equal(pgi.momentum[1], momentum[7])
            assert torch.equal(pgi.delta[2], stored[5]) and torch.equal(pgi.momentum[2], momentum[5])
    finally:
        torch.set_num_threads(threads)
