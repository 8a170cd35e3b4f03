"""Distributed training on the CPU: 2 processes with gloo, torchrun's environment variables (tests/dist_worker.py).

The 2-rank runs are shared by the tests through module fixtures; every launch takes a few seconds (two Python
processes importing torch on this 2-core machine).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_worker import N, build

from adv_transport.checkpoint import atomic_save, rng_states
from adv_transport.distributed import RANK_FILE_FORMAT, Runtime, ShardedBank, ShardedBatches, rank_file, shard_size
from adv_transport.errors import BankMismatchError
from adv_transport.rng import ExampleRNG
from adv_transport.threat import ThreatModel

from conftest import synthetic_dataset

WORKER = str(Path(__file__).with_name("dist_worker.py"))
EPOCHS = 3  # 3 steps per epoch (48 examples, global batch 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: dict, world: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs, timeout=60) -> list[str]:
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            outs.append(p.communicate()[0])
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def run_two_ranks(tmp: Path, **cfg) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    finish(launch({"out": str(tmp), "epochs": EPOCHS, **cfg}))
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """The uninterrupted 2-rank run, checkpointing every step."""
    tmp = tmp_path_factory.mktemp("two")
    results = run_two_ranks(tmp, run_dir=str(tmp / "run"), checkpoint_every=1)
    return tmp / "run", results


def _strip(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


# ------------------------------------------------------------------------------------------------ keyed numbers


def test_keyed_numbers_depend_on_the_example_not_on_its_batch():
    rng = ExampleRNG(5)
    a = rng.uniform("langevin", 2, torch.tensor([3, 9, 11]), (2, 4, 4), draw=1)
    b = rng.uniform("langevin", 2, torch.tensor([11, 40, 3]), (2, 4, 4), draw=1)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], rng.uniform("langevin", 3, torch.tensor([3]), (2, 4, 4), draw=1)[0])  # epoch
    assert not torch.equal(a[0], rng.uniform("langevin", 2, torch.tensor([3]), (2, 4, 4), draw=2)[0])  # draw
    u = rng.uniform("x", 0, torch.arange(200), (500,))
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    z = rng.normal("x", 0, torch.arange(200), (500,))
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    k = rng.randint("copy", 0, torch.arange(3000), 3)
    assert set(k.tolist()) == {0, 1, 2} and abs(float((k == 0).float().mean()) - 1 / 3) < 0.04


# ------------------------------------------------------------------------------------------------ batches and bank


def test_sharded_batches_visit_only_the_shard_and_the_union_is_the_global_batch():
    data = synthetic_dataset(50)
    ranks = [ShardedBatches(data, 4, rank=r, world_size=3, seed=1) for r in range(3)]
    union = ShardedBatches(data, 4, world_size=3, serve=range(3), seed=1)
    assert len(union) == len(ranks[0]) == (50 // 3) // 4
    for epoch in (0, 1):
        got = [list(b.iterate(epoch)) for b in ranks]
        for r, batches in enumerate(got):
            idx = torch.cat([i for _, _, i in batches])
            assert bool((idx % 3 == r).all()) and idx.unique().numel() == idx.numel()
        for step, (_, _, idx) in enumerate(union.iterate(epoch)):
            assert torch.equal(idx, torch.cat([got[r][step][2] for r in range(3)]))
    assert not torch.equal(ranks[0].order(0), ranks[0].order(1))  # reshuffled every epoch


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_sync_free_bank_path_writes_what_the_checked_path_writes(dtype):
    threat = ThreatModel("linf", 0.1)
    shape = (2, 3, 3)
    checked = ShardedBank(20, shape, threat, rank=1, world_size=2, dtype=dtype, copies=2)
    reference = torch.zeros((10, 2) + shape, dtype=checked.storage.dtype)
    from adv_transport.bank import AdversarialBank

    plain = AdversarialBank(10, shape, threat, dtype=dtype, copies=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        idx = torch.tensor([1, 5, 7, 5, 19, 3])  # a duplicate: the last occurrence wins
        copy = torch.randint(2, (6,), generator=g)
        x = torch.rand((6,) + shape, generator=g)
        delta = (torch.rand((6,) + shape, generator=g) - 0.5) * 0.3
        checked.write(idx, copy, delta, x)
        plain.write(idx // 2, copy, delta, x)
        got, _ = checked.read(idx, x, copy)
        want, _ = plain.read(idx // 2, x, copy)
        assert torch.equal(got, want)
    reference.copy_(plain.storage)
    assert torch.equal(checked.storage, reference) and torch.equal(checked.initialized, plain.initialized)
    with pytest.raises(Exception, match="another rank's shard"):
        checked.read(torch.tensor([2]), torch.rand((1,) + shape))


# ------------------------------------------------------------------------------------------------ 2 processes


def test_two_ranks_equal_one_process_fed_the_same_global_batches(two_rank_run):
    _, ranks = two_rank_run
    one, batches = build(Runtime(keyed=True, seed=0), emulate=2)
    one.fit(batches, epochs=EPOCHS)
    for name, p in one.model.state_dict().items():  # parameters: up to float summation order
        for r in ranks:
            torch.testing.assert_close(r["model"][name], p, rtol=1e-5, atol=1e-6)
    whole = one.method.bank
    for rank, r in enumerate(ranks):  # the bank: exactly, row by row
        rows = torch.arange(rank, N, 2)
        assert torch.equal(r["storage"], whole.storage[rows]) and torch.equal(r["initialized"], whole.initialized[rows])
    assert ranks[0]["counts"] == one.counts == {"input_grad_evals": N * 2 * EPOCHS, "param_grad_evals": N * EPOCHS,
                                               "forward_evals": 0, "examples": N * EPOCHS}
    for a, b in zip(_strip(ranks[0]["history"]), _strip(one.history)):
        assert a["train_adv_acc"] == b["train_adv_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], 1e-5)


def test_each_rank_holds_only_its_shard(two_rank_run):
    run, ranks = two_rank_run
    for rank, r in enumerate(ranks):
        assert r["rows"] == shard_size(N, rank, 2) == N // 2
        assert r["storage"].shape[0] == N // 2 and bool(r["initialized"].all())
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ref = ckpt["method"]["bank"]
    assert "storage" not in ref and ref["shards"] == {"world_size": 2, "stamp": f"e{EPOCHS}-s0"}
    for rank in range(2):
        shard = torch.load(run / "ranks" / f"e{EPOCHS}-s0" / f"rank{rank}-of-2.pt", weights_only=True)
        assert torch.equal(shard["bank"]["storage"], ranks[rank]["storage"])
    # the newest and the one before: the last epoch's end, and its last step checkpoint before it (a step checkpoint
    # at an epoch's last step is left to the epoch-end one, so the 3-step epoch's step saves are s1 and s2)
    assert sorted(p.name for p in (run / "ranks").iterdir()) == [f"e{EPOCHS - 1}-s2", f"e{EPOCHS}-s0"]


def test_rank_zero_alone_logs_and_checkpoints(two_rank_run):
    run, ranks = two_rank_run
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, EPOCHS + 1))  # one writer
    assert lines[-1]["input_grad_evals"] == N * 2 * EPOCHS  # summed over the ranks
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt", "log.jsonl", "ranks"]
    assert _strip(ranks[0]["history"]) == _strip(ranks[1]["history"])  # rank 0's evaluation, broadcast
    assert ranks[0]["history"][-1]["probe"] == pytest.approx(
        float(sum(p.double().sum() for p in ranks[0]["model"].values())))


def test_kill_one_rank_and_resume_is_bit_identical(two_rank_run, tmp_path, monkeypatch):
    _, full = two_rank_run
    run = tmp_path / "run"
    procs = launch({"out": str(tmp_path), "epochs": EPOCHS, "run_dir": str(run), "checkpoint_every": 1,
                    "kill": [1, 5]})
    procs[1].communicate(timeout=60)
    assert procs[1].returncode == -signal.SIGKILL
    try:  # the job stops (torchrun would stop the other workers)
        procs[0].communicate(timeout=5)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].communicate()
    assert procs[0].returncode != 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 1)
    shutil.copytree(run, tmp_path / "mid")
    resumed = run_two_ranks(tmp_path, run_dir=str(run), checkpoint_every=1, resume=True)
    for a, b in zip(full, resumed):
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name])
        assert torch.equal(a["storage"], b["storage"]) and a["counts"] == b["counts"]
        assert _strip(a["history"]) == _strip(b["history"])
    # another world size mid-epoch is refused, with the reason, and nothing is changed
    before = (tmp_path / "mid" / "checkpoint.pt").read_bytes()
    rt = _one_rank(monkeypatch)
    try:
        trainer, _ = build(rt, tmp_path / "mid")
        with pytest.raises(BankMismatchError, match="mid-epoch .* by 2 ranks; this run has 1"):
            trainer.resume()
    finally:
        rt.close()
    assert (tmp_path / "mid" / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("sync_every, message", [
    (2, "non-finite training loss in epoch 0 between steps 0 and 1, on 1 of the 2 ranks"),
    (1, "non-finite training loss on 1 of the 2 ranks (this rank's: "),
])
def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_read(tmp_path, sync_every, message):
    # rank 1 alone sees a NaN loss at its 2nd step (the parameters stay finite); both ranks stop at the same read
    # (statistics read every 2 steps; or every step) with the error, rank 0 included (not left waiting in the next
    # collective until the timeout, nor failing there with a connection error)
    run = tmp_path / "run"
    procs = launch({"out": str(tmp_path), "epochs": EPOCHS, "run_dir": str(run), "sync_every": sync_every,
                    "nan_loss": [1, 2]})
    outs = [p.communicate(timeout=50)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode != 0
        assert "NonFiniteLossError: " + message in out, out[-3000:]
    assert not (run / "checkpoint.pt").exists()  # nothing written after the NaN


def _one_rank(monkeypatch) -> Runtime:
    """A distributed runtime of world size 1 in this process (gloo)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    return Runtime.from_env(device="cpu", seed=0)


