"""One rank of the distributed tests (tests/test_distributed.py), started with torchrun's environment variables.

``python tests/dist_worker.py '<json>'``: builds the tiny ATL run of :func:`build` on this rank, optionally dies with
SIGKILL at a given optimizer step (``kill: [rank, step]``), optionally sees a NaN loss on one rank at one step
(``nan_loss: [rank, step]``; ``sync_every``: the Runtime's), optionally resumes, trains and saves what it ended with.
``probes: [{"name", "run_dir"}]``: first resume each of those runs (without training) and save the bank it resumed
with, or the error it was refused with, to ``<out>/<name>-rank<r>.pt``.
"""

import json
import os
import signal
import sys

import torch

from adv_transport import ATL, AdversarialBank, LangevinSampler, RandomCropFlip, ThreatModel, Trainer
from adv_transport.distributed import Runtime, ShardedBatches
from adv_transport.errors import AdvTransportError

from conftest import TinyCNN, synthetic_dataset

N, GLOBAL_BATCH, SEED = 48, 16, 3


def build(runtime, run_dir=None, checkpoint_every=0, emulate=None):
    """The tiny run. ``emulate=N``: one process fed, at each step, the union of N ranks' batches, with a whole bank."""
    torch.manual_seed(0)
    data = synthetic_dataset(N)
    model = TinyCNN()
    threat = ThreatModel("linf", 0.1)
    if emulate:
        bank = AdversarialBank(N, data.shape, threat, dtype="int8", init="uniform")
        batches = ShardedBatches(data, GLOBAL_BATCH // emulate, world_size=emulate, serve=range(emulate), seed=SEED)
    else:
        bank = runtime.bank(N, data.shape, threat, dtype="int8", init="uniform")
        batches = runtime.batches(data, GLOBAL_BATCH, seed=SEED)
    method = ATL(bank, LangevinSampler(threat, eta=0.02, noise_scale=0.2, steps=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    probe = lambda m: {"probe": float(sum(p.detach().double().sum() for p in m.parameters()))}  # noqa: E731
    trainer = Trainer(model, opt, method, scheduler=sched, augment=RandomCropFlip(padding=1), run_dir=run_dir,
                      progress=False, checkpoint_every=checkpoint_every, eval_fn=probe, runtime=runtime)
    return trainer, batches


def result(trainer):
    bank = trainer.method.bank
    return {"model": trainer.model.state_dict(), "storage": bank.storage.clone(),
            "initialized": bank.initialized.clone(), "counts": dict(trainer.counts), "history": trainer.history,
            "rows": bank.num_examples}


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    rt = Runtime.from_env(device="cpu", seed=0, timeout_s=60, sync_every=cfg.get("sync_every", 1))
    for probe in cfg.get("probes", []):
        resumed, _ = build(rt, probe["run_dir"])
        try:
            assert resumed.resume()
            seen = {
                "epoch": resumed.epoch,
                "storage": resumed.method.bank.storage.clone(),
                "initialized": resumed.method.bank.initialized.clone(),
            }
        except AdvTransportError as e:
            seen = {"error": f"{type(e).__name__}: {e}"}
        torch.save(seen, os.path.join(cfg["out"], f"{probe['name']}-rank{rt.rank}.pt"))
    trainer, batches = build(rt, cfg.get("run_dir"), cfg.get("checkpoint_every", 0))
    kill = cfg.get("kill")
    if kill and rt.rank == kill[0]:
        original, calls = trainer.optimizer.step, [0]

        def dying_step(*a, **k):
            calls[0] += 1
            if calls[0] == kill[1]:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*a, **k)

        trainer.optimizer.step = dying_step
    nan = cfg.get("nan_loss")
    if nan and rt.rank == nan[0]:  # a NaN loss on one rank at one step, the parameters left finite (no gradient)
        plain, calls = trainer.method.regularizer, [0]

        def nan_once(logits, y):
            calls[0] += 1
            return torch.tensor(float("nan")) if calls[0] == nan[1] else plain(logits, y)

        trainer.method.regularizer = nan_once
    if cfg.get("resume"):
        assert trainer.resume()
    trainer.fit(batches, epochs=cfg["epochs"])
    torch.save(result(trainer), os.path.join(cfg["out"], f"rank{rt.rank}.pt"))
    rt.close()
