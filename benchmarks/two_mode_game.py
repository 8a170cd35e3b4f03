"""The synthetic two-mode GAN of Jelassi et al. 2022: does SGDA collapse where nSGDA does not?

Data X = u1 or u2 (probability 1/2 each), unit vectors with <u1, u2> = ``--overlap`` > 0. Generator
G(z) = sum_i v_i z_i over sparse binary latents z (Pr[z_i = 1] = 1/m_G). Discriminator
D(X) = sigmoid(a * sum_j sigma(<w_j, X>) + lambda * b), sigma(t) = t^3 for |t| <= Lambda and linear (C^1) beyond.
Both players train from the same initialisation, simultaneously, on the GAN loss (D ascends
E log D(X) + E log(1 - D(G(z))) with ``maximize=True``; G descends the non-saturating -E log D(G(z))), with
SGDA (torch.optim.SGD) or nSGDA (adv_transport.optim.NormalizedSGD, one global norm per player).

Reported: the share of generated samples (with at least one active latent) whose direction is within cosine
``--cos`` of u1, of u2, and of (u1 + u2)/||u1 + u2||. Theory: SGDA puts its mass on the u1 + u2 direction;
nSGDA keeps non-vanishing mass near both u1 and u2. Step sizes: a small sweep per method, keeping for each the
step size with the best min(share u1, share u2) (the most generous choice for SGDA), then several seeds.

    python benchmarks/two_mode_game.py            # sweep + seeds, writes benchmarks/results/two_mode_game.*
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adv_transport.optim import NormalizedSGD

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Game:
    dim: int = 30
    m_g: int = 10
    m_d: int = 10
    overlap: float = 0.3
    cubic_limit: float = 1.0
    a: float = 1.0
    lam: float = 1.0
    init_scale: float = 0.1
    batch: int = 64
    steps: int = 3000
    cos: float = 0.8  # minimum in-plane fraction of a sample's norm for it to count as a direction in the plane


def directions(dim: int, overlap: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors with <u1, u2> = overlap."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g))
    e1, e2 = q[:, 0], q[:, 1]
    u1 = e1
    u2 = overlap * e1 + math.sqrt(1 - overlap**2) * e2
    return u1, u2


def sigma(t: torch.Tensor, limit: float) -> torch.Tensor:
    """t^3 inside [-limit, limit], continued linearly (value and slope match) outside."""
    inside = t.pow(3)
    outside = torch.sign(t) * (limit**3 + 3 * limit**2 * (t.abs() - limit))
    return torch.where(t.abs() <= limit, inside, outside)


def play(game: Game, method: str, lr_g: float, lr_d: float, seed: int) -> dict:
    u1, u2 = directions(game.dim, game.overlap, seed=1000)  # the data is the same for every run
    g = torch.Generator().manual_seed(seed)
    V = (torch.randn(game.dim, game.m_g, generator=g) * game.init_scale).requires_grad_()
    W = (torch.randn(game.m_d, game.dim, generator=g) * game.init_scale).requires_grad_()
    b = torch.zeros((), requires_grad=True)
    if method == "sgda":
        opt_g = torch.optim.SGD([V], lr=lr_g)
        opt_d = torch.optim.SGD([W, b], lr=lr_d, maximize=True)
    elif method == "nsgda":
        opt_g = NormalizedSGD([V], lr=lr_g, normalize="global")
        opt_d = NormalizedSGD([W, b], lr=lr_d, normalize="global", maximize=True)
    else:
        raise ValueError(f"method {method!r}: accepted sgda, nsgda")

    def disc_logit(x):
        return game.a * sigma(x @ W.t(), game.cubic_limit).sum(1) + game.lam * b

    for _ in range(game.steps):
        pick = torch.rand(game.batch, generator=g) < 0.5
        x_real = torch.where(pick[:, None], u1, u2)
        z = (torch.rand(game.batch, game.m_g, generator=g) < 1.0 / game.m_g).float()
        x_fake = z @ V.t()
        d_obj = torch.nn.functional.logsigmoid(disc_logit(x_real)).mean() + \
            torch.nn.functional.logsigmoid(-disc_logit(x_fake)).mean()
        g_loss = -torch.nn.functional.logsigmoid(disc_logit(x_fake)).mean()  # non-saturating
        grads_d = torch.autograd.grad(d_obj, [W, b], retain_graph=True)
        grads_g = torch.autograd.grad(g_loss, [V])
        for p, gr in zip([W, b], grads_d):
            p.grad = gr
        V.grad = grads_g[0]
        opt_d.step()  # simultaneous: both gradients were taken at the same point
        opt_g.step()
        if not torch.isfinite(V).all() or not torch.isfinite(W).all():
            return {"diverged": True, "share_u1": 0.0, "share_u2": 0.0, "share_mid": 0.0, "share_other": 1.0}
    return shares(V.detach(), u1, u2, game, seed)


def shares(V: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, game: Game, seed: int, n: int = 20000) -> dict:
    """Classify generated samples by their direction within the data plane span(u1, u2): nearest (by angle) of u1,
    u2 and (u1 + u2)/||u1 + u2||. Samples whose norm lies mostly outside the plane (in-plane fraction below
    ``game.cos``) count as 'elsewhere'."""
    g = torch.Generator().manual_seed(seed + 7)
    z = (torch.rand(n, game.m_g, generator=g) < 1.0 / game.m_g).float()
    z = z[z.sum(1) > 0]
    x = z @ V.t()
    basis, _ = torch.linalg.qr(torch.stack([u1, u2], 1))  # orthonormal basis of the data plane
    coords = x @ basis  # (n, 2)
    in_plane = coords.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)
    refs = torch.stack([u1, u2, (u1 + u2) / (u1 + u2).norm()]) @ basis  # (3, 2), unit vectors in the plane
    cos = (coords / coords.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ refs.t()
    best = cos.argmax(1)
    close = in_plane >= game.cos
    out = {f"share_{k}": float(((best == i) & close).float().mean()) for i, k in enumerate(["u1", "u2", "mid"])}
    out["share_other"] = float((~close).float().mean())
    neuron = V.t() @ basis
    out["neuron_angle_deg"] = [round(float(a), 1) for a in torch.rad2deg(torch.atan2(
        neuron @ (refs[1] - (refs[1] @ refs[0]) * refs[0]) / (refs[1] - (refs[1] @ refs[0]) * refs[0]).norm(),
        neuron @ refs[0]))]
    out["neuron_in_plane"] = [round(float(f), 3) for f in neuron.norm(dim=1) / V.norm(dim=0).clamp_min(1e-12)]
    out["diverged"] = False
    return out


def sweep_and_seeds(game: Game, lrs: dict[str, list[float]], seeds: list[int], sweep_seed: int = 0) -> dict:
    result = {"game": asdict(game), "sweep": {}, "chosen": {}, "seeds": {}}
    for method, grid in lrs.items():
        rows = []
        for lr in grid:
            r = play(game, method, lr, lr, sweep_seed)
            rows.append({"lr": lr, **{k: v for k, v in r.items() if not k.startswith("neuron")}})
        result["sweep"][method] = rows
        best = max(rows, key=lambda r: (min(r["share_u1"], r["share_u2"]), -r["share_mid"]))
        result["chosen"][method] = best["lr"]
        result["seeds"][method] = [play(game, method, best["lr"], best["lr"], s) for s in seeds]
    return result


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for method, runs in result["seeds"].items():
        row = {"method": method, "lr": result["chosen"][method]}
        for k in ("share_u1", "share_u2", "share_mid", "share_other"):
            vals = torch.tensor([r[k] for r in runs])
            row[k] = (float(vals.mean()), float(vals.std()) if len(vals) > 1 else 0.0)
        rows.append(row)
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(result)
    keys = ["share_u1", "share_u2", "share_mid", "share_other"]
    labels = ["near u1", "near u2", "near (u1+u2)/|u1+u2|", "elsewhere"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [k + i * width for k in range(len(keys))]
        ax.bar(xs, [row[k][0] for k in keys], width, yerr=[row[k][1] for k in keys], capsize=3,
               label=f"{row['method'].upper()} (lr {row['lr']:g})")
    ax.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(keys))], labels)
    ax.set_ylabel("share of generated samples")
    ax.set_ylim(0, 1)
    ax.set_title(f"Two-mode game: where the generator puts its mass ({len(result['seeds']['sgda'])} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> list[str]:
    lines = ["| method | lr (chosen) | near u1 | near u2 | near (u1+u2)/norm | elsewhere |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in summary_rows(result):
        cells = " | ".join(f"{row[k][0]:.2f} ± {row[k][1]:.2f}" for k in ("share_u1", "share_u2", "share_mid",
                                                                          "share_other"))
        lines.append(f"| {row['method'].upper()} | {row['lr']:g} | {cells} |")
    lines += ["", "Sweep (seed 0), shares near u1 / u2 / (u1+u2): " + "; ".join(
        f"{m.upper()} lr {r['lr']:g}: {r['share_u1']:.2f} / {r['share_u2']:.2f} / {r['share_mid']:.2f}"
        + (" (diverged)" if r["diverged"] else "") for m, rows in result["sweep"].items() for r in rows) + "."]
    return lines


LRS = {"sgda": [0.01, 0.03, 0.1, 0.3, 1.0], "nsgda": [0.003, 0.01, 0.03, 0.1, 0.3]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=Game.steps)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--overlap", type=float, default=Game.overlap)
    ap.add_argument("--init-scales", default="0.1,0.01", help="initialisation scales of V and W to run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "two_mode_game"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, lines = {}, []
    for scale in [float(v) for v in args.init_scales.split(",")]:
        game = Game(steps=args.steps, overlap=args.overlap, init_scale=scale)
        result = sweep_and_seeds(game, LRS, seeds=list(range(1, args.seeds + 1)))
        results[str(scale)] = result
        plot(result, out.parent / f"{out.name}_init{scale:g}.png")
        lines += [f"#### Initialisation scale {scale:g} ({args.steps} steps, {args.seeds} seeds, mean ± std)", ""]
        lines += table(result) + [""]
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = "\n".join(lines)
    out.with_suffix(".md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