def test_resume_with_another_world_size_reshards_the_bank(two_rank_run, tmp_path, monkeypatch):
    run, ranks = two_rank_run
    shutil.copytree(run, tmp_path / "run")
    rt = _one_rank(monkeypatch)
    try:
        trainer, batches = build(rt, tmp_path / "run")
        assert trainer.resume() and trainer.epoch == EPOCHS
        bank = trainer.method.bank
        assert bank.num_examples == N
        for rank, r in enumerate(ranks):
            assert torch.equal(bank.storage[rank::2], r["storage"])
        trainer.fit(batches, epochs=EPOCHS + 1)
        assert trainer.counts["examples"] == N * (EPOCHS + 1)
    finally:
        rt.close()


def test_torchrun_runs_the_command_line(mnist_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "adv_transport", "train", "--method", "atl", "--dataset", "mnist", "--epochs", "1", "--batch-size",
           "32", "--eval-n", "20", "--no-progress", "--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(out),
           "--bank-dtype", "int8", "--bank-path", str(tmp_path / "bank")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("training atl on mnist (200 examples) on 2 ranks") == 1  # rank 0 alone prints
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # the examples of the full global batches, times the 2 chain steps of ATL's MNIST recipe
    assert len(records) == 1 and records[0]["input_grad_evals"] == (200 // 32) * 32 * 2
    assert sorted(p.name for p in (out / "ranks" / "e1-s0").iterdir()) == ["rank0-of-2.pt", "rank1-of-2.pt"]
    shard = torch.load(out / "ranks" / "e1-s0" / "rank1-of-2.pt", weights_only=True)["bank"]
    assert shard["memmap"] == str(tmp_path / "bank.rank1-of-2") and "storage" not in shard  # recorded, not copied
    assert json.loads((tmp_path / "bank.rank1-of-2.json").read_text())["num_examples"] == 200


def test_fgsm_pgi_state_is_not_sharded_and_is_refused(monkeypatch):
    from adv_transport import Trainer
    from adv_transport.methods import FGSMPGI

    from conftest import TinyCNN

    rt = _one_rank(monkeypatch)
    try:
        model = TinyCNN()
        method = FGSMPGI(ThreatModel("linf", 0.1), N, (1, 8, 8))
        with pytest.raises(Exception, match="cannot run under torchrun"):
            Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), method, progress=False, runtime=rt)
    finally:
        rt.close()


