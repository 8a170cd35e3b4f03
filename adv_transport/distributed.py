"""ATL on many GPUs and machines: torch.distributed (launched by torchrun), a sharded bank, and a fast GPU path.

One process per device. :meth:`Runtime.from_env` joins the process group torchrun describes (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; gloo on CPU, nccl on GPU); without torchrun it is a
single process and nothing is initialised. A :class:`~adv_transport.trainer.Trainer` given ``runtime=`` then:

- trains through ``DistributedDataParallel`` (the training pass) while the inner step (Langevin, PGD, ...) runs on
  the bare module: DDP's reducer cannot take input gradients;
- visits, on rank r of N, only the examples of its shard, ``i % N == r`` (:class:`ShardedBatches`: the shard
  reshuffled every epoch from (seed, epoch, r, N); per-rank batch = global batch / N, so the number of steps per epoch
  is the same for every N), and holds only that shard's bank rows (:class:`ShardedBank`, row ``i // N``): no bank
  data crosses the network;
- draws the Langevin noise, the augmentation, the bank's starts and copy choices per example from (seed, epoch,
  index) (:mod:`adv_transport.rng`), so the results do not depend on which rank visits an example or with whom;
- sums the gradient-evaluation counts and the epoch's loss and accuracy over the ranks; rank 0 alone logs, evaluates
  (and broadcasts what it measured), shows progress and writes ``checkpoint.pt``; every rank writes its bank shard and
  random states to ``<run>/ranks/<stamp>/rank<r>-of-<N>.pt`` (atomically, before rank 0 commits the checkpoint that
  refers to them, so a kill at any moment leaves a consistent pair);
- keeps per-step statistics on the device and reads them every ``sync_every`` steps (no host synchronisation in
  between), and runs the model with mixed precision, channels-last and ``torch.compile`` when asked
  (:mod:`adv_transport.accel`).

World-size independence: a run on N ranks with per-rank batch B/N equals (bank exactly, parameters up to float
summation order) a 1-process run fed the same global batches, i.e. ``ShardedBatches(..., serve=range(N))``, whose
batch at each step is the union of the N ranks' batches. It holds for models whose output for an example does not
depend on the rest of its batch: no batch-norm in train mode (or SyncBatchNorm, ``sync_bn=True``, GPU only), no
dropout (dropout draws from each process's own generator). Batch-norm without SyncBatchNorm normalises with each
rank's own batch; its running statistics are rank 0's (DDP broadcasts buffers at every training forward).
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from . import accel
from .bank import DTYPES, AdversarialBank, _last_occurrence_rows, check_indices
from .bankfile import read_bank_files, take_rows
from .checkpoint import atomic_save, rng_states, safe_load, set_rng_states
from .data import IndexedBatches
from .errors import BankMismatchError, ConfigError, NonFiniteLossError
from .rng import ExampleRNG, hash_words
from .threat import check_unit_range

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BANK_DEVICES = ("cpu", "cuda")
RANKS_DIR = "ranks"
RANK_FILE_FORMAT = "adv_transport.rank/1"
RANK_STREAM = 7919  # hash word of each rank's own torch generator stream (seeded from (seed, RANK_STREAM, rank, ...))


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or with its environment variables set by hand)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_rank(rank: int, world_size: int) -> None:
    """Raise :class:`ConfigError` unless ``0 <= rank < world_size``."""
    if not (0 <= int(rank) < int(world_size)):
        raise ConfigError(f"rank {rank} is not accepted; accepted: an integer in [0, {world_size})")


def _foreign_shard(rank: int, world_size: int) -> ConfigError:
    return ConfigError(f"rank {rank} of {world_size} was handed indices of another rank's shard; accepted: the "
                       f"indices i with i % {world_size} == {rank}")


def shard_size(n: int, rank: int, world_size: int) -> int:
    """How many of ``n`` examples rank ``rank`` of ``world_size`` owns (indices ``rank, rank + N, ...``)."""
    return len(range(rank, n, world_size))


def bank_bytes_per_rank(n: int, d: int, world_size: int, dtype: str = "int8", copies: int = 1) -> int:
    """Bytes of the largest rank's bank shard (values and initialisation flags), for the README's table."""
    size = DTYPES[dtype].itemsize
    rows = shard_size(n, 0, world_size)
    return rows * copies * (d * size + 1)


# ---------------------------------------------------------------------------------------------------- batches


class ShardedBatches(IndexedBatches):
    """Mini-batches of one rank's fixed shard of a dataset: rank r of N owns the examples ``i % N == r`` and visits
    them in an order reshuffled every epoch from (seed, epoch, r, N); ``len(self) = (n // N) // batch_size`` steps
    per epoch on every rank (the last incomplete batch is dropped), equal for every rank.

    ``serve``: the ranks whose batches this process yields, concatenated at each step (default: its own rank). A
    single process with ``serve=range(N)`` is fed, at each step, the union of the N ranks' batches: the 1-process run
    a distributed run equals (module docstring).
    """

    def __init__(self, dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 serve=None, device: str | torch.device = "cpu", num_workers: int | None = None):
        check_rank(rank, world_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.serve = [self.rank] if serve is None else [int(r) for r in serve]
        self.per_rank = int(batch_size)
        super().__init__(dataset, self.per_rank * len(self.serve), shuffle=True, seed=seed, drop_last=True,
                         device=device, num_workers=num_workers)
        if len(self) == 0:
            raise ConfigError(
                f"{len(dataset)} examples on {world_size} ranks leave {len(dataset) // world_size} per rank, fewer "
                f"than one batch of {self.per_rank}: use a smaller batch or fewer ranks"
            )

    def __len__(self) -> int:
        return (len(self.dataset) // self.world_size) // self.per_rank

    def shard(self, rank: int) -> torch.Tensor:
        return torch.arange(rank, len(self.dataset), self.world_size)

    def shard_order(self, epoch: int, rank: int) -> torch.Tensor:
        shard = self.shard(rank)
        g = torch.Generator().manual_seed(hash_words(self.seed, int(epoch), rank, self.world_size))
        return shard[torch.randperm(len(shard), generator=g)]

    def order(self, epoch: int) -> torch.Tensor:
        steps, b = len(self), self.per_rank
        parts = [self.shard_order(epoch, r)[: steps * b].view(steps, b) for r in self.serve]
        return torch.cat(parts, 1).reshape(-1)


# ---------------------------------------------------------------------------------------------------- the bank


def rank_file(run_dir: str | os.PathLike, stamp: str, rank: int, world_size: int) -> Path:
    return Path(run_dir) / RANKS_DIR / stamp / f"rank{rank}-of-{world_size}.pt"


def stamp_of(epoch: int, step: int) -> str:
    """The name of the rank-file folder of the checkpoint at (epoch, step): ``e<epoch>-s<step>``."""
    return f"e{int(epoch)}-s{int(step)}"


def at_epoch_end(stamp: str) -> bool:
    """Whether the checkpoint ``stamp`` was written at the end of an epoch (step 0 of the next), where ranks
    re-shard."""
    return stamp.endswith("-s0")


def stored_world_size(run_dir, stamp: str) -> int | None:
    """The world size whose rank files hold checkpoint ``stamp`` (None when there are none)."""
    folder = Path(run_dir) / RANKS_DIR / stamp
    sizes = {int(p.stem.split("-of-")[1]) for p in folder.glob("rank*-of-*.pt")} if folder.is_dir() else set()
    complete = [m for m in sizes if all(rank_file(run_dir, stamp, r, m).is_file() for r in range(m))]
    return max(complete) if complete else None


def read_rank_file(path: Path, mmap: bool = False) -> dict:
    """The rank file ``path`` (``mmap``: its tensors mapped from the file, read when used); a missing, truncated or
    corrupt file raises :class:`~adv_transport.checkpoint.CheckpointError` naming it."""
    what = "an adv-transport rank file (a bank shard and random states, written with the checkpoint)"
    state = safe_load(path, what, mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != RANK_FILE_FORMAT or not isinstance(state.get("rng"), dict):
        raise BankMismatchError(f"{path} is not {what}")
    return state


class ShardedBank(AdversarialBank):
    """The rows of one rank's shard of an :class:`~adv_transport.bank.AdversarialBank` of ``num_examples`` rows:
    rank r of N stores example ``i`` (``i % N == r``) in row ``i // N``, so it holds ``ceil((n - r) / N)`` rows.
    Addressed, like every bank, by dataset index.

    Reads and writes of l-inf banks (every dtype) never synchronise with the host: no range checks (the sampler
    serves this shard only), a uniform start drawn for the whole batch and used where a row is fresh, duplicate
    indices resolved on the device (the last occurrence is written, as by the checked path), the feasibility fix of
    int8/float16 values run a fixed number of rounds. l2 writes use the exact projection of
    :class:`AdversarialBank` (with its host synchronisations). With ``pin_memory`` a CPU bank lives in pinned memory:
    the rows of a batch are gathered into a pinned buffer and copied to the GPU without blocking, and written back
    after an asynchronous copy (applied before any later read of the same rows); the encoding to int8/float16 happens
    on the GPU, so only the stored bytes cross the bus.

    In a distributed run (:class:`Runtime` sets :attr:`rank_dir`), :meth:`state_dict` is a reference to the rank files
    the runtime writes, and :meth:`load_state_dict` reads them, re-sharding when they were written by another number
    of ranks (at an epoch boundary) or when handed a whole bank.
    """

    def __init__(self, num_examples: int, shape, threat, *, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False, **kwargs):
        check_rank(rank, world_size)
        self.total_examples = int(num_examples)
        self.rank, self.world_size = int(rank), int(world_size)
        super().__init__(shard_size(self.total_examples, self.rank, self.world_size), shape, threat, **kwargs)
        if pin_memory and self.storage.device.type == "cpu" and self.path is None and torch.cuda.is_available():
            self.storage = self.storage.pin_memory()
            self.initialized = self.initialized.pin_memory()
            if self.row_scale is not None:
                self.row_scale = self.row_scale.pin_memory()
        self.rank_dir: Path | None = None  # set by Runtime.attach: checkpoints refer to rank files
        self.stamp: str | None = None
        self._writes: list = []  # asynchronous writes of a CPU bank fed from a GPU
        self._scratch = None

    # ------------------------------------------------------------------ addressing
    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["num_examples"] = self.total_examples
        return meta

    def rows_of(self, idx: torch.Tensor) -> torch.Tensor:
        """Local rows of dataset indices (no checks)."""
        idx = idx.long()
        return idx if self.world_size == 1 else torch.div(idx, self.world_size, rounding_mode="floor")

    def _check_index(self, idx: torch.Tensor) -> torch.Tensor:
        idx = check_indices(idx, self.total_examples)
        if self.world_size > 1 and idx.numel() and bool((idx % self.world_size != self.rank).any()):
            raise _foreign_shard(self.rank, self.world_size)
        return self.rows_of(idx).to(self.storage.device)

    # ------------------------------------------------------------------ sync-free read / write
    def _gather(self, table: torch.Tensor, key: torch.Tensor, device: torch.device) -> torch.Tensor:
        flat = table.view(-1, *table.shape[2:])
        if table.device.type == "cpu" and device.type == "cuda":
            out = torch.empty((key.numel(),) + tuple(flat.shape[1:]), dtype=table.dtype, pin_memory=True)
            torch.index_select(flat, 0, key, out=out)
            return out.to(device, non_blocking=True)
        return flat.index_select(0, key.to(table.device)).to(device, non_blocking=True)

    def read(self, idx, x, copy=None, start=None):
        self._flush(idx)
        if self.world_size > 1 and idx.device.type == "cpu" and idx.numel():  # cheap on the CPU: no GPU sync
            if bool((idx % self.world_size != self.rank).any()):
                raise _foreign_shard(self.rank, self.world_size)
        home = self.storage.device
        rows = self.rows_of(idx.to(home, non_blocking=True))
        if copy is None:
            copy = (torch.zeros(idx.numel(), dtype=torch.long, device=home) if self.copies == 1
                    else self.sample_copies(idx.numel()))
        copy = copy.to(home, non_blocking=True).long()
        key = rows * self.copies + copy
        stored = self._gather(self.storage, key, x.device)
        scale = None if self.row_scale is None else self._gather(self.row_scale.unsqueeze(-1), key, x.device).view(-1)
        delta = self._decode(stored, scale).to(dtype=x.dtype)
        if self.init == "uniform":
            fresh = ~self._gather(self.initialized.unsqueeze(-1), key, x.device).view(-1, *([1] * (x.dim() - 1)))
            if start is None:
                start = self.threat.uniform(x)  # on x's device, from its generator
            delta = torch.where(fresh, start.to(delta.dtype), delta)
        return delta, copy

    def _encode_feasible(self, d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`AdversarialBank._quantise_feasible` for l-inf without the early exits (same result)."""
        stored = self._encode(d)
        if self.dtype == "float32":
            return stored
        for _ in range(4):
            deq = self._decode(stored)
            bad = ((deq < -x) | (deq > 1.0 - x) | (deq.abs() > self.threat.eps)) & (deq.abs() > 0)
            stored = self._toward_zero(stored, bad)
        return stored

    @torch.no_grad()
    def write(self, idx, copy, delta, x):
        if self.threat.norm != "linf":
            self._flush(None)
            return super().write(idx, copy, delta, x)
        if delta.shape != x.shape or tuple(x.shape[1:]) != self.shape:
            raise ConfigError(f"delta {tuple(delta.shape)} / inputs {tuple(x.shape)} do not fit bank rows {self.shape}")
        dev = x.device
        x32, d32 = x.detach().float(), delta.detach().float()
        d32 = (x32 + self.threat.project(d32)).clamp_(0.0, 1.0).sub_(x32)
        stored = self._encode_feasible(d32, x32)
        rows = self.rows_of(idx.to(dev, non_blocking=True))
        copy_dev = copy.to(dev, non_blocking=True).long()
        key = rows * self.copies + copy_dev
        if key.numel() > 1:  # duplicates: every occurrence writes the last one's value (deterministic)
            n_keys = self.num_examples * self.copies
            if self._scratch is None or self._scratch.device != dev or self._scratch.numel() != n_keys:
                self._scratch = torch.empty(n_keys, dtype=torch.long, device=dev)
            (stored,) = _last_occurrence_rows(key, n_keys, stored, slots=self._scratch)
        home = self.storage.device
        if home == dev:
            self.storage.view(-1, *self.shape).index_copy_(0, key, stored)
            self.initialized.view(-1).index_fill_(0, key, True)
            return
        # a CPU bank fed from the GPU: copy without blocking, apply before the rows are read again
        buf = torch.empty(stored.shape, dtype=stored.dtype, pin_memory=True)
        buf.copy_(stored, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        cpu_key = self.rows_of(idx.cpu()) * self.copies + copy.cpu().long()
        self._writes.append((cpu_key, buf, event))
        if len(self._writes) > 2:
            self._apply(self._writes.pop(0))

    def _apply(self, pending) -> None:
        key, buf, event = pending
        event.synchronize()
        self.storage.view(-1, *self.shape).index_copy_(0, key, buf)
        self.initialized.view(-1).index_fill_(0, key, True)

    def _flush(self, idx: torch.Tensor | None) -> None:
        """Apply the pending writes (all of them, or those up to the last one touching ``idx``)."""
        if not self._writes:
            return
        if idx is None:
            last = len(self._writes)
        else:
            key_rows = self.rows_of(idx.cpu())
            last = 0
            for i, (key, _, _) in enumerate(self._writes):
                if bool(torch.isin(torch.div(key, self.copies, rounding_mode="floor"), key_rows).any()):
                    last = i + 1
        for _ in range(last):
            self._apply(self._writes.pop(0))

    def reset(self) -> None:
        self._flush(None)
        super().reset()

    # ------------------------------------------------------------------ checkpoints
    def shard_state(self) -> dict[str, Any]:
        """This shard's data (what a rank file holds)."""
        self._flush(None)
        state = AdversarialBank.state_dict(self)
        state["shard"] = self._shard_key()
        return state

    def state_dict(self) -> dict[str, Any]:
        if self.rank_dir is None:
            self._flush(None)
            if self.world_size == 1:
                return super().state_dict()
            raise ConfigError("a sharded bank is saved through its Runtime (rank files); attach it to a Trainer")
        return {"metadata": self.metadata(), "shards": {"world_size": self.world_size, "stamp": self.stamp}}

    # ------------------------------------------------------------------ re-sharding
    def _sources(self, state: dict[str, Any]) -> list[tuple[str, Any, int, int]]:
        """The stored banks this shard's rows come from, when they are not this shard's own rank file: ``(name,
        open, q, m)`` for each stored shard q of m (a whole bank: q = 0 of m = 1). Nothing is read here; ``open()``
        maps the shard's files (:meth:`_open_source`)."""
        if "shards" not in state:
            return [(str(state.get("memmap") or "the checkpoint's bank"), lambda: state, 0, 1)]
        ref = state["shards"]
        m, stamp = int(ref["world_size"]), str(ref["stamp"])
        if self.rank_dir is None:
            raise BankMismatchError("the stored bank is sharded over rank files; resume it through a Runtime")
        if not at_epoch_end(stamp):
            raise BankMismatchError(
                f"the checkpoint was written mid-epoch ({stamp}) by {m} ranks; this run has {self.world_size}. Resume "
                f"it with {m} ranks, or from a checkpoint written at the end of an epoch (ranks re-shard there)"
            )
        paths = [rank_file(self.rank_dir, stamp, q, m) for q in range(m)]
        return [(str(p), lambda p=p, q=q: _stored_shard(p, q, m), q, m) for q, p in enumerate(paths)]

    def _open_source(self, name: str, open_bank, q: int, m: int) -> dict[str, Any]:
        """The arrays of stored shard q of m, mapped from its files rather than read, after checking that they hold
        that shard's rows (:class:`BankMismatchError` naming the file otherwise)."""
        bank = open_bank()
        if not isinstance(bank, dict):
            raise BankMismatchError(f"{name} holds no adversarial bank shard")
        if "memmap" in bank:  # a memory-mapped shard: its .npy files, mapped read-only
            name = str(bank["memmap"])
            bank = {**bank, **read_bank_files(bank["memmap"])}
        rows = shard_size(self.total_examples, q, m)
        want = {"storage": ((rows, self.copies) + self.shape, self.dtype), "initialized": ((rows, self.copies), "bool")}
        if self.row_scale is not None and bank.get("row_scale") is not None:
            want["row_scale"] = ((rows, self.copies), "float32")
        for key, (shape, dtype) in want.items():
            got = _array_kind(bank.get(key))
            if got != (shape, dtype):
                held = "missing" if got is None else f"{got[1]} {got[0]}"
                raise BankMismatchError(
                    f"{name}: the stored bank's {key} is {held}, expected {dtype} {shape} (shard {q} of {m} ranks of "
                    f"a bank of {self.total_examples} examples); the file was left as it is"
                )
        if bank.get("generator") is not None:
            try:
                torch.Generator().set_state(bank["generator"])
            except (TypeError, RuntimeError) as e:
                raise BankMismatchError(f"{name}: the stored bank's generator state is not valid ({e})") from None
        return bank

    def rank_rows(self, q: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in a stored shard q of m, this shard's rows) of the examples this rank owns."""
        g = torch.arange(q, self.total_examples, m)
        mine = g % self.world_size == self.rank
        return mine.nonzero().view(-1), self.rows_of(g[mine])

    def _reshard(self, state: dict[str, Any]) -> None:
        """Copy this shard's rows from the stored banks ``state`` refers to (checked by :meth:`check_state_dict`),
        one stored shard at a time and only the rows this rank owns, straight into this bank: the memory needed beyond
        the bank is that of one stored shard's rows of this rank."""
        gen = None
        for source in self._sources(state):
            bank = self._open_source(*source)
            src, dst = self.rank_rows(source[2], source[3])
            dst = dst.to(self.storage.device)
            rows = take_rows(bank["storage"], src)
            self.storage.index_copy_(0, dst, rows.to(self.storage.device, self.storage.dtype))
            del rows
            self.initialized.index_copy_(0, dst, take_rows(bank["initialized"], src).to(self.initialized.device))
            if self.row_scale is not None:
                if bank.get("row_scale") is not None:
                    self.row_scale.index_copy_(0, dst, take_rows(bank["row_scale"], src).to(self.row_scale.device))
                else:  # saved without per-example scales: the grid eps/127
                    self.row_scale.index_fill_(0, dst, self._scale)
            gen = gen if gen is not None else bank.get("generator")
            del bank
        if gen is not None:
            self.generator.set_state(gen)

    def _own_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This shard's own rank file (written by as many ranks as this run has), mapped rather than read."""
        if self.rank_dir is None:
            raise BankMismatchError("the stored bank is sharded over rank files; resume it through a Runtime")
        stamp = str(state["shards"]["stamp"])
        own = _stored_shard(rank_file(self.rank_dir, stamp, self.rank, self.world_size), self.rank, self.world_size)
        if not isinstance(own, dict):
            raise BankMismatchError(f"{rank_file(self.rank_dir, stamp, self.rank, self.world_size)} holds no bank")
        # (a memory-mapped shard: a record of the file this bank has open)
        return {**own, "metadata": state["metadata"], "shard": self._shard_key()}

    def _own_shard(self, state: dict[str, Any]) -> bool:
        return "shards" in state and int(state["shards"]["world_size"]) == self.world_size

    def _shard_key(self) -> dict[str, int]:
        return {"rank": self.rank, "world_size": self.world_size}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("shard") == self._shard_key():  # already this shard's rows
            return AdversarialBank.check_state_dict(self, state)
        if "shards" not in state and self.world_size == 1:  # a whole bank: this shard is the whole bank
            return super().check_state_dict(state)
        # the settings here; then the files: this shard's own rank file, or those it is re-sharded from
        gen = state.get("generator")
        probe = {
            "metadata": dict(state.get("metadata", {})),
            "storage": self.storage,
            "initialized": self.initialized,
            "generator": self.generator.get_state() if gen is None else gen,
        }
        AdversarialBank.check_state_dict(self, probe)
        if "shards" in state:
            m, stamp = int(state["shards"]["world_size"]), str(state["shards"]["stamp"])
            if self.rank_dir is None:
                return
            missing = [r for r in range(m) if not rank_file(self.rank_dir, stamp, r, m).is_file()]
            if missing:
                raise BankMismatchError(
                    f"the checkpoint's bank shards {stamp} of {m} ranks are missing rank file(s) {missing} under "
                    f"{Path(self.rank_dir) / RANKS_DIR}"
                )
            if m == self.world_size:
                return AdversarialBank.check_state_dict(self, self._own_state(state))
        for source in self._sources(state):
            self._open_source(*source)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._flush(None)
        if state.get("shard") == self._shard_key() or ("shards" not in state and self.world_size == 1):
            local = dict(state)
        elif self._own_shard(state):
            local = self._own_state(state)
        else:  # another world size (or a whole bank): this rank's rows, one stored shard at a time
            self.check_state_dict(state)  # every file checked before anything changes
            return self._reshard(state)
        if local.get("generator") is None:
            local["generator"] = self.generator.get_state()
        super().load_state_dict(local)


def _stored_shard(path: Path, q: int, m: int):
    """The bank part of rank file ``path`` (shard q of m), its tensors mapped from the file rather than read."""
    state = read_rank_file(path, mmap=True)
    if state.get("rank", q) != q or state.get("world_size", m) != m:
        raise BankMismatchError(
            f"{path} holds rank {state.get('rank')} of {state.get('world_size')}, expected rank {q} of {m}"
        )
    return state.get("bank")


def _array_kind(value) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype name) of a stored array (a tensor or a numpy array), None for anything else."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), str(value.dtype).removeprefix("torch.")
    if isinstance(value, np.ndarray):
        return tuple(value.shape), value.dtype.name
    return None


# ---------------------------------------------------------------------------------------------------- runtime


class Runtime:
    """How a run's training steps run on many processes and GPUs (hand it to ``Trainer(runtime=...)``).

    It holds the process group, DDP, this rank's sharded batches and bank, the keyed random numbers, mixed precision
    and the statistics kept on the device.

    Args:
        rank, world_size, local_rank: this process's place (see :meth:`from_env`).
        device: the device this process computes on.
        seed: the run's seed (per-example random numbers, shard orders).
        keyed: draw noise, augmentation and bank starts per example (default: on in distributed runs).
        amp: ``off``, ``bf16`` or ``fp16``; channels_last, compile: see :mod:`adv_transport.accel`.
        sync_bn: convert batch-norm layers to SyncBatchNorm (in :meth:`prepare_model`; GPU only).
        sync_every: read the statistics from the device (and check the loss for non-finite values) every this
            many steps; 1 = every step, as without a runtime.
        bank_device: ``cpu`` (pinned when computing on a GPU) or ``cuda``.
        bank_path: memory-map the bank to this file (one per rank), see :meth:`bank`.
        distributed: a process group is initialised (set by :meth:`from_env`).
    """

    def __init__(self, *, rank: int = 0, world_size: int = 1, local_rank: int = 0, device="cpu", seed: int = 0,
                 keyed: bool | None = None, amp: str = "off", channels_last: bool = False, compile: bool = False,
                 compile_backend: str = "inductor", sync_bn: bool = False, sync_every: int = 1,
                 bank_device: str | None = None, bank_path: str | None = None, distributed: bool = False):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.distributed = bool(distributed)
        self.keyed = self.distributed if keyed is None else bool(keyed)
        self.rng = ExampleRNG(seed) if self.keyed else None
        self.amp = accel.check_amp(amp)
        self.channels_last, self.compile, self.compile_backend = bool(channels_last), bool(compile), compile_backend
        self.sync_bn = bool(sync_bn)
        if int(sync_every) < 1:
            raise ConfigError(f"sync_every must be an integer >= 1, got {sync_every!r}")
        self.sync_every = int(sync_every)
        self.bank_device = bank_device or "cpu"
        if self.bank_device not in BANK_DEVICES:
            raise ConfigError(f"--bank-device {bank_device!r} is not accepted; accepted: {', '.join(BANK_DEVICES)}")
        if self.bank_device == "cuda" and self.device.type != "cuda":
            raise ConfigError("--bank-device cuda needs training on a GPU (--device cuda)")
        if self.sync_bn and self.device.type != "cuda":
            raise ConfigError("--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA devices only)")
        self.scaler = accel.grad_scaler(self.amp, self.device)
        self.bank_path = bank_path
        self.data_checked = False
        self.views = None
        self.trainer = None
        self._base: dict[str, float] = {}
        self._stats_id = None
        self._stamps: list[str] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(cls, device: str = "auto", timeout_s: float | None = None, **kwargs) -> Runtime:
        """The runtime of this process: under torchrun, join the process group (gloo on CPU, nccl on GPU, one
        device per process: ``cuda:LOCAL_RANK``); otherwise a single process on ``device``."""
        if not launched_by_torchrun():
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            return cls(device=device, **kwargs)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("--device cuda: no GPU is visible to this process")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            timeout = None if timeout_s is None else datetime.timedelta(seconds=float(timeout_s))
            dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timeout)
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, distributed=True, **kwargs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """SyncBatchNorm (if asked), channels-last, on this process's device; before the optimizer is built."""
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batches(self, dataset, batch_size: int, seed: int | None = None, num_workers: int | None = None):
        """This rank's :class:`ShardedBatches` for a *global* batch of ``batch_size`` (per rank: batch / N).
        The data is checked for the range [0, 1] here, once, instead of at every step."""
        if not self.distributed:  # one process: the usual order, the data checked once
            self._check_data(dataset)
            return IndexedBatches(dataset, batch_size, seed=self.seed if seed is None else seed, device=self.device,
                                  num_workers=num_workers)
        if batch_size % self.world_size:
            raise ConfigError(
                f"the batch size {batch_size} is the global batch: it must be a multiple of the {self.world_size} "
                "ranks (each rank takes batch / ranks)"
            )
        self._check_data(dataset)
        return ShardedBatches(dataset, batch_size // self.world_size, rank=self.rank, world_size=self.world_size,
                              seed=self.seed if seed is None else seed, device=self.device, num_workers=num_workers)

    def _check_data(self, dataset) -> None:
        images = getattr(dataset, "images", None)
        if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
            check_unit_range(images, "training images")
        self.data_checked = True  # uint8 images and image folders (ToTensor) lie in [0, 1] by construction

    def bank_file(self) -> str | None:
        """This rank's memory-mapped bank file (None without ``bank_path``)."""
        if self.bank_path is None:
            return None
        return str(self.bank_path) if self.world_size == 1 else f"{self.bank_path}.rank{self.rank}-of-{self.world_size}"

    def bank(self, num_examples: int, shape, threat, *, path=None, **kwargs) -> ShardedBank:
        """This rank's shard of a bank of ``num_examples`` rows (on ``bank_device``; pinned CPU memory when
        computing on a GPU). ``path`` (default: the runtime's ``bank_path``): memory-mapped, one file per rank
        (``<path>.rank<r>-of-<N>`` when N > 1)."""
        kwargs.pop("device", None)
        device = self.device if self.bank_device == "cuda" else "cpu"
        path = self.bank_file() if path is None else path
        return ShardedBank(num_examples, shape, threat, rank=self.rank, world_size=self.world_size, device=device,
                           path=path, pin_memory=self.device.type == "cuda", **kwargs)

    def attach(self, trainer) -> None:
        """Called by the Trainer: wrap the model (DDP for the training pass), route checkpoints and evaluations."""
        self.trainer = trainer
        model = trainer.model
        inner, outer = accel.forwards(model, self.amp, self.channels_last, self.compile, self.compile_backend)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel
            sync = ({"forward_sync_buffers": True} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                    else {"broadcast_buffers": True})  # rank 0's batch-norm statistics at every training forward
            outer = ddp(outer, device_ids=ids, **sync)
        self.views = (inner, outer)
        bank = getattr(trainer.method, "bank", None)
        if self.distributed:
            if bank is None and hasattr(trainer.method, "delta"):
                raise ConfigError(f"{trainer.method.name} keeps per-example state outside a bank, which is not "
                                  "sharded: it cannot run under torchrun yet (atl, free-atl and atta can)")
            if isinstance(bank, AdversarialBank) and not isinstance(bank, ShardedBank):
                raise ConfigError("a distributed run needs the bank of its Runtime (runtime.bank(...)): a whole bank "
                                  "on every rank would hold N copies and be written by every rank")
            if isinstance(bank, ShardedBank) and trainer.run_dir is not None:
                bank.rank_dir = trainer.run_dir
            trainer.progress = trainer.progress and self.is_main
            trainer.eval_fn = self._main_only(trainer.eval_fn)
            trainer.val_fn = self._main_only(trainer.val_fn)
            torch.manual_seed(hash_words(self.seed, RANK_STREAM, self.rank))  # each rank its own global stream
        self._rebase(trainer)

    def _main_only(self, fn):
        """Run ``fn(model)`` on rank 0 and hand its result to every rank."""
        if fn is None or not self.distributed:
            return fn

        def wrapped(model):
            box = [fn(model) if self.is_main else None]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        return wrapped

    # ------------------------------------------------------------------ per step
    def visit(self, epoch: int, idx: torch.Tensor, round: int = 0):
        return None if self.rng is None else self.rng.visit(epoch, idx, round)

    def augment_params(self, augment, x, visit):
        return augment.sample(x) if visit is None else visit.crop_flip(augment, x)

    def step_done(self, trainer) -> bool:
        """After every step: every ``sync_every`` steps read the statistics (True) and stop on a non-finite loss."""
        if self.sync_every == 1:
            return True
        if trainer.step % self.sync_every:
            return False
        stats = trainer._epoch_stats
        for k in ("loss_sum", "correct"):
            if isinstance(stats[k], torch.Tensor):
                stats[k] = float(stats[k]) if k == "loss_sum" else int(stats[k])
        self._check_finite(trainer, f"between steps {trainer.step - self.sync_every} and {trainer.step - 1}",
                           agree=True)
        return True

    def _check_finite(self, trainer, where: str, agree: bool = False) -> None:
        """Stop on a non-finite loss in the statistics read since the last check: before the next checkpoint, so that
        no checkpoint holds parameters or bank entries written after it (the method's pending write is dropped).

        ``agree``: the statistics are this rank's own (not yet summed over the ranks), so the ranks first agree,
        with one all-reduce of a flag, whether any of them saw a non-finite loss: every rank stops at the same step
        (a rank stopping alone would leave the others waiting in the next collective until the timeout)."""
        bad = not math.isfinite(trainer._epoch_stats["loss_sum"])
        if agree and self.distributed:
            ranks = self.ranks_agreeing(bad)
            bad = ranks > 0
            where += f", on {ranks} of the {self.world_size} ranks"
        if not bad:
            return
        trainer.method.discard()
        raise NonFiniteLossError(
            f"non-finite training loss in epoch {trainer.epoch} {where} (statistics are read every "
            f"{self.sync_every} steps); the parameters and the bank may hold non-finite values, no checkpoint is "
            "written with them. Resume from the last checkpoint with a lower learning rate or Langevin step.",
            epoch=trainer.epoch, step=trainer.step,
            checkpoint=str(trainer.checkpoint_path) if trainer.checkpoint_path else None,
        )

    def ranks_agreeing(self, bad: bool) -> int:
        """How many ranks passed ``bad=True`` (one all-reduce; every rank must call it at the same point)."""
        if not self.distributed:
            return int(bad)
        flag = torch.tensor([float(bad)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            flag = flag.to(self.device)
        dist.all_reduce(flag)
        return int(flag.item())

    _SUMMED = ("input_grad_evals", "param_grad_evals", "forward_evals", "examples")
    _STATS = ("loss_sum", "correct", "seen")

    def _values(self, trainer) -> list[float]:
        vals = [trainer.counts[k] for k in self._SUMMED] + [trainer._epoch_stats[k] for k in self._STATS]
        return [float(v) for v in vals]  # device tensors are read here (once per sync)

    def _rebase(self, trainer) -> None:
        self._base = dict(zip(self._SUMMED + self._STATS, self._values(trainer)))
        self._stats_id = id(trainer._epoch_stats)

    def sync_stats(self, trainer) -> None:
        """Read the device statistics and, across ranks, sum what each rank added since the last sync: afterwards
        every rank holds the global counts and epoch statistics."""
        if id(trainer._epoch_stats) != self._stats_id:  # a new epoch started from zero
            for k in self._STATS:
                self._base[k] = 0.0
            self._stats_id = id(trainer._epoch_stats)
        keys = self._SUMMED + self._STATS
        now = self._values(trainer)
        if self.distributed:
            delta = torch.tensor([v - self._base[k] for k, v in zip(keys, now)], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                delta = delta.to(self.device)
            dist.all_reduce(delta)
            now = [self._base[k] + d for k, d in zip(keys, delta.cpu().tolist())]
        for k, v in zip(keys, now):
            if k in self._SUMMED:
                trainer.counts[k] = int(round(v))
            elif k == "loss_sum":
                trainer._epoch_stats[k] = v
            else:
                trainer._epoch_stats[k] = int(round(v))
        self._base = dict(zip(keys, now))
        self._check_finite(trainer, f"before step {trainer.step}")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, trainer):
        """Every rank: its rank file (bank shard, random states); then rank 0: ``checkpoint.pt``, referring to them;
        then rank 0 removes the rank files no checkpoint refers to (those of checkpoint.pt and checkpoint.prev.pt
        stay)."""
        self.sync_stats(trainer)
        if not self.distributed:
            return atomic_save(trainer.state_dict(), trainer.checkpoint_path, keep_previous=True)
        stamp = stamp_of(trainer.epoch, trainer.step)
        bank = getattr(trainer.method, "bank", None)
        sharded = isinstance(bank, ShardedBank)
        if sharded:
            bank.stamp = stamp
        state = {
            "format": RANK_FILE_FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "stamp": stamp,
            "rng": rng_states(),
            "bank": bank.shard_state() if sharded else None,
        }
        atomic_save(state, rank_file(trainer.run_dir, stamp, self.rank, self.world_size))
        self.barrier()  # every rank file is on disk before the checkpoint that refers to them
        path = trainer.checkpoint_path
        if self.is_main:
            atomic_save(trainer.state_dict(), path, keep_previous=True)
        self.barrier()
        keep = [s for s in (self._stamps[-1:] + [stamp])]
        self._stamps = keep
        if self.is_main:
            root = Path(trainer.run_dir) / RANKS_DIR
            for folder in root.iterdir() if root.is_dir() else []:
                if folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
        return path

    def close(self) -> None:
        """Leave the process group (end of a distributed run)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def resumed(self, trainer, state: dict, path) -> None:
        """After the Trainer loaded ``checkpoint.pt``: this rank's random states from its rank file (another world
        size: fresh seeded states; allowed at epoch boundaries only)."""
        stamp = stamp_of(state["epoch"], state["step"])
        self._stamps = [stamp]
        self._rebase(trainer)
        if not self.distributed:
            return
        stored = stored_world_size(trainer.run_dir, stamp)
        if stored == self.world_size:
            set_rng_states(read_rank_file(rank_file(trainer.run_dir, stamp, self.rank, stored))["rng"])
            return
        if int(state["step"]) != 0:
            by = "a single process without torchrun" if stored is None else f"{stored} ranks"
            raise ConfigError(
                f"the checkpoint ({stamp}) was written mid-epoch by {by}; this run has {self.world_size} ranks. "
                "Resume it as it was written, or from a checkpoint written at the end of an epoch (the order of the "
                "rest of an epoch depends on the number of ranks)"
            )
        torch.manual_seed(hash_words(self.seed, RANK_STREAM, self.rank, int(state["epoch"])))


def add_runtime_args(p) -> None:
    """The command line's flags of this module (``adv-transport train``)."""
    p.add_argument("--bank-device", choices=BANK_DEVICES, help="where the bank lives (default cpu; pinned on a GPU)")
    p.add_argument("--bank-path", help="memory-map the bank to this file (one per rank: .rank<r>-of-<N>)")
    p.add_argument("--amp", choices=tuple(accel.AMP_DTYPES), default="off", help="mixed precision of the forward pass")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (GPU only)")
    p.add_argument("--sync-every", type=int, help="read statistics from the device every N steps (default 1; 50 on "
                   "a GPU)")


def wants_runtime(args) -> bool:
    """Whether a ``train`` command needs a :class:`Runtime` (torchrun, or any fast-path flag)."""
    return launched_by_torchrun() or any(
        (getattr(args, "bank_device", None), getattr(args, "bank_path", None), getattr(args, "amp", "off") != "off",
         getattr(args, "channels_last", False), getattr(args, "compile", False), getattr(args, "sync_bn", False),
         getattr(args, "sync_every", None))
    )


def runtime_from_args(args, device: str, seed: int) -> Runtime | None:
    if not wants_runtime(args):
        return None
    rt = Runtime.from_env(
        device=device, seed=seed, amp=getattr(args, "amp", "off"), channels_last=getattr(args, "channels_last", False),
        compile=getattr(args, "compile", False), sync_bn=getattr(args, "sync_bn", False),
        bank_device=getattr(args, "bank_device", None), bank_path=getattr(args, "bank_path", None), sync_every=1,
    )
    every = getattr(args, "sync_every", None)
    rt.sync_every = int(every) if every is not None else (50 if rt.device.type == "cuda" else 1)
    if rt.sync_every < 1:
        raise ConfigError(f"--sync-every {every!r} is not accepted; accepted: an integer >= 1")
    return rt
