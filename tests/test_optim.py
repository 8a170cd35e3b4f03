"""The normalized optimizers: each update rule recomputed by hand, foreach == single-tensor, torch.optim behaviour."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from adv_transport.optim import AdaDir, AdaLR, NormalizedSGD

OPTIMIZERS = [NormalizedSGD, AdaLR, AdaDir]


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(3, 4, generator=g)), nn.Parameter(torch.randn(5, generator=g)),
            nn.Parameter(torch.randn(2, 2, 2, generator=g))]


def grads_for(step, params, seed=1):
    g = torch.Generator().manual_seed(seed + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def run(opt_cls, steps=4, params=None, **kw):
    params = params or make_params()
    opt = opt_cls(params, **kw)
    for k in range(steps):
        for p, gr in zip(params, grads_for(k, params)):
            p.grad = gr.clone()
        opt.step()
    return params, opt


def l2(ts):
    return math.sqrt(sum(float(t.pow(2).sum()) for t in ts))


# ------------------------------------------------------------------------------------------ reference recomputation
def reference(kind, steps, lr, normalize, momentum=0.0, nesterov=False, betas=(0.9, 0.999), eps=1e-8,
              adam_eps=1e-8, weight_decay=0.0, decoupled=False, maximize=False):
    """The update rules of adv_transport.optim's docstring (Jelassi et al. 2022), in plain tensor arithmetic."""
    w = [p.detach().clone().double() for p in make_params()]
    buf = [None] * len(w)
    m = [torch.zeros_like(t) for t in w]
    v = [torch.zeros_like(t) for t in w]
    b1, b2 = betas
    for k in range(steps):
        g = [x.double() for x in grads_for(k, w)]
        g = [-x if maximize else x for x in g]
        if weight_decay and not decoupled:
            g = [x + weight_decay * wi for x, wi in zip(g, w)]
        if momentum:
            buf = [x.clone() if b is None else momentum * b + x for b, x in zip(buf, g)]
            M = [x + momentum * b for x, b in zip(g, buf)] if nesterov else buf
        else:
            M = g
        m = [b1 * mi + (1 - b1) * x for mi, x in zip(m, g)]
        v = [b2 * vi + (1 - b2) * x * x for vi, x in zip(v, g)]
        A = [(mi / (1 - b1 ** (k + 1))) / ((vi / (1 - b2 ** (k + 1))).sqrt() + adam_eps) for mi, vi in zip(m, v)]
        if decoupled:
            w = [wi * (1 - lr * weight_decay) for wi in w]
        groups = [list(range(len(w)))] if normalize == "global" else [[i] for i in range(len(w))]
        for idx in groups:
            nM, nA = l2([M[i] for i in idx]), l2([A[i] for i in idx])
            for i in idx:
                if kind == "nsgd":
                    step = M[i] / (nM + eps)
                elif kind == "adalr":
                    step = nA * M[i] / (nM + eps)
                else:
                    step = nM * A[i] / (nA + eps)
                w[i] = w[i] - lr * step
    return w


