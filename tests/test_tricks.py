"""Tricks available to every method: label smoothing, the TRADES loss, weight averaging (EMA), best-on-validation
model selection and early stopping on a validation collapse."""

import pytest
import torch
import torch.nn.functional as F

from adv_transport import FGSMRS, Clean, ConfigError, IndexedBatches, ThreatModel, Trainer
from adv_transport.recipes import Recipe, recipe
from adv_transport.training import build_training

from conftest import TinyCNN, synthetic_dataset

DATA = synthetic_dataset(32)


def one_batch_loss(**kwargs):
    torch.manual_seed(0)
    model = TinyCNN()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), kwargs.pop("method", Clean()),
                      progress=False, **kwargs)
    trainer.fit(IndexedBatches(DATA, 32, shuffle=False), epochs=1)
    return model, trainer.history[-1]["train_loss"], trainer


def test_label_smoothing_is_the_training_loss():
    model, loss, _ = one_batch_loss(label_smoothing=0.4)
    x, y, _ = DATA.get(torch.arange(32))
    assert loss == pytest.approx(F.cross_entropy(model(x), y, label_smoothing=0.4).item(), rel=1e-6)
    assert loss != pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-3)


def test_trades_loss_is_clean_ce_plus_beta_kl_and_counts_two_passes():
    threat = ThreatModel("linf", 0.1)
    model, loss, trainer = one_batch_loss(loss="trades", trades_beta=6.0, method=FGSMRS(threat))
    x, y, idx = DATA.get(torch.arange(32))
    torch.manual_seed(0)  # replay one_batch_loss's draws: the model's initialisation, then FGSM-RS's random start
    TinyCNN()
    x_adv = FGSMRS(threat).perturb(model, x, y, idx, 0.0)
    clean = model(x)
    expected = F.cross_entropy(clean, y) + 6.0 * F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(clean, 1),
                                                         reduction="batchmean")
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert trainer.counts["param_grad_evals"] == 64


def test_weight_average_is_the_ema_of_the_parameters_after_each_step():
    torch.manual_seed(0)
    model = TinyCNN()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), Clean(), progress=False, ema_decay=0.9)
    seen = []
    original = trainer.optimizer.step

    def step(*a, **k):
        out = original(*a, **k)
        seen.append([p.detach().clone() for p in model.parameters()])
        return out

    trainer.optimizer.step = step
    trainer.fit(IndexedBatches(DATA, 8, shuffle=False), epochs=1)
    ema = [p.clone() for p in seen[0]]  # the first update copies the weights
    for params in seen[1:]:
        ema = [0.9 * e + 0.1 * p for e, p in zip(ema, params)]
    for e, p in zip(ema, trainer.evaluated_model.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    assert trainer.final_model() is trainer.evaluated_model
    assert not torch.allclose(seen[-1][0], ema[0])


class ScriptedValidation:
    """val_fn returning scripted PGD accuracies, remembering the weights it saw at each call."""

    def __init__(self, accs):
        self.accs, self.weights = list(accs), []

    def __call__(self, model):
        self.weights.append([p.detach().clone() for p in model.parameters()])
        return {"val_pgd_acc": self.accs[len(self.weights) - 1], "val_clean_acc": 50.0}


def test_best_on_validation_returns_the_best_epochs_weights():
    val = ScriptedValidation([10.0, 40.0, 30.0])
    model = TinyCNN()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), Clean(), progress=False, val_fn=val,
                      select="best")
    trainer.fit(IndexedBatches(DATA, 8), epochs=3)
    assert trainer.best["epoch"] == 2 and [h["best_epoch"] for h in trainer.history] == [1, 2, 2]
    chosen = trainer.final_model()
    for p, q in zip(chosen.parameters(), val.weights[1]):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), val.weights[1]))  # model itself trained on


def test_early_stop_on_a_validation_collapse_keeps_the_best_epoch():
    val = ScriptedValidation([20.0, 45.0, 24.0, 50.0, 50.0])
    model = TinyCNN()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), Clean(), progress=False, val_fn=val,
                      early_stop_drop=20.0)
    trainer.fit(IndexedBatches(DATA, 8), epochs=5)
    assert trainer.stopped_early_at == 3 and len(trainer.history) == 3 and trainer.history[-1]["stopped_early"]
    for p, q in zip(trainer.final_model().parameters(), val.weights[1]):
        assert torch.equal(p, q)
    trainer.fit(IndexedBatches(DATA, 8), epochs=5)  # a stopped run stays stopped
    assert len(trainer.history) == 3


