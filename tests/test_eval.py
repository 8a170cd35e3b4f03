import copy
import json

import pytest
import torch
import torch.nn as nn

import adv_transport.eval.robustness as robustness
from adv_transport import ThreatModel
from adv_transport.checkpoint import safe_load
from adv_transport.eval import SanityWarning, evaluate, to_markdown

from conftest import TinyCNN, synthetic_dataset

THREAT = ThreatModel("linf", 0.25)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(600, shape=(1, 10, 10), classes=10, seed=3)


@pytest.fixture(scope="module")
def model(data):
    """A small model trained (clean) for a few epochs: accurate, and neither fully robust nor fully broken."""
    torch.manual_seed(0)
    m = TinyCNN(classes=10, side=10)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(5):
        for i in range(0, len(data), 50):
            x, y, _ = data.get(torch.arange(i, i + 50))
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    return m.eval()


def test_our_pgd_agrees_with_torchattacks(model, data):
    """Same model, points, eps, step and steps. Without random start the two must agree; with one, the same random
    draws must give the same points (a per-seed comparison: over random starts the accuracy itself varies by ~2
    points on 600 points, so comparing two independently drawn runs would test the noise, not the attack)."""
    import torchattacks

    from adv_transport.attacks import pgd

    rep = evaluate(
        model,
        data,
        THREAT,
        ["clean", "pgd"],
        n_examples=600,
        pgd_steps=10,
        pgd_step_size=0.06,
        pgd_random_start=False,
        sanity=False,
    )
    x, y, _ = data.get(torch.arange(600))
    x_adv = torchattacks.PGD(model, eps=0.25, alpha=0.06, steps=10, random_start=False)(x, y)
    theirs = 100.0 * (model(x_adv).argmax(1) == y).float().mean().item()
    assert 5 < rep["pgd_acc"] < rep["clean_acc"]  # a non-trivial comparison
    assert abs(rep["pgd_acc"] - theirs) <= 0.5
    for seed in range(3):
        torch.manual_seed(seed)
        ours = pgd(model, x, y, THREAT, 10, 0.06, random_start=True)
        torch.manual_seed(seed)
        theirs = torchattacks.PGD(model, eps=0.25, alpha=0.06, steps=10, random_start=True)(x, y)
        acc = [100.0 * (model(a).argmax(1) == y).float().mean().item() for a in (ours, theirs)]
        assert abs(acc[0] - acc[1]) <= 0.5


def test_autoattack_is_not_weaker_than_pgd(model, data):
    settings = dict(n_examples=120, batch_size=60, pgd_steps=10, pgd_step_size=0.06, sanity=False)
    rep = evaluate(model, data, THREAT, ["clean", "pgd", "autoattack"], **settings)
    assert rep["autoattack_acc"] <= rep["pgd_acc"]
    detail = rep["autoattack_detail"]["autoattack"]
    assert list(detail) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert detail["clean"] == rep["clean_acc"] and detail["square"] == rep["autoattack_acc"]
    assert all(a >= b for a, b in zip(list(detail.values()), list(detail.values())[1:]))


def test_interrupted_evaluation_resumes_without_redoing_batches(model, data, tmp_path, monkeypatch):
    resume_settings = dict(n_examples=200, batch_size=50, pgd_steps=5, pgd_step_size=0.06, sanity=False)
    full = evaluate(model, data, THREAT, ["clean", "fgsm", "pgd"], **resume_settings)
    calls = []
    real_pgd = robustness.pgd

    def dying_pgd(*a, **k):
        calls.append(a[1].shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_pgd(*a, **k)

    monkeypatch.setattr(robustness, "pgd", dying_pgd)
    state = tmp_path / "eval.state.pt"
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, THREAT, ["clean", "fgsm", "pgd"], state_path=state, **resume_settings)
    assert safe_load(state, "an evaluation state")["done"] == 2
    calls.clear()
    monkeypatch.setattr(robustness, "pgd", lambda *a, **k: (calls.append(1), real_pgd(*a, **k))[1])
    resumed = evaluate(model, data, THREAT, ["clean", "fgsm", "pgd"], state_path=state, **resume_settings)
    assert len(calls) == 2  # only the two unfinished batches were attacked again
    for key in ("clean_acc", "fgsm_acc", "pgd_acc", "per_class"):
        assert resumed[key] == full[key]


def test_state_from_other_settings_is_refused(model, data, tmp_path):
    state = tmp_path / "s.pt"
    evaluate(model, data, THREAT, ["clean"], n_examples=50, state_path=state, sanity=False)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(model, data, ThreatModel("linf", 0.3), ["clean"], n_examples=50, state_path=state, sanity=False)


