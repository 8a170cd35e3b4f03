"""The files of a memory-mapped bank (``AdversarialBank(path=...)``, ``--bank-path``).

``<path>`` holds the stored values (a ``.npy`` file, memory-mapped), ``<path>.init.npy`` the initialised-flags,
``<path>.scale.npy`` the per-example int8 grid of l2 banks, ``<path>.json`` what the bank is (examples, copies,
shape, norm, eps, dtype, init). An existing bank whose description matches is opened as it is (rows and flags kept:
that is how a run resumes); one that does not match is refused with the list of differences and left untouched.

Checkpoints flush the files and record the path instead of copying the bank into RAM. The bank is not rolled back on
resume: rows written after the last checkpoint keep their newer values (nothing is lost, but a resumed run is not
bit-identical to an uninterrupted one unless it stopped right after a checkpoint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .bank import DTYPES, same_setting
from .errors import BankMismatchError, settings_differ

NP_DTYPES = {name: torch.empty(0, dtype=dtype).numpy().dtype for name, dtype in DTYPES.items()}
DESCRIBED = ("num_examples", "copies", "shape", "norm", "eps", "dtype", "init")


def sidecars(path: str | os.PathLike) -> dict[str, Path]:
    p = Path(path)
    return {"init": Path(f"{p}.init.npy"), "scale": Path(f"{p}.scale.npy"), "meta": Path(f"{p}.json")}


def open_bank_files(path, meta: dict, full_shape: tuple, dtype: str, scale_fill: float | None):
    """``(storage, initialized, row_scale or None, memmaps)`` of the bank file at ``path``: opened when it exists and
    matches ``meta``, created otherwise."""
    files = sidecars(path)
    mine = {k: meta[k] for k in DESCRIBED}
    rows = tuple(full_shape[:2])
    if Path(path).exists():
        try:
            stored = json.loads(files["meta"].read_text())
        except (OSError, ValueError) as e:
            raise BankMismatchError(
                f"{path} exists but its description {files['meta']} cannot be read ({e}); it was not made by "
                "adv-transport or is damaged: remove it or choose another --bank-path"
            ) from None
        differ = settings_differ(
            f"the bank file {path} does not match this run and was left as it is", stored, mine, same=same_setting,
            advice="Choose another --bank-path or the settings it was made with.",
        )
        if differ:
            raise BankMismatchError(differ)
        try:
            values = np.load(path, mmap_mode="r+")
            init = np.load(files["init"], mmap_mode="r+")
            scale = np.load(files["scale"], mmap_mode="r+") if scale_fill is not None else None
        except (OSError, ValueError) as e:
            raise BankMismatchError(f"the bank file {path} or its flags cannot be opened ({e})") from None
        if values.shape != tuple(full_shape) or values.dtype != NP_DTYPES[dtype] or init.shape != rows:
            raise BankMismatchError(f"the bank file {path} holds {values.dtype} {values.shape} (flags {init.shape}); "
                                    f"this run needs {dtype} {tuple(full_shape)}")
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        values = np.lib.format.open_memmap(path, mode="w+", dtype=NP_DTYPES[dtype], shape=tuple(full_shape))
        init = np.lib.format.open_memmap(files["init"], mode="w+", dtype=np.bool_, shape=rows)
        scale = None
        if scale_fill is not None:
            scale = np.lib.format.open_memmap(files["scale"], mode="w+", dtype=np.float32, shape=rows)
            scale[...] = scale_fill
        files["meta"].write_text(json.dumps(mine))
    maps = [m for m in (values, init, scale) if m is not None]
    return (torch.from_numpy(values), torch.from_numpy(init),
            None if scale is None else torch.from_numpy(scale), maps)


BANK_ARRAYS = {"storage": "values", "initialized": "initialised-flags", "row_scale": "per-example scales"}


def read_bank_files(path) -> dict:
    """A memory-mapped bank's arrays opened read-only and not read into memory (to re-shard it: index the rows needed,
    :func:`take_rows`): ``storage``, ``initialized`` and, when the bank has one, ``row_scale``, as numpy memory maps.
    A missing, truncated or corrupt file raises :class:`BankMismatchError` naming it (nothing is modified)."""
    files = sidecars(path)
    paths = {"storage": Path(path), "initialized": files["init"]}
    if files["scale"].exists():
        paths["row_scale"] = files["scale"]
    out = {}
    for key, file in paths.items():
        try:
            out[key] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BankMismatchError(
                f"the bank file {file} is missing, truncated or corrupt ({type(e).__name__}: {reason}); expected the "
                f"{BANK_ARRAYS[key]} of the memory-mapped bank {path} (a .npy file written by adv-transport)"
            ) from None
    return out


def take_rows(array, rows: torch.Tensor) -> torch.Tensor:
    """The rows ``rows`` (int64, on the CPU) of a stored bank array: a numpy (memory-mapped) array or a tensor
    (possibly mapped from a file); only those rows are read."""
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array[rows.numpy()]))
    return array.index_select(0, rows)