# ------------------------------------------------------------------------------------------------ re-sharding


def _stored_bank(tmp: Path, world: int, memmap: bool, n: int = 600, shape=(3, 32, 32), stamp: str = "e2-s0"):
    """A bank of ``n`` random rows stored as the rank files of ``world`` ranks at checkpoint ``stamp`` (its shards
    memory-mapped ``.npy`` files when ``memmap``); returns the checkpoint's reference, the values and the flags."""
    g = torch.Generator().manual_seed(world)
    values = torch.randint(-127, 128, (n, 1) + shape, generator=g, dtype=torch.int8)
    flags = torch.rand(n, 1, generator=g) < 0.7
    for r in range(world):
        path = tmp / f"bank.rank{r}-of-{world}" if memmap else None
        bank = ShardedBank(
            n, shape, ThreatModel("linf", 0.1), rank=r, world_size=world, dtype="int8", init="uniform", path=path
        )
        bank.storage.copy_(values[r::world])
        bank.initialized.copy_(flags[r::world])
        state = {
            "format": RANK_FILE_FORMAT,
            "rank": r,
            "world_size": world,
            "stamp": stamp,
            "rng": rng_states(),
            "bank": bank.shard_state(),
        }
        atomic_save(state, rank_file(tmp / "run", stamp, r, world))
    return {"metadata": bank.metadata(), "shards": {"world_size": world, "stamp": stamp}}, values, flags