def test_report_has_per_class_worst_class_and_renders(model, data):
    rep = evaluate(model, data, THREAT, ["clean", "fgsm", "pgd"], n_examples=90, pgd_steps=10, pgd_step_size=0.06)
    assert set(rep["per_class"]["pgd"]) == set(range(10))
    assert rep["pgd_worst_class_acc"] == min(rep["per_class"]["pgd"].values())
    json.dumps(rep)
    md = to_markdown(rep, "tiny")
    assert "| PGD-10 (step 0.06, 1 restart) |" in md and "| FGSM |" in md and "eps = 0.25" in md


def test_sane_model_passes_the_sanity_checks(model, data):
    rep = evaluate(model, data, THREAT, ["clean", "fgsm", "pgd"], n_examples=200, pgd_steps=10, pgd_step_size=0.06)
    assert rep["sanity_warnings"] == []
    sweep = list(rep["eps_sweep_pgd_acc"].values())
    assert sweep[-1] <= 100 / 10 + 10


class _Wrapped(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m


class Probabilities(_Wrapped):
    def forward(self, x):
        return self.m(x).softmax(1)


class Saturated(_Wrapped):
    """Gradient masking by logit scaling: the softmax saturates and the input gradient underflows to zero."""

    def forward(self, x):
        return self.m(x) * 1e4


class Noisy(_Wrapped):
    def forward(self, x):
        return self.m(x + 0.05 * torch.randn_like(x))


def test_sanity_checks_flag_probabilities_randomness_train_mode_and_masking(model, data):
    with pytest.warns(SanityWarning) as record:
        evaluate(Probabilities(model), data, THREAT, ["clean", "pgd"], n_examples=60, pgd_steps=5, pgd_step_size=0.06)
    assert any("probabilities" in str(w.message) for w in record)
    with pytest.warns(SanityWarning) as record:
        evaluate(Noisy(model).train(), data, THREAT, ["clean"], n_examples=60)
    text = " ".join(str(w.message) for w in record)
    assert "training mode" in text and "not deterministic" in text
    with pytest.warns(SanityWarning) as record:
        rep = evaluate(
            Saturated(model).eval(), data, THREAT, ["clean", "pgd"], n_examples=100, pgd_steps=5, pgd_step_size=0.06
        )
    assert any("should approach 0 as eps grows" in str(w.message) for w in record)
    assert rep["pgd_acc"] == rep["clean_acc"]  # PGD cannot move: exactly what the check is there to catch


def test_ordering_and_square_checks_on_reports():
    from adv_transport.eval.sanity import _ordering, _square

    assert _ordering({"clean_acc": 90, "fgsm_acc": 50, "pgd_acc": 40, "autoattack_acc": 35}) == []
    bad = _ordering({"clean_acc": 90, "fgsm_acc": 50, "pgd_acc": 60})
    assert len(bad) == 1 and bad[0].startswith("pgd accuracy (60.00 %) is above fgsm")
    detail = {"autoattack": {"clean": 90.0, "apgd-ce": 70.0, "apgd-t": 68.0, "fab-t": 68.0, "square": 60.0}}
    assert "Square attack lowered accuracy by 8.00 points" in _square({"autoattack_detail": detail})[0]
    detail["autoattack"]["square"] = 68.0
    assert _square({"autoattack_detail": detail}) == []


def test_autoattack_rand_version_runs_for_randomised_models(model, data):
    rep = evaluate(model, data, THREAT, ["clean", "autoattack-rand"], n_examples=20, batch_size=20, sanity=False)
    detail = rep["autoattack_detail"]["autoattack-rand"]
    assert list(detail) == ["clean", "apgd-ce", "apgd-dlr"]
    assert rep["autoattack-rand_acc"] <= rep["clean_acc"]


def test_state_of_other_weights_is_discarded_with_a_warning(model, data, tmp_path, monkeypatch):
    # an evaluation interrupted, then more training, then eval again: the old per-point results must not be mixed in
    model = copy.deepcopy(model)  # the fixture is shared by the module
    settings = dict(n_examples=100, batch_size=50, pgd_steps=3, pgd_step_size=0.06, sanity=False)
    calls = []
    real_pgd = robustness.pgd

    def dying_pgd(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_pgd(*a, **k)

    monkeypatch.setattr(robustness, "pgd", dying_pgd)
    state = tmp_path / "eval.state.pt"
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, THREAT, ["clean", "pgd"], state_path=state, **settings)
    monkeypatch.setattr(robustness, "pgd", real_pgd)
    with torch.no_grad():  # "more training"
        for p in model.parameters():
            p.mul_(-1.0)
    fresh = evaluate(model, data, THREAT, ["clean", "pgd"], **settings)
    with pytest.warns(UserWarning, match="other model weights"):
        resumed = evaluate(model, data, THREAT, ["clean", "pgd"], state_path=state, **settings)
    for key in ("clean_acc", "pgd_acc", "per_class"):
        assert resumed[key] == fresh[key]
    assert torch.load(state, weights_only=True)["fingerprint"] == robustness.model_fingerprint(model)