def test_tricks_need_a_validation_split_and_valid_values():
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, match in (({"select": "best"}, "val_fn"), ({"early_stop_drop": 20}, "val_fn"),
                          ({"loss": "mse"}, "loss"), ({"label_smoothing": 1.0}, "label_smoothing"),
                          ({"ema_decay": 1.5}, "ema_decay"), ({"ema_decay": -0.1}, "ema_decay"),
                          ({"select": "first"}, "select")):
        with pytest.raises(ConfigError, match=match):
            Trainer(model, opt, Clean(), **kwargs)
    # no weight averaging is spelled 0 (the recipes' and the CLI's spelling) or None (the Python API's earlier one)
    assert all(Trainer(model, opt, Clean(), ema_decay=d).ema is None for d in (0, 0.0, None))
    # a recipe stored with that earlier spelling reads back as 0 (so a resume's settings check sees no difference)
    old = recipe("fgsm-pgi", "cifar10").to_dict() | {"ema_decay": None}
    assert Recipe.from_dict(old).ema_decay == 0.0 and Recipe.from_dict(old) == recipe("fgsm-pgi", "cifar10")
    r = recipe("fgsm-rs", "mnist").replace(model="small-cnn", early_stop_drop=20.0)
    with pytest.raises(ConfigError, match="validation split"):
        build_training(r, DATA, None)


def test_recipe_rows_say_which_tricks_they_use():
    r = recipe("fgsm-rs", "cifar10").replace(ema_decay=0.999, label_smoothing=0.4, select="best", loss="trades",
                                             early_stop_drop=20.0)
    assert r.tricks() == ["eps warm-up 5 ep", "EMA 0.999", "label smoothing 0.4", "TRADES beta 6",
                          "best-on-validation", "early stop (drop > 20)"]
    assert recipe("clean", "mnist").tricks() == []
    # ATL's chain options are listed where they differ from the plain cross-entropy chain (MNIST's default: KL)
    assert recipe("atl", "mnist").tricks() == ["eps warm-up 3 ep", "consistency 20", "KL chain target"]
    assert "chain momentum 0.3" in recipe("atl", "cifar10").replace(chain_momentum=0.3).tricks()
    assert [t for t in recipe("atl", "cifar10").tricks() if "chain" in t] == ["K 2 chains"]  # CIFAR's 2 copies


def test_recipes_forwards_the_moved_builders_with_a_deprecation_warning():
    import adv_transport.eval
    import adv_transport.recipes as recipes
    import adv_transport.training

    with pytest.warns(DeprecationWarning, match="moved to adv_transport.training.build_training"):
        assert recipes.build_training is adv_transport.training.build_training
    with pytest.warns(DeprecationWarning, match="moved to adv_transport.eval.epoch_check"):
        assert recipes.epoch_check is adv_transport.eval.epoch_check
    with pytest.raises(AttributeError):
        recipes.no_such_name  # noqa: B018


def test_atl_cifar_default_is_two_chains_with_weight_averaging_and_imagenet_keeps_one_chain():
    """The twelfth CIFAR sweep round's winner is ATL's CIFAR-10 default (two bank copies, EMA 0.999, named among the
    recipe's tricks); ImageNet, which starts from that recipe, keeps one copy (each is 193 GB in int8 there)."""
    r = recipe("atl", "cifar10")
    assert (r.copies, r.ema_decay, r.consistency, r.eta) == (2, 0.999, 10.0, 1.25 * 8 / 255)
    assert "EMA 0.999" in r.tricks() and "K 2 chains" in r.tricks()
    assert recipe("atl", "cifar100").copies == 2 and recipe("atl", "imagenet").copies == 1
    assert recipe("free-atl", "cifar10").copies == 1 and recipe("fgsm-pgi", "imagenet").ema_decay == 0.0
    # a user turns the averaging off with ema_decay 0 (`--ema-decay 0`): no average is kept, none is named
    from adv_transport.cli import build_parser, make_recipe

    off = make_recipe(build_parser().parse_args(["train", "--dataset", "cifar10", "--ema-decay", "0", "--copies", "1"]))
    assert (off.ema_decay, off.copies) == (0.0, 1) and not any("EMA" in t for t in off.tricks())
    small = dict(model="small-cnn", select="last", epochs=1, batch_size=16)
    assert build_training(off.replace(**small), DATA, None)[0].ema is None
    assert build_training(recipe("atl", "cifar10").replace(**small), DATA, None)[0].ema is not None