def _target(tmp: Path, rank: int, world: int, n: int = 600, shape=(3, 32, 32)) -> ShardedBank:
    bank = ShardedBank(n, shape, ThreatModel("linf", 0.1), rank=rank, world_size=world, dtype="int8", init="uniform")
    bank.rank_dir = tmp / "run"
    return bank


def _mapped_from(array) -> str | None:
    """The file an array's memory is mapped from (None: memory of this process)."""
    if isinstance(array, np.memmap):
        return str(array.filename)
    ptr = array.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= ptr < hi:
            return fields[5] if len(fields) > 5 and fields[5].startswith("/") else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("memmap", [False, True], ids=["rank-files", "bank-files"])
def test_resharding_reads_only_this_ranks_rows_one_mapped_shard_at_a_time(tmp_path, monkeypatch, memmap):
    import adv_transport.distributed as distributed

    ref, values, flags = _stored_bank(tmp_path, 2, memmap)
    target = _target(tmp_path, 1, 3)
    reads, take_rows = [], distributed.take_rows

    def counted(array, rows):
        reads.append((_mapped_from(array), len(array), rows.numel()))
        return take_rows(array, rows)

    monkeypatch.setattr(distributed, "take_rows", counted)
    target.check_state_dict(ref)  # opens and checks every stored shard, reads no rows
    assert reads == []
    tracemalloc.start()
    try:
        target.load_state_dict(ref)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(target.storage, values[1::3]) and torch.equal(target.initialized, flags[1::3])
    shard_rows, mine = shard_size(600, 0, 2), shard_size(600, 1, 3)
    # storage and flags of each old shard, in turn, read from the file itself (mapped), only the rows rank 1 of 3 owns
    files = (
        [str(tmp_path / f"bank.rank{q}-of-2{ext}") for q in (0, 1) for ext in ("", ".init.npy")]
        if memmap
        else [str(rank_file(tmp_path / "run", "e2-s0", q, 2)) for q in (0, 1) for _ in range(2)]
    )
    assert [f for f, _, _ in reads] == files
    assert all(size == shard_rows for _, size, _ in reads)
    assert sum(n for _, _, n in reads[::2]) == mine and max(n for _, _, n in reads) == shard_rows // 3
    if memmap:  # numpy allocations are traced: about one old shard's rows of this rank, never a whole shard
        shard_bytes = shard_rows * values[0].numel()
        assert peak < 0.6 * shard_bytes, (peak, shard_bytes)


