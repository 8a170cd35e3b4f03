"""Smoke tests of the benchmark scripts (tiny slices; the committed results come from full runs)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_atl_vs_pgd_quick_mode_runs_end_to_end(mnist_dir, tmp_path):
    bench = load("atl_vs_pgd")
    md = tmp_path / "BENCH.md"
    summary = bench.main(["--quick", "--train-subset", "200", "--eval-n", "30", "--aa-n", "20", "--data-dir",
                          str(mnist_dir), "--out", str(tmp_path / "out"), "--benchmarks-md", str(md),
                          "--no-progress"])
    labels = [r["label"] for r in summary["rows"]]
    assert labels == ["clean", "ATL T=1", "ATL T=1 (consistency 20)", "ATL T=1 (consistency 20; KL chain target)",
                      "ATL T=2", "ATL T=2 (consistency 20; KL chain target; eps warm-up 3)",
                      "PGD-40 AT", "FGSM-RS", "N-FGSM", "FGSM-PGI", "ATTA", "Free ATL",
                      "Free ATL (replay 4)", "Free ATL (replay 4) with Free-AT's step"]
    # --methods is comma-separated
    assert not [label for label in {**bench.MNIST_METHODS, **bench.CIFAR_METHODS} if "," in label]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["meta"]["train_n"] == 200
    # each method's checkpoints are kept while it trains, removed once its result is saved
    assert not (tmp_path / "out" / "partial").exists()
    assert all(res["resumed_at_epoch"] is None for res in results["results"].values())
    from adv_transport.recipes import recipe

    for label, res in results["results"].items():
        assert res["final"]["n_examples"] == 20 and "autoattack_acc" in res["final"]
        # the same model and optimizer family for every method, each with its documented recipe
        name, changes = bench.MNIST_METHODS[label]
        documented = recipe(name, "mnist").replace(**changes)
        documented = documented.replace(epochs=max(1, round(documented.epochs * 0.1)))  # --quick scales epochs
        assert res["recipe"] == documented.to_dict()
        assert (res["recipe"]["model"], res["recipe"]["optimizer"]) == ("mnist-cnn", "adam")
        # every epoch logs PGD accuracy against training seconds and counted gradient evaluations
        for rec in res["history"]:
            assert {"pgd_acc", "train_seconds", "input_grad_evals", "param_grad_evals"} <= set(rec)
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["clean"]["epoch_cost_vs_clean"] == 1.0 and rows["ATL T=1"]["bank_bytes"] > 0
    assert all("seconds_to_target" in r for r in rows.values())
    assert (tmp_path / "out" / "robust_error_vs_time.png").stat().st_size > 1000
    text = md.read_text()  # the MNIST targets on means over seeds, for each ATL row
    for label in ("ATL T=1", "ATL T=1 (consistency 20)", "ATL T=1 (consistency 20; KL chain target)"):
        assert f"{label} AutoAttack" in text and f"of {label}'s accuracy after the white-box attacks" in text
    text = md.read_text()
    assert "<!-- atl-vs-pgd:mnist -->" in text and "Targets:" in text
    # a second run replaces its section instead of appending another
    bench.update_benchmarks_md(md, "<!-- atl-vs-pgd:mnist -->\nnew\n<!-- /atl-vs-pgd:mnist -->\n", "mnist")
    assert md.read_text().count("atl-vs-pgd:mnist -->") == 2 and "\nnew\n" in md.read_text()
    assert "Square drop" in text and "ATL T=1 trained in" in text


def test_atl_vs_pgd_further_seeds_are_recorded_beside_seed_0_and_averaged(mnist_dir, tmp_path):
    bench = load("atl_vs_pgd")
    out, md = tmp_path / "out", tmp_path / "BENCH.md"
    common = ["--quick", "--train-subset", "100", "--eval-n", "20", "--aa-n", "10", "--data-dir", str(mnist_dir),
              "--out", str(out), "--benchmarks-md", str(md), "--no-progress", "--epochs-scale", "0.05"]
    # seed 0 must hold the comparison's reference; another seed may run any subset
    import pytest

    with pytest.raises(SystemExit):
        bench.main([*common, "--methods", "ATL T=1,Free ATL"])
    assert bench.main([*common, "--seed", "1", "--methods", "clean,ATL T=1,Free ATL"]) is None  # no seed 0 yet
    assert (out / "seed1" / "results.json").is_file() and not md.exists()
    bench.main([*common, "--methods", "clean,ATL T=1,PGD-40 AT,Free ATL"])
    table = bench.across_seeds(bench.seed_runs(out))
    assert set(table["ATL T=1"]["seeds"]) == {0, 1} and set(table["PGD-40 AT"]["seeds"]) == {0}
    accs = [r["autoattack_acc"] for r in table["Free ATL"]["seeds"].values()]
    assert abs(table["Free ATL"]["autoattack_acc_mean"] - sum(accs) / 2) < 1e-9
    text = md.read_text()
    assert "Across seeds" in text and "Free ATL cost per pass over the data" in text and "within 2 points" in text
    free = table["Free ATL"]["seeds"][0]
    assert free["pass_cost_vs_clean"] == free["epoch_cost_vs_clean"]  # no replay: a pass is an epoch
    # a replayed epoch visits each batch `replay` times: its cost per pass is its epoch cost / replay
    hist = lambda s: [{"epoch_seconds": s, "clean_acc": 90.0, "pgd_acc": 50.0, "train_seconds": s,  # noqa: E731
                       "input_grad_evals": 1, "param_grad_evals": 1}]
    rows = bench.summarise({"clean": {"history": hist(2.0), "final": {}},
                            "Free ATL (replay 4)": {"recipe": {"replay": 4}, "history": hist(10.0), "final": {}}},
                           "mnist")["rows"]
    assert rows[1]["epoch_cost_vs_clean"] == 5.0 and rows[1]["pass_cost_vs_clean"] == 1.25
    # the reference may be reused from an earlier run of the same recipe (not retrained; the report says so)
    out2 = tmp_path / "out2"
    i = common.index("--out")
    again = [*common[:i + 1], str(out2), *common[i + 2:]]
    summary = bench.main([*again, "--methods", "clean,ATL T=1", "--reference-from", str(out / "results.json")])
    assert [r["label"] for r in summary["rows"]] == ["clean", "ATL T=1", "PGD-40 AT"]
    saved = json.loads((out2 / "results.json").read_text())
    assert "reused_from" in saved["results"]["PGD-40 AT"] and "not retrained in this run" in md.read_text()
    bench.main([*common, "--report"])
    # more methods of a seed, run apart (--part), each part with its own clean run (the unit of its epoch costs):
    # joined to that seed's rows; a method twice for one seed is refused
    bench.main([*common, "--seed", "1", "--part", "b", "--methods", "clean,N-FGSM"])
    assert (out / "seed1-b" / "results.json").is_file()
    table = bench.across_seeds(bench.seed_runs(out))
    assert set(table["N-FGSM"]["seeds"]) == {1} and table["N-FGSM"]["seeds"][1]["part"] == "b"
    assert table["N-FGSM"]["seeds"][1]["epoch_cost_vs_clean"] is not None
    assert table["clean"]["seeds"][1]["part"] is None and set(table["ATL T=1"]["seeds"]) == {0, 1}
    with pytest.raises(SystemExit, match="in two runs"):
        bench.main([*common, "--seed", "1", "--part", "c", "--methods", "clean,N-FGSM"])
    (out / "seed1-c" / "results.json").unlink()
    with pytest.raises(SystemExit):
        bench.main([*common, "--seed", "1", "--part", "../x", "--methods", "clean"])
    # an interrupted run is closed from the methods it finished; the missing ones are named
    data = json.loads((out / "results.json").read_text())
    out3 = tmp_path / "out3"
    out3.mkdir()
    (out3 / "results.json").write_text(json.dumps(
        {"partial": True, "results": {k: v for k, v in data["results"].items() if k != "Free ATL"}}))
    summary = bench.main([*common[:i + 1], str(out3), *common[i + 2:], "--methods", "clean,ATL T=1,PGD-40 AT,Free ATL",
                          "--close-partial", "abc1234"])
    assert [r["label"] for r in summary["rows"]] == ["clean", "ATL T=1", "PGD-40 AT"]
    meta = json.loads((out3 / "results.json").read_text())["meta"]
    assert meta["stopped_before"] == ["Free ATL"] and meta["commit"] == "abc1234"
    assert "--close-partial" not in meta["command"] and "stopped before Free ATL" in md.read_text()
    # --report rebuilds the section from the saved runs without training
    md.write_text("# Benchmarks\n")
    summary = bench.main([*common, "--report"])
    assert [r["label"] for r in summary["rows"]] == ["clean", "ATL T=1", "PGD-40 AT", "Free ATL"]
    assert "Across seeds" in md.read_text()


def test_mnist_sweep_quick_mode_judges_on_validation_and_resumes(mnist_dir, tmp_path):
    sweep = load("mnist_sweep")
    out, md = tmp_path / "out", tmp_path / "BENCH.md"
    args = ["--quick", "--data-dir", str(mnist_dir), "--out", str(out), "--benchmarks-md", str(md), "--no-progress",
            "--variants", "consistency 10;eta 1.25 eps, s 0.05", "--val-aa-n", "10"]
    sweep.main(args)
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2
    run = json.loads(runs[0].read_text())
    assert run["final_on"] == "validation" and run["final"]["n_examples"] == 10
    assert run["recipe"]["method"] == "atl" and run["recipe"]["epochs"] == 1
    assert run["recipe"]["chain_target"] == "ce"  # the variants change the recipe before the KL default
    assert run["resumed_at_epoch"] is None and not (out / "partial").exists()  # checkpoints gone once saved
    stamps = [p.stat().st_mtime_ns for p in runs]
    sweep.main(args)  # a rerun skips finished variants
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    text = md.read_text()
    assert text.count("<!-- mnist-sweep -->") == 1 and "consistency 10" in text
    assert "several seeds" not in text
    # a second seed of a variant: its own run and a mean over seeds; a variant trained in a larger ball is judged at 0.3
    sweep.main([*args[:-4], "--variants", "consistency 10;consistency 10, 15 epochs, trained at eps 0.33", "--seed",
                "1", "--val-aa-n", "10"])
    wide = json.loads((out / "runs" / "sweep-consistency_10_15_epochs_trained_at_eps_0.33-seed1.json").read_text())
    assert wide["recipe"]["eps"] == 0.33 and abs(wide["final"]["eps"] - 0.3) < 1e-9
    text = md.read_text()
    assert "| consistency 10 | 0, 1 |" in text and "| consistency 10 | 1 |" in text


def test_optimizer_step_time_script_runs(tmp_path):
    rows = load("optim_step_time").main(["--rounds", "1", "--warmup", "0", "--out", str(tmp_path / "ost")])
    assert {r["optimizer"].split()[0] for r in rows} >= {"NormalizedSGD", "AdaLR", "AdaDir"}
    assert (tmp_path / "ost.md").read_text().count("|") > 20


def test_two_mode_game_shows_what_the_benchmark_reports():
    """Seeded (init scale 0.01, seed 0, 3000 steps, as in the committed sweep): SGDA collapses onto the u1 + u2
    direction at step 0.03 but covers both modes at 0.1, so the theory's 'SGDA collapses at any constant step size'
    does not reproduce here; nSGDA at its chosen step keeps mass near both u1 and u2."""
    game_mod = load("two_mode_game")
    game = game_mod.Game(steps=3000, init_scale=0.01)
    collapsed = game_mod.play(game, "sgda", 0.03, 0.03, seed=0)
    assert collapsed["share_mid"] >= 0.9
    both = game_mod.play(game, "sgda", 0.1, 0.1, seed=0)
    assert both["share_u1"] >= 0.5 and both["share_u2"] >= 0.05
    normalized = game_mod.play(game, "nsgda", 0.01, 0.01, seed=0)
    assert normalized["share_u1"] >= 0.1 and normalized["share_u2"] >= 0.1


def test_gan_optimizers_quick_mode_runs_end_to_end(mnist_dir, tmp_path):
    bench = load("gan_optimizers")
    md = tmp_path / "BENCH.md"
    results = bench.main(["--quick", "--iters", "10", "--seeds", "2", "--n-eval", "40", "--optimizers",
                          "Adam,nSGDA (layer),AdaDir", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "gan"),
                          "--benchmarks-md", str(md)])
    assert [r["optimizer"] for r in results["summary"]] == ["Adam", "nSGDA (layer)", "AdaDir"]
    assert all(len(runs) == 2 for runs in results["seeds"].values())
    assert all(len(results["sweep"][n]) == 4 for n in results["sweep"])  # equal sweep budget per optimizer
    for name in ("distance_vs_iterations.png", "adam_update_norms.png", "samples_Adam.png"):
        assert (tmp_path / "gan" / name).stat().st_size > 500
    assert "<!-- gan-optimizers -->" in md.read_text()


def test_every_method_starts_from_the_same_weights_and_data_order(mnist_dir):
    """What makes the benchmark side by side: build_training seeds the initialisation and the batch order alike for
    every method."""
    import adv_transport as at
    from adv_transport.recipes import recipe
    from adv_transport.training import build_training

    train = at.load_dataset("mnist", "train", str(mnist_dir)).subset(300)
    test = at.load_dataset("mnist", "test", str(mnist_dir))
    built = [build_training(recipe(m, "mnist"), train, test, seed=0, eval_n=10, progress=False) for m in
             ("clean", "atl", "pgd", "fgsm-rs", "n-fgsm", "fgsm-pgi", "atta")]
    first_model, first_batches = built[0][0].model, built[0][1]
    for trainer, batches in built[1:]:
        for a, b in zip(first_model.parameters(), trainer.model.parameters()):
            assert torch.equal(a, b)
        for (_, _, idx_a), (_, _, idx_b) in zip(first_batches.iterate(0, 0), batches.iterate(0, 0)):
            assert torch.equal(idx_a, idx_b)


def write_synthetic_cifar(folder, n_train=700, n_test=60, seed=0):
    """A tiny stand-in for cifar10_jpeg_lossy.npz (same keys, NHWC uint8; the test split sorted by class)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def split(n, sort):
        y = (np.arange(n) % 10).astype(np.uint8)
        if sort:
            y = np.sort(y)
        x = rng.integers(0, 80, size=(n, 32, 32, 3), dtype=np.uint8)
        for c in range(10):
            x[y == c, 3 * c : 3 * c + 3, :, c % 3] = 220
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train, False), split(n_test, True)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "cifar10_jpeg_lossy.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return folder


