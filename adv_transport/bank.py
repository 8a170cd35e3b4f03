"""The adversarial bank: K persistent perturbations per training example, addressed by dataset index.

The bank stores ``delta = x_adv - x`` rather than ``x_adv``: delta is bounded by eps, so it quantises to int8 (one byte
per input value) or float16 without meaningful loss. Whatever the storage dtype, after every write each stored delta
(as read back) lies in the threat ball and ``x + delta`` in [0, 1]: values that quantisation would push outside are
rounded toward zero instead, which stays feasible because the feasible set of each coordinate is an interval
containing both 0 and delta.

Error of a read-back delta (``err = read - written``, the written delta already projected onto ball and box; d input
values per example; ``kappa = sqrt(d) * ||delta||_inf / ||delta||_2``, between 1 and sqrt(d), small for spread-out
perturbations such as those of l2 chains; measured values are in the README, "How it works"):

==========  =====================================================  ==================================================
dtype       l-inf                                                  l2
==========  =====================================================  ==================================================
float32     none (stored as computed, up to one float32 rounding)      the same
float16     ``|err_i| <= 2^-10 |delta_i| + 2^-24`` per coordinate  the same per coordinate, so
            (half an ulp, one ulp where a value had to move        ``||err||_2 <= 2^-10 ||delta||_2 + 2^-24 sqrt(d)``
            toward zero to stay feasible)
int8        a grid of step eps/127 over [-eps, eps]:               a grid of step ``||delta||_inf / 127`` per example
            ``|err_i| <= eps/254``, ``eps/127`` where a value      (a float32 scale per example and copy, 4 bytes),
            had to move toward zero to stay feasible               rescaled so the norm is kept:
                                                                   ``||err||_2 <= kappa / 127 * ||delta||_2``, plus
                                                                   one grid step on those coordinates that had to
                                                                   move toward zero to stay in the box;
                                                                   ``||read||_2 = ||delta||_2`` up to float rounding
                                                                   except for those coordinates
==========  =====================================================  ==================================================

(A single grid of step eps/127 is far too coarse for l2, whose coordinates are about eps / sqrt(d): it lost a third
of the values to zero and shrank the norm to 0.84 eps on every write; hence the per-example scale.)

Duplicate example indices in one write (a sampler drawing with replacement) are defined: for each (example, copy)
the last occurrence in the batch is stored (last write wins), on every device.

Chains start lazily on their first read, either clean (delta = 0) or uniformly in the ball; the first read is
when ``x`` is known, so a uniform start can be clipped to the image box. Reading never changes the stored values.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from .errors import BankMismatchError, ConfigError, settings_differ
from .threat import ThreatModel, project_l2_box

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
INITS = ("zero", "uniform")
_INT8_LEVELS = 127


def same_setting(key: str, stored: Any, mine: Any) -> bool:
    """Whether a stored bank's setting ``key`` (of :meth:`AdversarialBank.metadata`) equals this run's: ``shape`` as
    a list, ``eps`` up to a relative 1e-9, the rest exactly."""
    if key == "shape":
        return list(stored or []) == list(mine)
    if key == "eps":
        return stored is not None and math.isclose(float(stored), float(mine), rel_tol=1e-9, abs_tol=0.0)
    return stored == mine


def _last_occurrences(key: torch.Tensor) -> torch.Tensor | None:
    """Positions of the last occurrence of each distinct value of ``key`` (in the order of the sorted values), or
    None when all values are distinct."""
    if key.numel() < 2:
        return None
    uniq, inverse = torch.unique(key, return_inverse=True)
    if uniq.numel() == key.numel():
        return None
    pos = torch.arange(key.numel(), device=key.device)
    return torch.full((uniq.numel(),), -1, dtype=torch.long, device=key.device).scatter_reduce_(0, inverse, pos, "amax")


def _last_occurrence_rows(key: torch.Tensor, num_keys: int, *values: torch.Tensor,
                          slots: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The rows of ``values`` with every occurrence of a repeated ``key`` given its last occurrence's row, so that
    ``table[key] = value`` stores the last occurrence (with a repeated index it stores an unspecified one: threads and
    GPU blocks race). Without a host synchronisation (unlike :func:`_last_occurrences`): one scatter into
    ``num_keys`` slots (``slots``: a reusable int64 buffer of that size; else one is allocated)."""
    if key.numel() < 2:
        return values
    if slots is None:
        slots = torch.empty(num_keys, dtype=torch.long, device=key.device)
    pos = torch.arange(key.numel(), device=key.device)
    winner = slots.scatter_reduce_(0, key, pos, "amax", include_self=False)[key]
    return tuple(v.index_select(0, winner.to(v.device)) for v in values)