@pytest.mark.parametrize("memmap", [False, True], ids=["rank-file", "bank-file"])
def test_a_truncated_stored_shard_is_refused_in_one_line_and_nothing_changes(tmp_path, memmap):
    from adv_transport.checkpoint import CheckpointError

    ref, _, _ = _stored_bank(tmp_path, 2, memmap)
    broken = tmp_path / "bank.rank1-of-2" if memmap else rank_file(tmp_path / "run", "e2-s0", 1, 2)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    target = _target(tmp_path, 0, 1)
    if memmap:
        error, words = BankMismatchError, "truncated or corrupt .*; expected the values of the memory-mapped bank"
    else:
        error, words = CheckpointError, "is truncated or corrupt, not an adv-transport rank file"
    for call in (target.check_state_dict, target.load_state_dict):
        with pytest.raises(error, match=words) as e:
            call(ref)
        assert str(broken) in str(e.value) and "\n" not in str(e.value)
    assert not target.storage.any() and not target.initialized.any()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_resume_refuses_a_truncated_rank_file_and_changes_nothing(two_rank_run, tmp_path, monkeypatch):
    from adv_transport.checkpoint import CheckpointError

    run, _ = two_rank_run
    shutil.copytree(run, tmp_path / "run")
    broken = tmp_path / "run" / "ranks" / f"e{EPOCHS}-s0" / "rank1-of-2.pt"
    broken.write_bytes(broken.read_bytes()[:-100])
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    rt = _one_rank(monkeypatch)
    try:
        trainer, _ = build(rt, tmp_path / "run")
        fresh = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        with pytest.raises(CheckpointError, match=f"{broken} is truncated or corrupt, not an adv-transport rank file"):
            trainer.resume()
        assert trainer.epoch == 0 and not trainer.method.bank.initialized.any()
        assert all(torch.equal(v, fresh[k]) for k, v in trainer.model.state_dict().items())
    finally:
        rt.close()
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files


def test_one_process_runs_resume_on_two_ranks_at_epoch_ends_only(tmp_path, monkeypatch):
    # a run started without torchrun (whole bank in checkpoint.pt) and one by torchrun with 1 rank (rank files),
    # each one epoch of 3 steps with a checkpoint every 2: checkpoint.pt at the epoch's end, checkpoint.prev.pt at
    # step 2 (mid-epoch)
    plain, batches = build(Runtime(seed=0), tmp_path / "plain", checkpoint_every=2)
    plain.fit(batches, epochs=1)
    rt = _one_rank(monkeypatch)
    try:
        single, batches = build(rt, tmp_path / "single", checkpoint_every=2)
        single.fit(batches, epochs=1)
    finally:
        rt.close()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k)
    runs = {}
    for name in ("plain", "single"):
        shutil.copytree(tmp_path / name, tmp_path / f"{name}-mid")
        mid = tmp_path / f"{name}-mid" / "checkpoint.pt"
        shutil.copyfile(mid.with_name("checkpoint.prev.pt"), mid)
        assert torch.load(mid, weights_only=True)["step"] == 2
        runs[name] = {p: p.read_bytes() for p in (tmp_path / f"{name}-mid").rglob("*") if p.is_file()}
    shutil.copytree(tmp_path / "plain", tmp_path / "probe")
    probes = [{"name": n, "run_dir": str(tmp_path / n)} for n in ("probe", "single", "plain-mid", "single-mid")]
    cfg = {"out": str(tmp_path), "epochs": 2, "run_dir": str(tmp_path / "plain"), "resume": True, "probes": probes}
    finish(launch(cfg))
    for rank in range(2):
        for name, whole in (("probe", plain.method.bank), ("single", single.method.bank)):
            seen = torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)
            assert seen["epoch"] == 1 and torch.equal(seen["storage"], whole.storage[rank::2])
            assert torch.equal(seen["initialized"], whole.initialized[rank::2])
        refused = torch.load(tmp_path / f"plain-mid-rank{rank}.pt", weights_only=True)["error"]
        assert "(e0-s2) was written mid-epoch by a single process without torchrun; this run has 2 ranks" in refused
        refused = torch.load(tmp_path / f"single-mid-rank{rank}.pt", weights_only=True)["error"]
        assert refused.startswith(
            "BankMismatchError: the checkpoint was written mid-epoch (e0-s2) by 1 ranks; this run has 2"
        )
        done = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)  # trained on: epoch 2 on two ranks
        assert done["counts"]["examples"] == N * 2 and done["rows"] == N // 2
    for name, files in runs.items():  # refused: nothing changed
        assert {p: p.read_bytes() for p in (tmp_path / f"{name}-mid").rglob("*") if p.is_file()} == files
    assert len((tmp_path / "plain" / "log.jsonl").read_text().splitlines()) == 2
    ranks = sorted(p.name for p in (tmp_path / "plain" / "ranks" / "e2-s0").iterdir())
    assert ranks == ["rank0-of-2.pt", "rank1-of-2.pt"]