def test_cifar_study_quick_mode_runs_every_method_resumes_and_reports(tmp_path):
    study = load("cifar_study")
    data = write_synthetic_cifar(tmp_path / "data")
    md = tmp_path / "BENCH.md"
    args = ["study", "--quick", "--data-dir", str(data), "--out", str(tmp_path / "out"), "--benchmarks-md", str(md),
            "--no-progress", "--eps", "8,16", "--val-n", "100"]
    agg = study.main(args)
    assert set(agg["eps"]) == {"8/255", "16/255"}
    for methods in agg["eps"].values():
        assert list(methods) == list(study.STUDY_METHODS)
        for label, m in methods.items():
            seed0 = m["seeds"]["0"]
            assert seed0["autoattack_acc"] is not None and seed0["train_seconds"] > 0
            assert m["autoattack_acc_mean"] == seed0["autoattack_acc"]
            assert ("best-on-validation" in m["tricks"]) == (label != "clean")
    saved = json.loads((tmp_path / "out" / "study.json").read_text())
    assert saved["meta"]["lossy_data"] and saved["eps"]["8/255"]["ATL"]["n_seeds"] == 1
    runs = sorted((tmp_path / "out" / "runs").glob("*.json"))
    assert len(runs) == 2 * len(study.STUDY_METHODS)
    run = json.loads(runs[0].read_text())
    assert run["final_on"] == "test" and run["history"][0]["val_pgd_acc"] is not None
    # step sizes scale with eps
    r16 = study.study_recipe("fgsm-rs", {}, 16 / 255, None)
    assert abs(r16.step_size - 2 * study.study_recipe("fgsm-rs", {}, 8 / 255, None).step_size) < 1e-12
    # a rerun skips finished runs (resumes run by run) and replaces its BENCHMARKS section
    stamps = [p.stat().st_mtime_ns for p in runs]
    study.main(args)
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    text = md.read_text()
    assert text.count("<!-- cifar-study -->") == 1 and "JPEG-lossy" in text and "Targets:" in text
    pgd_targets = [line for line in text.split("Targets:")[1].splitlines() if "vs PGD-10 AT" in line]
    labels = [re.search(r"\): (ATL.*?) [0-9.]+ %", line).group(1) for line in pgd_targets]
    assert labels == ["ATL", "ATL (13 epochs)", "ATL (K 4)", "ATL (K 1, no EMA)", "ATL (K 1, no EMA, 13 epochs)",
                      "ATL (K 1) + EMA"]
    # the previous default's rows really run without weight averaging (ema_decay 0) and with one chain
    old = json.loads((tmp_path / "out" / "runs" / f"{study.run_key('study', study.EPS8, 'ATL (K 1, no EMA)', 0)}.json")
                     .read_text())["recipe"]
    assert (old["copies"], old["ema_decay"]) == (1, 0.0)
    # ... and its own line against the best single-step row of any tricks (rows told apart by inner step)
    single_targets = [line for line in text.split("Targets:")[1].splitlines() if "best single-step" in line]
    assert [re.search(r"\): (ATL.*?) AutoAttack", line).group(1) for line in single_targets] == labels
    assert not any(f"method, {row}," in text for row in ("ATL", "PGD-10 AT", "clean", "Free ATL"))
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    assert (tmp_path / "out" / "study_autoattack.png").stat().st_size > 1000  # final AutoAttack per method and seed
    # the sweep judges on the validation split only
    # (on the seeds asked for: a variant on several seeds gets its mean over them)
    sweep = study.main(["sweep", "--quick", "--data-dir", str(data), "--out", str(tmp_path / "sw"), "--methods",
                        "eta eps/2, s 0.05", "--seeds", "0,1", "--val-n", "100", "--benchmarks-md",
                        str(tmp_path / "B2.md")])
    assert sweep["eps"] == {}
    sweep_runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sw" / "runs").glob("*.json"))]
    assert [r["seed"] for r in sweep_runs] == [0, 1]
    assert all(r["final_on"] == "validation" and all("pgd_acc" not in h for h in r["history"]) for r in sweep_runs)
    assert re.search(r"\| eta eps/2, s 0.05 \| 0, 1 \| [0-9.]+ ± [0-9.]+ \|", (tmp_path / "B2.md").read_text())
    # a reference row of another method runs its own inner step on the same split
    study.main(["sweep", "--quick", "--data-dir", str(data), "--out", str(tmp_path / "sw"), "--methods",
                "reference: FGSM-PGI + EMA 0.999", "--val-n", "100", "--benchmarks-md", str(tmp_path / "B2.md")])
    key = study.run_key("sweep", study.EPS8, "reference: FGSM-PGI + EMA 0.999", 0)
    ref = json.loads((tmp_path / "sw" / "runs" / f"{key}.json").read_text())
    assert (ref["method"], ref["recipe"]["ema_decay"], ref["final_on"]) == ("fgsm-pgi", 0.999, "validation")
    assert "| reference: FGSM-PGI + EMA 0.999 | 0 |" in (tmp_path / "B2.md").read_text()
    # more seeds in a folder of their own join the aggregate with `report --also`; a run in both folders is refused
    more = tmp_path / "more" / "runs"
    more.mkdir(parents=True)
    atl0 = json.loads((tmp_path / "out" / "runs" / "study-eps8-ATL-seed0.json").read_text())
    (more / "study-eps8-ATL-seed3.json").write_text(json.dumps({**atl0, "seed": 3}))
    both = study.main(["report", "--out", str(tmp_path / "more"), "--also", str(tmp_path / "out"), "--also",
                       str(tmp_path / "sw"), "--benchmarks-md", str(tmp_path / "B3.md")])
    assert sorted(both["eps"]["8/255"]["ATL"]["seeds"]) == ["0", "3"] and both["eps"]["8/255"]["ATL"]["n_seeds"] == 2
    assert both["eps"]["8/255"]["FGSM-PGI"]["n_seeds"] == 1 and "ATL sweep" not in (tmp_path / "B3.md").read_text()
    (more / "study-eps8-ATL-seed0.json").write_text(json.dumps(atl0))
    with pytest.raises(SystemExit, match="each run may be counted once"):
        study.main(["report", "--out", str(tmp_path / "more"), "--also", str(tmp_path / "out"), "--benchmarks-md",
                    str(tmp_path / "B3.md")])
    with pytest.raises(SystemExit):  # --also only reports, and never into the main study's section
        study.main(["report", "--out", str(tmp_path / "more"), "--also", str(tmp_path / "out")])


