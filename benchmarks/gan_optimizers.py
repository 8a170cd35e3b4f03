"""Does Adam reduce to normalized SGDA on real data? DCGAN on MNIST with six optimizers (Jelassi et al. 2022).

Optimizers (both players the same kind; the discriminator ascends with ``maximize=True``): Adam (betas 0.5, 0.999,
the usual GAN setting), SGDA (plain SGD), global and layer-wise normalized SGDA, AdaLR (SGD's direction, Adam's
norm) and AdaDir (Adam's direction, SGD's norm). Each gets the same budget: a sweep of ``--lrs`` learning rates
(one seed, the same for both players), then ``--seeds`` seeds at the learning rate with the lowest final distance.

Measured every ``--eval-every`` iterations: the Fréchet distance between generated images and MNIST test images in
the feature space of an MNIST CNN trained here (adv_transport.gan.sample_quality; *not* FID), and at the end mode
coverage (the class histogram of generated digits under that classifier). Adam's per-layer update norms are logged
throughout.

    python benchmarks/gan_optimizers.py            # writes benchmarks/results/gan/ and a BENCHMARKS.md section
    python benchmarks/gan_optimizers.py --quick    # smoke test, < 5 minutes
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import adv_transport as at
from adv_transport.gan import DCGANDiscriminator, DCGANGenerator, gan_step
from adv_transport.gan.sample_quality import classifier_frechet_distance, mode_coverage, save_grid
from adv_transport.optim import AdaDir, AdaLR, NormalizedSGD

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import replace_section  # noqa: E402 - shared by the scripts

ROOT = Path(__file__).resolve().parent.parent

OPTIMIZERS = {
    "Adam": lambda ps, lr, maximize: torch.optim.Adam(ps, lr=lr, betas=(0.5, 0.999), maximize=maximize),
    "SGDA": lambda ps, lr, maximize: torch.optim.SGD(ps, lr=lr, maximize=maximize),
    "nSGDA (global)": lambda ps, lr, maximize: NormalizedSGD(ps, lr=lr, normalize="global", maximize=maximize),
    "nSGDA (layer)": lambda ps, lr, maximize: NormalizedSGD(ps, lr=lr, normalize="layer", maximize=maximize),
    "AdaLR": lambda ps, lr, maximize: AdaLR(ps, lr=lr, betas=(0.5, 0.999), maximize=maximize),
    "AdaDir": lambda ps, lr, maximize: AdaDir(ps, lr=lr, betas=(0.5, 0.999), maximize=maximize),
}
# learning-rate grids of equal size (4 points, factors of ~3) per optimizer; normalized steps are lengths (per layer
# or overall), so their scale differs. A first 500-iteration run found every optimizer's best at the top of a
# lower grid, hence these.
LRS = {
    "Adam": [3e-4, 1e-3, 3e-3, 1e-2],
    "SGDA": [1e-2, 3e-2, 1e-1, 3e-1],
    "nSGDA (global)": [1e-2, 3e-2, 1e-1, 3e-1],
    "nSGDA (layer)": [3e-3, 1e-2, 3e-2, 1e-1],
    "AdaLR": [3e-4, 1e-3, 3e-3, 1e-2],
    "AdaDir": [3e-3, 1e-2, 3e-2, 1e-1],
}


def train_classifier(train, test, epochs, seed, threads_note=""):
    """The feature classifier: the small MNIST CNN trained clean (`adv-transport train --method clean`'s recipe)."""
    from adv_transport.recipes import recipe
    from adv_transport.training import build_method, build_optimizer

    r = recipe("clean", "mnist").replace(epochs=epochs)
    torch.manual_seed(seed)
    model = at.build_model(r.model, "mnist")
    batches = at.IndexedBatches(train, r.batch_size, seed=seed)
    opt, sched = build_optimizer(r, model.parameters(), len(batches))
    at.Trainer(model, opt, build_method(r, len(train), train.shape), scheduler=sched, progress=False).fit(
        batches, r.epochs)
    model.eval()
    x, y, _ = test.get(torch.arange(len(test)))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return model, acc


def run(name, lr, seed, args, train_x, real_eval, classifier):
    torch.manual_seed(seed)
    gen, disc = DCGANGenerator(args.z_dim, args.width), DCGANDiscriminator(args.width)
    opt_g = OPTIMIZERS[name](gen.parameters(), lr, False)
    opt_d = OPTIMIZERS[name](disc.parameters(), lr, True)
    rng = torch.Generator().manual_seed(seed)
    fixed_z = torch.randn(args.n_eval, args.z_dim, generator=torch.Generator().manual_seed(12345))
    curve, norms = [], []
    start = time.perf_counter()
    for it in range(1, args.iters + 1):
        idx = torch.randint(len(train_x), (args.batch,), generator=rng)
        log = gan_step(gen, disc, opt_g, opt_d, train_x[idx], args.z_dim, order="alternating", ascent="maximize",
                       generator_rng=rng, track_norms=(it % args.norm_every == 0))
        if it % args.norm_every == 0:
            norms.append({"iter": it, "g": log.g_update_norms, "d": log.d_update_norms})
        if not (torch.isfinite(torch.tensor(log.d_objective)) and torch.isfinite(torch.tensor(log.g_loss))):
            curve.append({"iter": it, "distance": float("nan")})
            break
        if it % args.eval_every == 0 or it == args.iters:
            gen.eval()
            with torch.no_grad():
                fake = gen(fixed_z)
            gen.train()
            curve.append({"iter": it, "distance": classifier_frechet_distance(classifier, real_eval, fake)})
    gen.eval()
    with torch.no_grad():
        fake = gen(fixed_z)
    coverage = mode_coverage(classifier, fake)
    return {"optimizer": name, "lr": lr, "seed": seed, "curve": curve, "norms": norms, "coverage": coverage,
            "final_distance": curve[-1]["distance"], "seconds": time.perf_counter() - start}, fake


def _finite(v):
    return v == v and v != float("inf")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--z-dim", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--norm-every", type=int, default=25)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--classifier-epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int)
    ap.add_argument("--optimizers", help="comma-separated subset")
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", help="results folder (default benchmarks/results/gan[-quick])")
    ap.add_argument("--benchmarks-md", help="BENCHMARKS.md to update (default: the repository's, not in --quick)")
    ap.add_argument("--from-results", help="only redo the summary, plots and Markdown from a saved results.json")
    args = ap.parse_args(argv)
    if args.from_results:
        results = json.loads(Path(args.from_results).read_text())
        return finish(results, Path(args.from_results).parent, args.benchmarks_md, results["args"]["quick"])
    if args.threads:
        torch.set_num_threads(args.threads)
    import subprocess

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    args.norm_every = max(1, min(args.norm_every, args.iters // 10))
    if args.quick:
        args.iters, args.seeds, args.eval_every, args.n_eval = min(args.iters, 60), min(args.seeds, 2), 30, 200
        args.classifier_epochs, args.train_subset = 1, args.train_subset or 5000
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("gan-quick" if args.quick else "gan"))
    out.mkdir(parents=True, exist_ok=True)
    names = list(OPTIMIZERS) if not args.optimizers else [n.strip() for n in args.optimizers.split(",")]
    train = at.load_dataset("mnist", "train", args.data_dir).subset(args.train_subset)
    test = at.load_dataset("mnist", "test", args.data_dir)
    classifier, clf_acc = train_classifier(train, test, args.classifier_epochs, seed=0)
    print(f"feature classifier: clean test accuracy {clf_acc:.4f}", file=sys.stderr, flush=True)
    train_x = train.get(torch.arange(len(train)))[0]
    real_eval = test.get(torch.arange(min(args.n_eval, len(test))))[0]
    results = {"args": vars(args), "commit": commit, "classifier_test_acc": clf_acc, "sweep": {}, "chosen": {},
               "seeds": {}}
    for name in names:
        sweep = []
        for lr in LRS[name]:
            res, _ = run(name, lr, 0, args, train_x, real_eval, classifier)
            sweep.append({k: res[k] for k in ("lr", "final_distance", "coverage", "seconds")})
            print(f"[{name}] lr {lr:g}: distance {res['final_distance']:.2f}", file=sys.stderr, flush=True)
        finite = [s for s in sweep if _finite(s["final_distance"])] or sweep
        chosen = min(finite, key=lambda s: s["final_distance"] if _finite(s["final_distance"]) else 1e30)["lr"]
        results["sweep"][name], results["chosen"][name] = sweep, chosen
        runs = []
        for seed in range(1, args.seeds + 1):
            res, fake = run(name, chosen, seed, args, train_x, real_eval, classifier)
            runs.append(res)
            if seed == 1:
                save_grid(fake, out / f"samples_{re.sub(r'[^A-Za-z]+', '_', name).strip('_')}.png")
        results["seeds"][name] = runs
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return finish(results, out, args.benchmarks_md, args.quick)


def finish(results, out, benchmarks_md, quick):
    summary = summarise(results)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots(results, out)
    section = markdown(results, summary, out)
    (out / "summary.md").write_text(section)
    md_path = Path(benchmarks_md) if benchmarks_md else (None if quick else ROOT / "BENCHMARKS.md")
    if md_path is not None:
        replace_section(md_path, "gan-optimizers", section)
    print(section)
    return results


def summarise(results):
    """Mean and std over seeds; a diverged run (non-finite distance) is counted apart and left out of the distance
    statistics (its coverage still counts)."""
    rows = []
    for name, runs in results["seeds"].items():
        d = [r["final_distance"] for r in runs if _finite(r["final_distance"])]
        cov = [r["coverage"]["classes_covered"] for r in runs]
        kl = [r["coverage"]["kl_to_uniform"] for r in runs]

        def stats(v):
            if not v:
                return (float("nan"), float("nan"))
            return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)

        rows.append({"optimizer": name, "lr": results["chosen"][name], "distance": stats(d),
                     "diverged": len(runs) - len(d), "runs": len(runs), "classes": stats(cov), "kl": stats(kl)})
    return rows


