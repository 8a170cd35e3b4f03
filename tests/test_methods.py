import pytest
import torch

from adv_transport import ATL, FGSMRS, NFGSM, PGD, AdversarialBank, Clean, LangevinSampler, ThreatModel

from conftest import Linear2

W = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0]])
X = torch.full((8, 1, 2, 2), 0.5)
Y = torch.zeros(8, dtype=torch.long)
SIGN = torch.tensor([1.0, -1.0, 1.0, 0.0]).view(1, 1, 2, 2)


def test_clean_returns_inputs_unchanged():
    assert torch.equal(Clean().perturb(Linear2(W), X, Y, torch.arange(8), 0.0), X)


def test_pgd_reaches_the_ball_corner_of_a_linear_model():
    t = ThreatModel("linf", 0.2)
    x_adv = PGD(t, steps=10, step_size=0.05).perturb(Linear2(W), X, Y, torch.arange(8), 0.0)
    # from any random start, 10 steps of 0.05 reach the corner eps * sign(w1 - w0); the zero-gradient coordinate
    # keeps its random start
    d = x_adv - X
    assert torch.allclose(d.flatten(1)[:, :3], (0.2 * SIGN).flatten(1)[:, :3].expand(8, 3))
    assert (d.flatten(1)[:, 3].abs() <= 0.2 + 1e-6).all()


def test_fgsm_rs_is_one_projected_step_from_a_random_start():
    t = ThreatModel("linf", 0.2)
    torch.manual_seed(3)
    start = t.uniform(X)
    torch.manual_seed(3)
    x_adv = FGSMRS(t).perturb(Linear2(W), X, Y, torch.arange(8), 0.0)
    expected = X + (start + 0.25 * SIGN).clamp(-0.2, 0.2)
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_n_fgsm_is_not_projected_to_the_eps_ball():
    t = ThreatModel("linf", 0.1)
    torch.manual_seed(5)
    noise = (torch.rand_like(X) * 2 - 1) * 0.2
    torch.manual_seed(5)
    x_adv = NFGSM(t).perturb(Linear2(W), X, Y, torch.arange(8), 0.0)
    expected = ((X + noise).clamp(0, 1) + 0.1 * SIGN).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert (x_adv - X).abs().max() > 0.1  # goes beyond eps, as N-FGSM does
    assert (x_adv - X).abs().max() <= 0.3 + 1e-6  # at most k*eps + alpha


def test_atl_reads_advances_and_writes_back_on_commit_only():
    t = ThreatModel("linf", 0.3)
    bank = AdversarialBank(8, (1, 2, 2), t)
    atl = ATL(bank, LangevinSampler(t, eta=0.1, noise_scale=0.0))
    idx = torch.arange(8)
    x1 = atl.perturb(Linear2(W), X, Y, idx, 0.0)
    assert torch.allclose(x1 - X, 0.1 * SIGN.expand(8, 1, 2, 2))
    atl.discard()
    assert (bank.read(idx, X)[0] == 0).all()  # nothing stored without commit
    atl.perturb(Linear2(W), X, Y, idx, 0.0)
    atl.commit()
    x2 = atl.perturb(Linear2(W), X, Y, idx, 1.0)  # warm start: a second visit continues the chain
    assert torch.allclose(x2 - X, 0.2 * SIGN.expand(8, 1, 2, 2), atol=1e-6)
    assert atl.input_grad_passes == 1


def test_atl_rejects_bank_and_sampler_with_different_threats():
    from adv_transport import ConfigError

    with pytest.raises(ConfigError, match="differ"):
        ATL(AdversarialBank(2, (1, 2, 2), ThreatModel("linf", 0.3)), LangevinSampler(ThreatModel("linf", 0.1)))


def test_atl_max_loss_copy_moves_the_chain_of_highest_loss_now():
    """copy_select='max-loss': per example, the stored sample (of K) with the highest cross-entropy under the model
    is the one moved, trained on and written back; the K forward passes are counted."""
    import torch.nn.functional as F

    from adv_transport import ConfigError

    from conftest import TinyCNN, synthetic_dataset

    torch.manual_seed(0)
    data = synthetic_dataset(16)
    threat = ThreatModel("linf", 0.1)
    x, y, idx = data.images[:12], data.labels[:12], torch.arange(12)
    bank = AdversarialBank(len(data), data.shape, threat, copies=2, init="zero")
    g = torch.Generator().manual_seed(1)
    for k in range(2):  # two distinct stored samples per example
        bank.write(idx, torch.full((12,), k), threat.uniform(x, generator=g), x)
    model = TinyCNN()
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(x + bank.read(idx, x, copy=torch.full((12,), k))[0]), y,
                                              reduction="none") for k in range(2)])
    chosen = losses.argmax(0)
    assert 0 < int(chosen.sum()) < 12  # each copy is the worse one somewhere: a constant choice would fail below
    sampler = LangevinSampler(threat, eta=0.02, noise_scale=0.0, steps=1)
    atl = ATL(bank, sampler, copy_select="max-loss")
    assert atl.extra_forward_passes == 2 and atl.describe()["copy_select"] == "max-loss"
    before = bank.storage.clone()
    atl.perturb(model, x, y, idx, t=0.0)
    atl.commit()
    changed = (bank.storage[:12] != before[:12]).flatten(2).any(2)  # (example, copy): which copy was written
    assert torch.equal(changed, torch.nn.functional.one_hot(chosen, 2).bool())
    for bad, words in (({"copies": 1}, "copies >= 2"),):
        with pytest.raises(ConfigError, match=words):
            ATL(AdversarialBank(len(data), data.shape, threat, **bad), sampler, copy_select="max-loss")
    with pytest.raises(ConfigError, match="copy_select 'best' is not accepted; accepted: random, max-loss"):
        ATL(bank, sampler, copy_select="best")