@pytest.mark.parametrize("runtime", [[], ["--channels-last"]], ids=["plain", "runtime"])
def test_cifar_study_run_cut_off_part_way_continues_from_its_last_epoch(tmp_path, monkeypatch, capsys, runtime):
    """A run killed after its first epoch's checkpoint continues from it when the study runs again and ends exactly
    as an uninterrupted run (history and final numbers, bank and selection state included), on the plain CPU path and
    through a Runtime; its record names the commit it started on; its checkpoint folder goes once the result is
    saved; a checkpoint of other settings (recipe or not) is refused and left as it is; `--no-checkpoints` keeps
    none."""
    from adv_transport.errors import ConfigError
    from adv_transport.trainer import Trainer

    study = load("cifar_study")
    data = write_synthetic_cifar(tmp_path / "data")
    common = ["study", "--quick", "--data-dir", str(data), "--no-progress", "--no-autoattack", "--methods", "ATL",
              "--benchmarks-md", str(tmp_path / "B.md"), *runtime]
    study.main([*common, "--val-n", "100", "--epochs", "3", "--out", str(tmp_path / "whole")])
    key = "study-eps8-ATL-seed0"
    whole = json.loads((tmp_path / "whole" / "runs" / f"{key}.json").read_text())
    assert whole["resumed_at_epoch"] is None and not (tmp_path / "whole" / "partial" / key).exists()

    class Killed(BaseException):
        pass

    real_save = Trainer.save_checkpoint

    def save_then_die(self):
        path = real_save(self)
        if self.epoch == 1:  # the first epoch's checkpoint is on disk
            raise Killed
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    monkeypatch.setattr(study, "git_commit", lambda: "c0ffee1")
    cut_args = [*common, "--out", str(tmp_path / "cut")]
    with pytest.raises(Killed):
        study.main([*cut_args, "--val-n", "100", "--epochs", "3"])
    partial = tmp_path / "cut" / "partial" / key
    assert (partial / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "runs" / f"{key}.json").exists()
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    monkeypatch.setattr(study, "git_commit", lambda: "beef002")
    # settings that differ from the checkpoint's, in the recipe or outside it: refused, the checkpoint untouched
    stamp = (partial / "checkpoint.pt").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"cannot resume the interrupted run .*epochs: stored 3, now 4"):
        study.main([*cut_args, "--val-n", "100", "--epochs", "4"])
    with pytest.raises(ConfigError, match=r"val_n: stored 100, now 90"):
        study.main([*cut_args, "--val-n", "90", "--epochs", "3"])
    assert (partial / "checkpoint.pt").stat().st_mtime_ns == stamp
    capsys.readouterr()
    study.main([*cut_args, "--val-n", "100", "--epochs", "3"])
    assert f"(resumed at epoch 1 from {partial}, started on commit c0ffee1)" in capsys.readouterr().err
    cut = json.loads((tmp_path / "cut" / "runs" / f"{key}.json").read_text())
    assert (cut["resumed_at_epoch"], cut["commit"], cut["resumed_on_commit"]) == (1, "c0ffee1", "beef002")
    assert not partial.parent.exists()  # no partial/ folder left once no run is in training
    timing = ("seconds", "train_seconds", "epoch_seconds", "eval_seconds")
    strip = lambda h: [{k: v for k, v in e.items() if k not in timing} for e in h]  # noqa: E731
    assert len(cut["history"]) == 3 and strip(cut["history"]) == strip(whole["history"])
    assert strip([cut["final"]]) == strip([whole["final"]]) and cut["selected_epoch"] == whole["selected_epoch"]
    assert cut["grad_evals"] == whole["grad_evals"]
    # a finished run is skipped, and a checkpoint left beside its result (a kill between the two) goes
    partial.mkdir(parents=True)
    study.main([*cut_args, "--val-n", "100", "--epochs", "3"])
    assert not partial.exists()
    # --no-checkpoints: a run that cannot resume anyway (a lent GPU) writes none
    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        study.main([*common, "--val-n", "100", "--epochs", "3", "--no-checkpoints", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none" / "partial").exists()


def test_cifar_study_targets_hold_every_atl_row_against_the_best_single_step_row_of_any_tricks():
    """Rows are told apart by their inner step: a single-step row with a trick (FGSM-PGI + EMA) can be the best one,
    PGD-10 AT and free ATL never are, and every ATL row gets both targets."""
    study = load("cifar_study")

    def row(method, aa, grad_evals=1.0, seconds=1.0):
        return {"method": method, "autoattack_acc_mean": aa, "n_seeds": 3, "grad_evals_mean": grad_evals,
                "train_seconds_mean": seconds, "seeds": {}}

    agg = {"eps": {"8/255": {
        "ATL": row("atl", 27.0, 3.0), "ATL + EMA": row("atl", 28.5, 3.0), "Free ATL": row("free-atl", 5.0),
        "FGSM-PGI": row("fgsm-pgi", 26.0), "FGSM-PGI + EMA": row("fgsm-pgi", 27.4), "N-FGSM": row("n-fgsm", 26.5),
        "PGD-10 AT": row("pgd", 40.0, 11.0),
    }}}
    lines = study.targets(agg)
    single = [line for line in lines if "best single-step" in line]
    assert len(single) == 2 and all("FGSM-PGI + EMA, 27.40 %" in line for line in single)
    assert single[0].startswith("- **Not met**") and "ATL AutoAttack 27.00" in single[0]
    assert single[1].startswith("- **Met**") and "ATL + EMA AutoAttack 28.50" in single[1]  # 28.5 >= 27.4 + 1
    pgd = [line for line in lines if "vs PGD-10 AT" in line]
    assert len(pgd) == 2 and all(line.startswith("- **Not met**") for line in pgd)  # 27-28.5 < 40 - 1
    assert any(line.startswith("- **Not met**") and "Free ATL AutoAttack 5.00" in line for line in lines)
    assert not any("provisional" in line for line in lines)  # 3 seeds each
    # a pilot on one seed is marked provisional, whatever its verdict
    one = {"eps": {"8/255": {"ATL": {**row("atl", 30.5, 3.0), "n_seeds": 1},
                             "FGSM-PGI": {**row("fgsm-pgi", 29.4), "n_seeds": 1}}}}
    (line,) = study.targets(one)
    assert line.startswith("- **Met**") and "a provisional reading, not a verdict" in line
    # the same-seed differences: over the seeds both rows ran, with their mean and its standard error
    seeds = lambda *v: {str(i): {"autoattack_acc": x} for i, x in enumerate(v)}  # noqa: E731
    a, b = {"seeds": {**seeds(27.5, 27.5, 29.1), "7": {"autoattack_acc": 40.0}}}, {"seeds": seeds(27.9, 27.1, 26.7)}
    assert study.paired_gap(a, b) == (" Per seed: -0.4, +0.4, +2.4 points; mean +0.80 ± 0.83 (standard error over "
                                      "seeds).")
    assert study.paired_gap({"seeds": seeds(30.0)}, b) == ""  # one shared seed: no spread to give
    agg["eps"]["8/255"]["ATL"]["seeds"], agg["eps"]["8/255"]["FGSM-PGI + EMA"]["seeds"] = a["seeds"], b["seeds"]
    assert "Per seed: -0.4, +0.4, +2.4 points" in study.targets(agg)[0]


def test_cifar_study_other_model_fast_path_order_time_box_and_failures(tmp_path, monkeypatch, capsys):
    """The options of a GPU session, exercised on the CPU: another model (own run keys and BENCHMARKS section), the
    Runtime path (bf16 autocast, channels-last), runs in the --methods order, --stop-after and --keep-going."""
    study = load("cifar_study")
    data = write_synthetic_cifar(tmp_path / "data")
    md, out = tmp_path / "BENCH.md", tmp_path / "out"
    common = ["study", "--quick", "--data-dir", str(data), "--benchmarks-md", str(md), "--no-progress",
              "--val-n", "100", "--no-autoattack", "--model", "wrn-10-1", "--eps-ramp", "0.5"]
    agg = study.main([*common, "--out", str(out), "--amp", "bf16", "--channels-last", "--methods", "FGSM-RS;ATL"])
    assert list(agg["eps"]["8/255"]) == ["ATL", "FGSM-RS"]  # the report keeps the study's order
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {"study-wrn_10_1-eps8-FGSM_RS-seed0", "study-wrn_10_1-eps8-ATL-seed0"}
    fgsm, atl = runs["study-wrn_10_1-eps8-FGSM_RS-seed0"], runs["study-wrn_10_1-eps8-ATL-seed0"]
    assert fgsm["recipe"]["model"] == "wrn-10-1" and fgsm["recipe"]["eps_ramp"] == 0.5
    # run in the order given: FGSM-RS first (every run's date is the same day, so compare the files' times)
    stamps = {k: (out / "runs" / f"{k}.json").stat().st_mtime_ns for k in runs}
    assert stamps["study-wrn_10_1-eps8-FGSM_RS-seed0"] < stamps["study-wrn_10_1-eps8-ATL-seed0"]
    assert atl["history"][-1]["input_grad_evals"] > 0
    text = md.read_text()
    assert "<!-- cifar-study-wrn-10-1 -->" in text and "<!-- cifar-study -->" not in text
    assert "`benchmarks/cifar_study.py --model wrn-10-1`" in text and "eps warm-up over 0.5 epochs" in text
    assert "measured on the CPU while other work shared" in text and "idle GPU" not in text  # where it ran
    # --stop-after: no run starts once the time is up; the ones left are named
    capsys.readouterr()
    study.main([*common, "--out", str(tmp_path / "o2"), "--methods", "ATL", "--stop-after", "0"])
    assert not list((tmp_path / "o2" / "runs").glob("*.json"))
    assert "not started: study-wrn_10_1-eps8-ATL-seed0" in capsys.readouterr().err
    # --keep-going: a failing run is reported, the next one runs, the exit status says so
    real = study.train_and_evaluate

    def failing(mode, label, *a):
        if label == "N-FGSM":
            raise RuntimeError("planted failure")
        return real(mode, label, *a)

    monkeypatch.setattr(study, "train_and_evaluate", failing)
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        study.main([*common, "--out", str(tmp_path / "o3"), "--methods", "N-FGSM;FGSM-RS", "--keep-going"])
    assert exit_info.value.code == 1
    assert [p.stem for p in (tmp_path / "o3" / "runs").glob("*.json")] == ["study-wrn_10_1-eps8-FGSM_RS-seed0"]
    err = capsys.readouterr().err
    assert "planted failure" in err and "failed (see the tracebacks above): study-wrn_10_1-eps8-N_FGSM-seed0" in err
    with pytest.raises(RuntimeError, match="planted"):  # without --keep-going the failure stops the study
        study.main([*common, "--out", str(tmp_path / "o4"), "--methods", "N-FGSM"])


def test_git_commit_label_of_a_copy_without_git(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setenv("ADV_TRANSPORT_COMMIT", "abc1234")
    assert bench_common.git_commit() == "abc1234"
    monkeypatch.delenv("ADV_TRANSPORT_COMMIT")
    assert bench_common.git_commit() != "abc1234"


def test_cpu_model_choice_times_each_candidate_against_small_cnn(tmp_path):
    rows = load("cpu_model_choice").main(["--models", "wrn-10-1", "--rounds", "1", "--warmup", "0", "--batch", "8",
                                          "--out", str(tmp_path / "cmc")])
    assert [r["model"] for r in rows] == ["small-cnn", "wrn-10-1"]  # the unit is always measured
    assert rows[0]["vs_small_cnn"] == 1.0 and all(r["epoch_s"] > 0 for r in rows)
    assert "| wrn-10-1 |" in (tmp_path / "cmc.md").read_text()


def test_epoch_cost_interleaves_the_methods_and_reports_ratios_to_clean(tmp_path):
    rows = load("epoch_cost").main(["--datasets", "mnist", "--batches", "2", "--rounds", "1",
                                    "--out", str(tmp_path / "ec")])
    by = {r["method"]: r for r in rows}
    assert set(by) == {"clean", "clean+input-grad", "atl", "free-atl", "fgsm-rs", "pgd"}
    assert by["clean"]["vs_clean"] == 1.0 and by["pgd"]["vs_pgd"] == 1.0
    assert all(r["seconds_per_round"] > 0 for r in rows)
    assert abs(by["atl"]["vs_pgd"] - by["atl"]["seconds_per_round"] / by["pgd"]["seconds_per_round"]) < 1e-12
    assert by["pgd"]["vs_clean"] > by["atl"]["vs_clean"]  # 41 passes against ATL's 3
    # a run of the recipe's epochs (ATL 12, PGD-40 AT 10 on MNIST) against PGD AT's run
    assert (by["atl"]["epochs"], by["pgd"]["epochs"]) == (12, 10)
    assert abs(by["atl"]["run_vs_pgd"] - by["atl"]["vs_pgd"] * 12 / 10) < 1e-12 and by["pgd"]["run_vs_pgd"] == 1.0
    text = (tmp_path / "ec.md").read_text()
    assert "| mnist | free-atl |" in text and "| mnist | pgd (PGD-40 AT) |" in text


def test_epoch_cost_times_the_cifar_rows_on_the_model_asked_for(tmp_path, monkeypatch):
    ec = load("epoch_cost")
    built = []
    real = ec.build_training

    def spy(r, *a, **kw):
        built.append(r.model)
        return real(r, *a, **kw)

    monkeypatch.setattr(ec, "build_training", spy)
    ec.main(["--datasets", "cifar10", "--batches", "1", "--rounds", "1", "--cifar-model", "small-cnn-w2",
             "--out", str(tmp_path / "ec")])
    assert built == ["small-cnn-w2"] * len(ec.methods("cifar10"))
    # ATL's previous CIFAR default is timed beside today's: one chain, no weight average
    old = ec.method_recipe("atl (K 1, no EMA)", "cifar10")
    assert (old.copies, old.ema_decay, ec.method_recipe("atl", "cifar10").copies) == (1, 0.0, 2)
    assert "| cifar10 | atl (K 1, no EMA) |" in (tmp_path / "ec.md").read_text()
    assert json.loads((tmp_path / "ec.json").read_text())["meta"]["cifar_model"] == "small-cnn-w2"
    assert "CIFAR-10 model small-cnn-w2" in (tmp_path / "ec.md").read_text()


def test_epoch_cost_clean_with_input_grad_row_takes_the_input_gradient_of_a_clean_step():
    import adv_transport as at
    from adv_transport.recipes import recipe
    from adv_transport.training import build_training

    ec = load("epoch_cost")
    g = torch.Generator().manual_seed(0)
    data = at.IndexedDataset(torch.randint(0, 256, (16, 1, 28, 28), generator=g, dtype=torch.uint8),
                             torch.randint(0, 10, (16,), generator=g), "mnist")
    trainer, batches = build_training(recipe("clean", "mnist").replace(batch_size=16, epochs=1), data, None)
    method, got = ec.CleanWithInputGrad(), []
    method.receive_input_grad = got.append
    trainer.method = method
    x, y, idx = next(iter(batches))
    trainer._train_step(x, y, idx, 0.0)
    assert got[0].shape == x.shape and got[0].abs().sum() > 0