KIND = {NormalizedSGD: "nsgd", AdaLR: "adalr", AdaDir: "adadir"}


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("normalize", ["global", "layer"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("extra", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                   {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": True},
                                   {"maximize": True}])
def test_update_rule_matches_direct_recomputation(cls, normalize, foreach, extra):
    params, _ = run(cls, steps=4, lr=0.05, normalize=normalize, foreach=foreach, **extra)
    expected = reference(KIND[cls], 4, 0.05, normalize, momentum=extra.get("momentum", 0.0),
                         nesterov=extra.get("nesterov", False), weight_decay=extra.get("weight_decay", 0.0),
                         decoupled=extra.get("decoupled_weight_decay", False), maximize=extra.get("maximize", False))
    for p, e in zip(params, expected):
        assert torch.allclose(p.double(), e, atol=1e-5), (p, e)


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("kw", [{"normalize": "global"}, {"normalize": "layer", "momentum": 0.9, "nesterov": True},
                                {"normalize": "global", "weight_decay": 0.1, "momentum": 0.5, "dampening": 0.1}])
def test_foreach_and_single_tensor_are_identical(cls, kw):
    a, opt_a = run(cls, steps=5, lr=0.03, foreach=False, **kw)
    b, opt_b = run(cls, steps=5, lr=0.03, foreach=True, **kw)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for p, q in zip(a, b):
        for key, val in opt_a.state[p].items():
            assert torch.equal(val, opt_b.state[q][key])


def test_normalized_sgd_step_has_length_lr():
    for normalize in ("global", "layer"):
        params = make_params()
        before = [p.detach().clone() for p in params]
        run(NormalizedSGD, steps=1, params=params, lr=0.1, normalize=normalize)
        deltas = [p.detach() - b for p, b in zip(params, before)]
        if normalize == "global":
            assert l2(deltas) == pytest.approx(0.1, rel=1e-5)
        else:
            assert all(l2([d]) == pytest.approx(0.1, rel=1e-5) for d in deltas)


def test_global_and_layer_normalisation_differ_exactly_as_specified():
    g_params, _ = run(NormalizedSGD, steps=1, lr=1.0, normalize="global")
    l_params, _ = run(NormalizedSGD, steps=1, lr=1.0, normalize="layer")
    grads = grads_for(0, g_params)
    total = l2(grads)
    for p0, pg, pl, gr in zip(make_params(), g_params, l_params, grads):
        assert torch.allclose(p0 - pg, gr / total, atol=1e-6)  # one norm over everything
        assert torch.allclose(p0 - pl, gr / gr.norm(), atol=1e-6)  # one norm per tensor


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_maximize_ascends(cls):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10))
    target = torch.randn(10)
    opt = cls([w], lr=0.05, maximize=True)
    obj = lambda: -(w - target).pow(2).sum()  # noqa: E731
    start = float(obj())
    for _ in range(20):
        opt.zero_grad()
        obj().backward()
        opt.step()
    assert float(obj()) > start


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("foreach", [False, True])
def test_zero_gradient_gives_zero_step_not_nan(cls, foreach):
    w = nn.Parameter(torch.ones(4))
    opt = cls([w], lr=0.1, momentum=0.9, foreach=foreach)
    for _ in range(3):
        w.grad = torch.zeros(4)
        opt.step()
    assert torch.equal(w.detach(), torch.ones(4))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(cls):
    a, opt_a = run(cls, steps=3, lr=0.03, momentum=0.9)
    b = [nn.Parameter(p.detach().clone()) for p in a]
    opt_b = cls(b, lr=0.03, momentum=0.9)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for k in range(3, 6):
        for params, opt in ((a, opt_a), (b, opt_b)):
            for p, gr in zip(params, grads_for(k, params)):
                p.grad = gr.clone()
            opt.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_closure_is_called_and_loss_returned(cls):
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = cls([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = w.pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss) == 5.0 and float(w.pow(2).sum()) < 5.0


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_sparse_gradients_are_refused(cls):
    emb = nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        cls(emb.parameters(), lr=0.1).step()


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_weight_decay_param_groups_behave_like_torch_sgd(cls):
    """A group with weight_decay 0 (timm's bias/norm group) gets no decay; the decayed group does."""
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = cls([{"params": [w], "weight_decay": 0.5}, {"params": [b], "weight_decay": 0.0, "lr_scale": 0.1}],
              lr=0.1, normalize="layer")
    w.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))  # zero gradient, no decay: unchanged (lr_scale is not applied)
    assert (w.detach() < 1).all()  # decay alone moved it towards 0
    assert opt.param_groups[1]["lr_scale"] == 0.1


@pytest.mark.parametrize("bad", [{"lr": -1}, {"eps": -1}, {"weight_decay": -0.1}, {"normalize": "row"},
                                 {"momentum": 1.5}, {"nesterov": True}])
def test_bad_arguments_are_explained(bad):
    with pytest.raises(ValueError, match="Invalid|Nesterov"):
        NormalizedSGD(make_params(), **{"lr": 0.1, **bad})