def plots(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in results["seeds"].items():
        iters = [p["iter"] for p in max(runs, key=lambda r: len(r["curve"]))["curve"]]
        vals = [[r["curve"][i]["distance"] for r in runs if i < len(r["curve"]) and _finite(r["curve"][i]["distance"])]
                for i in range(len(iters))]
        means = [statistics.mean(v) if v else float("nan") for v in vals]
        ax.plot(iters, means, marker=".", label=f"{name} (lr {results['chosen'][name]:g}; finite runs)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("Fréchet distance in MNIST-CNN features (log)")
    ax.set_title("DCGAN on MNIST: sample distance to test images (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "distance_vs_iterations.png", dpi=120)
    plt.close(fig)
    if "Adam" in results["seeds"] and results["seeds"]["Adam"][0]["norms"]:
        norms = results["seeds"]["Adam"][0]["norms"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, player in zip(axes, ("g", "d")):
            for layer in norms[0][player]:
                ax.plot([n["iter"] for n in norms], [n[player][layer] for n in norms], label=layer)
            ax.set_title(f"Adam, {'generator' if player == 'g' else 'discriminator'}: per-layer update norm")
            ax.set_xlabel("iteration")
            ax.set_yscale("log")
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "adam_update_norms.png", dpi=120)
        plt.close(fig)


def adam_norm_stability(results, only_weights=False):
    """Coefficient of variation over training of each Adam layer's update norm (seed 1), median over layers
    (``only_weights``: tensors named '*.weight' only, leaving out biases)."""
    if "Adam" not in results["seeds"] or not results["seeds"]["Adam"][0]["norms"]:
        return None
    norms = results["seeds"]["Adam"][0]["norms"]
    cvs = []
    for player in ("g", "d"):
        for layer in norms[0][player]:
            if only_weights and not layer.endswith("weight"):
                continue
            vals = [n[player][layer] for n in norms[len(norms) // 5:]]  # after the first fifth of training
            if len(vals) > 1 and statistics.mean(vals) > 0:
                cvs.append(statistics.stdev(vals) / statistics.mean(vals))
    return statistics.median(cvs) if cvs else None


def markdown(results, summary, out):
    a = results["args"]
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    lines = [
        "<!-- gan-optimizers -->",
        "## GAN optimizers on MNIST: does Adam reduce to normalized SGDA?",
        "",
        f"One run of `python benchmarks/gan_optimizers.py{' --quick' if a['quick'] else ''}` (commit "
        f"{results['commit']}, {a['threads'] or torch.get_num_threads()} thread(s)): DCGAN (width "
        f"{a['width']}, z {a['z_dim']}), batch {a['batch']}, {a['iters']} alternating iterations (1 discriminator "
        f"step per generator step), {a['seeds']} seeds at the learning rate (same for both players) with the lowest "
        "final distance in a 4-point sweep on seed 0. Distance: Fréchet distance between "
        f"{a['n_eval']} generated and {a['n_eval']} MNIST test images in the 100-unit features of a small MNIST CNN "
        f"trained here (clean test accuracy {results['classifier_test_acc']:.4f}); not FID. Coverage: classes with "
        "at least 1 % of the generated digits under that classifier, and KL(class histogram || uniform).",
        "",
        "| optimizer | lr | Fréchet distance (final) | diverged runs | classes covered | KL to uniform |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(f"| {r['optimizer']} | {r['lr']:g} | {r['distance'][0]:.2f} ± {r['distance'][1]:.2f} | "
                     f"{r['diverged']}/{r['runs']} | {r['classes'][0]:.1f} ± {r['classes'][1]:.1f} | "
                     f"{r['kl'][0]:.3f} ± {r['kl'][1]:.3f} |")
    sweep = "; ".join(f"{n}: " + ", ".join(f"{s['lr']:g} -> {s['final_distance']:.1f}" for s in sw)
                      for n, sw in results["sweep"].items())
    cv, cv_w = adam_norm_stability(results), adam_norm_stability(results, only_weights=True)
    lines += ["", f"Sweep (seed 0, final distance): {sweep}.", "",
              f"Adam's per-layer update norm: median coefficient of variation over the last 80 % of training "
              f"{'n/a' if cv is None else f'{cv:.2f}'} over all tensors, {'n/a' if cv_w is None else f'{cv_w:.2f}'} "
              f"over weight tensors (plot `{rel}/adam_update_norms.png`). Distance against "
              f"iterations: `{rel}/distance_vs_iterations.png`; samples: `{rel}/samples_*.png`.",
              "<!-- /gan-optimizers -->"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