def check_indices(idx: torch.Tensor, num_examples: int) -> torch.Tensor:
    """``idx`` as int64 after checking that it is an integer tensor of dataset indices in ``[0, num_examples)``
    (:class:`ConfigError` otherwise)."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ConfigError(f"bank indices must be an integer tensor of dataset indices, got {type(idx).__name__}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_examples):
        raise ConfigError(
            f"bank index out of range: got [{int(idx.min())}, {int(idx.max())}], the bank holds "
            f"{num_examples} examples (indices 0..{num_examples - 1})"
        )
    return idx.long()


class AdversarialBank:
    """Persistent store of ``copies`` perturbations for each of ``num_examples`` inputs of shape ``shape``.

    Args:
        num_examples: size of the training set; rows are addressed by the dataset index of each example.
        shape: shape of one input (e.g. ``(1, 28, 28)``).
        threat: the :class:`ThreatModel` whose ball every stored delta lies in.
        copies: K, the number of chains per example. With K > 1 each read picks one copy at random.
        dtype: storage dtype, one of ``float32``, ``float16``, ``int8`` (l-inf: a grid of step eps/127; l2: a grid
            of step ``||delta||_inf / 127`` per example and copy). Error bounds: see the module docstring.
        init: ``zero`` (start from the clean input) or ``uniform`` (uniform in the ball, clipped to [0, 1]).
        device: where the storage lives (default CPU; put it on the GPU when it fits).
        path: if given, the storage is a memory-mapped file at this path (for banks larger than RAM), with its
            initialised-flags beside it; an existing file that matches is opened as it is, one that does not is
            refused; checkpoints flush it and record the path (:mod:`adv_transport.bankfile`).
        seed: seed of the bank's own generator (copy choice and uniform initialisation).
    """

    def __init__(
        self,
        num_examples: int,
        shape: tuple[int, ...],
        threat: ThreatModel,
        *,
        copies: int = 1,
        dtype: str = "float32",
        init: str = "zero",
        device: str | torch.device = "cpu",
        path: str | os.PathLike | None = None,
        seed: int = 0,
    ):
        if int(num_examples) <= 0:
            raise ConfigError(f"num_examples must be a positive integer, got {num_examples!r}")
        if int(copies) <= 0:
            raise ConfigError(f"copies (K) must be a positive integer, got {copies!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"bank dtype {dtype!r} is not supported; accepted: {', '.join(DTYPES)}")
        if init not in INITS:
            raise ConfigError(f"bank init {init!r} is not supported; accepted: {', '.join(INITS)}")
        if not isinstance(threat, ThreatModel):
            raise ConfigError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        self.num_examples = int(num_examples)
        self.shape = tuple(int(s) for s in shape)
        self.threat = threat
        threat.check_input_dim(math.prod(self.shape))
        self.copies = int(copies)
        self.dtype = dtype
        self.init = init
        self.path = None if path is None else os.fspath(path)
        self.generator = torch.Generator().manual_seed(int(seed))
        full = (self.num_examples, self.copies) + self.shape
        self._memmaps = []
        if self.path is not None:
            from .bankfile import open_bank_files

            scale_fill = self.threat.eps / _INT8_LEVELS if self.per_example_scale else None
            self.storage, self.initialized, self.row_scale, self._memmaps = open_bank_files(
                self.path, self.metadata(), full, dtype, scale_fill
            )
            return
        self.storage = torch.zeros(full, dtype=DTYPES[dtype], device=device)
        self.initialized = torch.zeros(self.num_examples, self.copies, dtype=torch.bool, device=self.storage.device)
        # int8 l2: one grid step per (example, copy); eps/127 until written (the grid of banks saved without scales)
        self.row_scale = None
        if self.per_example_scale:
            self.row_scale = torch.full(
                (self.num_examples, self.copies), self.threat.eps / _INT8_LEVELS, device=self.storage.device
            )

    @property
    def per_example_scale(self) -> bool:
        """int8 storage of l2 perturbations keeps one grid step per example and copy (see the module docstring)."""
        return self.dtype == "int8" and self.threat.norm == "l2"

    # ------------------------------------------------------------------ sizes
    @property
    def memory_bytes(self) -> int:
        """Bytes held by the stored perturbations, their per-example scales (int8 l2) and the initialisation flags."""
        scales = 0 if self.row_scale is None else self.row_scale.numel() * self.row_scale.element_size()
        return self.storage.numel() * self.storage.element_size() + scales + self.initialized.numel()

    def __repr__(self) -> str:
        return (
            f"AdversarialBank(n={self.num_examples}, K={self.copies}, shape={self.shape}, {self.threat.norm} "
            f"eps={self.threat.eps:g}, dtype={self.dtype}, init={self.init}, {self.memory_bytes / 2**20:.1f} MiB)"
        )

    # ------------------------------------------------------------------ quantisation
    @property
    def _scale(self) -> float:
        return self.threat.eps / _INT8_LEVELS

    def _encode(self, delta: torch.Tensor) -> torch.Tensor:
        if self.dtype == "float32":
            return delta.float()
        if self.dtype == "float16":
            return delta.half()
        return torch.round(delta / self._scale).clamp(-_INT8_LEVELS, _INT8_LEVELS).to(torch.int8)

    def _decode(self, stored: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.dtype == "int8":
            if scale is not None:  # per-example grid (int8 l2)
                return stored.float() * scale.view(-1, *([1] * (stored.dim() - 1)))
            return stored.float() * self._scale
        return stored.float()

    def _quantise_l2_int8(self, delta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode feasible l2 deltas on a per-example grid of step ``||delta||_inf / 127``; returns (int8 values,
        scales). The scale is then adjusted so the decoded norm equals ``||delta||_2`` (round-to-nearest changes it
        a little); coordinates pushed out of the box move one step toward zero (zero if still out), and a norm pushed
        over eps by float rounding shrinks the scale by a few ulps. Every read-back delta is feasible."""
        flat = delta.flatten(1)
        view = (-1,) + (1,) * (delta.dim() - 1)
        peak = flat.abs().amax(1)
        scale = torch.where(peak > 0, peak / _INT8_LEVELS, torch.full_like(peak, self._scale))
        q = torch.round(delta / scale.view(view)).clamp_(-_INT8_LEVELS, _INT8_LEVELS)
        got = (q * scale.view(view)).flatten(1).norm(p=2, dim=1)
        want = flat.norm(p=2, dim=1)
        scale = torch.where(got > 0, scale * (want / got.clamp_min(1e-30)), scale)  # keep the norm
        stored = q.to(torch.int8)
        for attempt in range(5):
            deq = self._decode(stored, scale)
            bad = ((deq < -x) | (deq > 1.0 - x)) & (stored != 0)
            if not bool(bad.any()):
                break
            if attempt == 4:  # zero is always feasible
                stored = torch.where(bad, torch.zeros_like(stored), stored)
            else:
                stored = self._toward_zero(stored, bad)
        for _ in range(8):  # float rounding only: the kept norm is <= eps in exact arithmetic
            over = ~self.threat.contains(self._decode(stored, scale), atol=0.0)
            if not bool(over.any()):
                break
            scale = torch.where(over, scale * (1.0 - 2.0**-20), scale)  # shrinking keeps the box
        return stored, scale

    def _toward_zero(self, stored: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Move the masked entries of ``stored`` one representable step toward zero."""
        if self.dtype == "int8":
            return torch.where(mask, stored - stored.sign(), stored)
        if self.dtype == "float16":
            bits = stored.view(torch.int16)
            return torch.where(mask, bits - 1, bits).view(torch.float16)
        return torch.where(mask, torch.nextafter(stored, torch.zeros_like(stored)), stored)

    def _quantise_feasible(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Encode a feasible ``delta`` so that its decoded value is still feasible."""
        stored = self._encode(delta)
        if self.dtype == "float32":  # stored exactly as computed: nothing to round
            return stored
        for _ in range(4):  # one step toward zero always suffices; the loop guards float corner cases
            deq = self._decode(stored)
            bad = (deq < -x) | (deq > 1.0 - x)
            if self.threat.norm == "linf":
                bad |= deq.abs() > self.threat.eps
            else:
                over = ~self.threat.contains(deq, atol=0.0)
                bad |= over.view(-1, *([1] * (deq.dim() - 1))) & (deq.abs() > delta.abs())
            bad &= deq.abs() > 0
            if not bool(bad.any()):
                break
            stored = self._toward_zero(stored, bad)
        return stored

    # ------------------------------------------------------------------ read / write
    def _check_index(self, idx: torch.Tensor) -> torch.Tensor:
        return check_indices(idx, self.num_examples).to(self.storage.device)

    def _check_batch(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape or x.shape[0] != idx.numel():
            raise ConfigError(
                f"batch of shape {tuple(x.shape)} with {idx.numel()} indices does not fit a bank of inputs "
                f"shaped {self.shape}"
            )

    def sample_copies(self, n: int) -> torch.Tensor:
        """Which copy to use for each of ``n`` examples (all zeros when K = 1)."""
        if self.copies == 1:
            return torch.zeros(n, dtype=torch.long)
        return torch.randint(self.copies, (n,), generator=self.generator)

    def read(self, idx: torch.Tensor, x: torch.Tensor, copy: torch.Tensor | None = None, start=None):
        """Return ``(delta, copy)`` for the examples ``idx`` with clean inputs ``x`` (delta on x's device, float32).

        Copies never written before start here (``zero`` or ``uniform`` in the ball); a start is stored by the next
        :meth:`write` of that copy, so reading alone never changes the bank. ``start``: the uniform starts to use
        for the batch (drawn per example by :mod:`adv_transport.rng`) instead of the bank's generator.
        """
        idx = self._check_index(idx)
        self._check_batch(x, idx)
        copy = self.sample_copies(idx.numel()) if copy is None else copy.long()
        copy = copy.to(self.storage.device)
        scale = None if self.row_scale is None else self.row_scale[idx, copy]
        delta = self._decode(self.storage[idx, copy], scale).to(device=x.device, dtype=x.dtype)
        fresh = ~self.initialized[idx, copy]
        if self.init == "uniform" and start is not None:  # no host synchronisation
            fresh = fresh.to(x.device, non_blocking=True).view(-1, *([1] * (x.dim() - 1)))
            delta = torch.where(fresh, start.to(dtype=delta.dtype), delta)
        elif self.init == "uniform" and bool(fresh.any()):
            xf = x[fresh.to(x.device)]
            cpu_gen_x = torch.empty(xf.shape, dtype=xf.dtype)
            start = self.threat.uniform(cpu_gen_x.copy_(xf.detach().cpu()), generator=self.generator)
            delta[fresh.to(x.device)] = start.to(device=x.device, dtype=x.dtype)
        return delta, copy

    @torch.no_grad()
    def write(self, idx: torch.Tensor, copy: torch.Tensor, delta: torch.Tensor, x: torch.Tensor) -> None:
        """Store ``delta`` for examples ``idx`` (copy ``copy``), after projecting it onto the intersection of the ball
        and the box (the Euclidean projection, :meth:`ThreatModel.delta_to`). When an (example, copy) pair occurs
        more than once in the batch, its last occurrence is stored (last write wins, on every device)."""
        idx = self._check_index(idx)
        self._check_batch(x, idx)
        if delta.shape != x.shape:
            raise ConfigError(f"delta of shape {tuple(delta.shape)} does not match inputs of shape {tuple(x.shape)}")
        copy = copy.long().to(self.storage.device)
        keep = _last_occurrences(idx * self.copies + copy)
        if keep is not None:
            idx, copy = idx[keep], copy[keep]
            keep = keep.to(x.device)
            x, delta = x[keep], delta[keep]
        x32 = x.detach().float().to(self.storage.device)
        d32 = delta.detach().float().to(self.storage.device)
        if self.threat.norm == "linf":
            d32 = (x32 + self.threat.project(d32)).clamp(0.0, 1.0) - x32
        else:  # the exact projection onto ball and box (ball-then-box is not the nearest point in l2)
            d32 = project_l2_box(d32, x32, self.threat.eps)
        if self.per_example_scale:
            stored, scale = self._quantise_l2_int8(d32, x32)
            self.row_scale[idx, copy] = scale
        else:
            stored = self._quantise_feasible(d32, x32)
        self.storage[idx, copy] = stored
        self.initialized[idx, copy] = True

    def reset(self) -> None:
        """Forget every stored perturbation (all rows re-initialise on their next read)."""
        self.storage.zero_()
        self.initialized.zero_()
        if self.row_scale is not None:
            self.row_scale.fill_(self.threat.eps / _INT8_LEVELS)

    # ------------------------------------------------------------------ (de)serialisation
    def metadata(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "copies": self.copies,
            "shape": list(self.shape),
            "norm": self.threat.norm,
            "eps": self.threat.eps,
            "dtype": self.dtype,
            "init": self.init,
        }

    def flush(self) -> None:
        """Write a memory-mapped bank's pages to its files (no-op in memory)."""
        for m in self._memmaps:
            m.flush()

    def state_dict(self) -> dict[str, Any]:
        if self.path is not None:  # flushed and recorded, not copied into RAM
            self.flush()
            return {"metadata": self.metadata(), "memmap": os.path.abspath(self.path),
                    "generator": self.generator.get_state()}
        state = {
            "metadata": self.metadata(),
            "storage": self.storage.detach().cpu().clone(),
            "initialized": self.initialized.cpu().clone(),
            "generator": self.generator.get_state(),
        }
        if self.row_scale is not None:
            state["row_scale"] = self.row_scale.cpu().clone()
        return state

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise (:class:`BankMismatchError`) unless ``state`` can be loaded into this bank; changes nothing."""
        differ = settings_differ(
            "the stored adversarial bank does not match this run",
            state.get("metadata", {}),
            self.metadata(),
            keys=("num_examples", "copies", "shape", "norm", "dtype", "eps"),
            same=same_setting,
            advice="Resume with the settings the bank was made with, or start a new run directory; the stored bank "
            "was left as it is.",
        )
        if differ:
            raise BankMismatchError(differ)
        if "memmap" in state:  # a memory-mapped bank: the checkpoint names its file
            stored = str(state["memmap"])
            if self.path is None or not os.path.exists(stored) or not os.path.samefile(stored, self.path):
                raise BankMismatchError(
                    f"the checkpoint's bank is the memory-mapped file {stored}; this run's bank is "
                    f"{self.path or 'in memory'}: resume with --bank-path {stored}"
                )
            try:
                torch.Generator().set_state(state.get("generator"))
            except (TypeError, RuntimeError) as e:
                raise BankMismatchError(f"the stored adversarial bank's generator state is not valid ({e})") from None
            return
        expected = {"storage": tuple(self.storage.shape), "initialized": tuple(self.initialized.shape)}
        if self.row_scale is not None and state.get("row_scale") is not None:
            expected["row_scale"] = tuple(self.row_scale.shape)
        for key, shape in expected.items():
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise BankMismatchError(f"the stored adversarial bank's {key} is {got}, expected a tensor {shape}")
        gen = state.get("generator")
        try:
            torch.Generator().set_state(gen)
        except (TypeError, RuntimeError) as e:
            raise BankMismatchError(f"the stored adversarial bank's generator state is not valid ({e})") from None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a bank; refuses (and leaves this bank untouched) if shape, K, norm, eps or dtype differ or a part
        of the state is missing. An int8 l2 bank saved without per-example scales used the grid eps/127."""
        self.check_state_dict(state)
        if "memmap" in state:  # the data is the file this bank has open
            self.generator.set_state(state["generator"])
            return
        self.storage.copy_(state["storage"].to(self.storage.device))
        self.initialized.copy_(state["initialized"].to(self.initialized.device))
        if self.row_scale is not None:
            if state.get("row_scale") is not None:
                self.row_scale.copy_(state["row_scale"].to(self.row_scale.device))
            else:
                self.row_scale.fill_(self.threat.eps / _INT8_LEVELS)
        self.generator.set_state(state["generator"])
