"""Checkpoint files: atomic writes that keep the previous good file, loading without code execution, and the
random-number-generator states a bit-identical resume needs.

Every file a user hands over (checkpoints, evaluation states) is read with ``torch.load(weights_only=True)``: only
tensors, dicts, lists, tuples, numbers, strings and None are accepted (plus, for checkpoints written before this
version, the numpy array of the numpy RNG state). A file that is not ours, truncated or corrupt raises
:class:`CheckpointError`, one line naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError

CHECKPOINT = "checkpoint.pt"


class CheckpointError(ConfigError):
    """A file handed over as a checkpoint (or evaluation state) is not ours, truncated or corrupt."""


class CheckpointFallbackWarning(UserWarning):
    """``checkpoint.pt`` could not be read and its predecessor ``checkpoint.prev.pt`` was loaded instead."""


# ---------------------------------------------------------------------------------------------- RNG states


def rng_states() -> dict[str, Any]:
    """The torch, numpy and python RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        keys = np_state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np_state = (
            np_state["kind"],
            keys.astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    np.random.set_state(np_state)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- writing


def previous_path(path: str | os.PathLike) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``: where :func:`atomic_save` keeps the file it replaces."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _atomic_write(path: str | os.PathLike, write, mode: str, keep_previous: bool = False) -> Path:
    """Write through ``write(file)`` to a temporary file in the same folder, fsync, then rename over ``path``: a
    crash leaves either the old file or the new one, never a torn one. With ``keep_previous`` the file being
    replaced stays as :func:`previous_path` (``path`` exists at every moment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            prev = previous_path(path)
            link = prev.with_name(f".{prev.name}.link")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)  # a second name for the current file, then renamed over the predecessor
            except OSError:  # no hard links on this file system: copy
                shutil.copyfile(path, link)
            os.replace(link, prev)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """``torch.save`` atomically (see :func:`_atomic_write`); ``keep_previous`` keeps the replaced file as
    ``<name>.prev.pt``."""
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb", keep_previous)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (see :func:`_atomic_write`)."""
    return _atomic_write(path, lambda f: f.write(text), "w")


# ---------------------------------------------------------------------------------------------- reading


def _numpy_rng_globals() -> list:
    """What a numpy RNG state (a uint32 array) pickles to: allowed so that checkpoints written by adv-transport
    0.1.0, which stored ``np.random.get_state()`` as it is, still load. Data only, no callables."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_load(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; any failure becomes one :class:`CheckpointError` line saying which
    file could not be read as ``what`` and why. ``mmap``: the tensors are mapped from the file, not read (a tensor's
    pages are read when it is used)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read as {what} ({e.strerror or type(e).__name__})") from None
    if not head:
        raise CheckpointError(f"{path} is empty (truncated or corrupt), not {what}")
    # torch.save writes a zip archive (before torch 1.6, or with _use_new_zipfile_serialization=False, a pickle,
    # which starts with 0x80); anything else is another kind of file
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not {what}: it is not a file written by torch.save")
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, **({"mmap": True} if mmap else {}))
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in reason or "Unsupported global" in str(e):
            reason = "it holds Python objects other than tensors, numbers, strings, lists and dicts (not loaded)"
        raise CheckpointError(f"{path} is not {what}: {reason}") from None
    except Exception as e:  # a damaged file fails anywhere in the unpickler (IndexError, struct.error, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt, not {what} ({type(e).__name__}: {reason})") from None


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() else path


def _read_checkpoint(path: Path, map_location, mmap: bool = False) -> dict[str, Any]:
    what = "an adv-transport checkpoint (a dict with 'model' and 'config', as written by adv-transport train)"
    state = safe_load(path, what, map_location, mmap=mmap)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not {what}")
    return state


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", fallback: bool = True, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint file or a run directory's ``checkpoint.pt`` (with ``weights_only=True``).

    When it is missing, truncated or corrupt and ``fallback`` is on, its predecessor ``checkpoint.prev.pt`` is read
    instead, with a :class:`CheckpointFallbackWarning` saying so; otherwise :class:`CheckpointError` is raised.
    ``mmap``: the tensors are mapped from the file rather than read (to look at a checkpoint's config without reading
    a bank of gigabytes; a tensor's pages are read only when it is used, so damage inside one goes unnoticed)."""
    path = _resolve(path)
    prev = previous_path(path)
    if not path.is_file():
        if fallback and prev.is_file():
            return _fall_back(path, prev, "it is missing", map_location, mmap)
        raise ConfigError(f"no checkpoint at {path}; pass a checkpoint file or a run directory holding {CHECKPOINT}")
    try:
        return _read_checkpoint(path, map_location, mmap)
    except CheckpointError as e:
        if not (fallback and prev.is_file()):
            raise
        return _fall_back(path, prev, str(e), map_location, mmap)


def _fall_back(path: Path, prev: Path, reason: str, map_location, mmap: bool = False) -> dict[str, Any]:
    try:
        state = _read_checkpoint(prev, map_location, mmap)
    except CheckpointError as e:
        raise CheckpointError(f"{path} cannot be read ({reason}), nor can its predecessor ({e})") from None
    warnings.warn(
        f"{path} cannot be read ({reason}); loaded the previous checkpoint {prev} (epoch {state.get('epoch')}, "
        f"step {state.get('step')}) instead",
        CheckpointFallbackWarning,
        stacklevel=3,
    )
    return state


def recover_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """Before resuming ``run_dir``: when its ``checkpoint.pt`` cannot be read but ``checkpoint.prev.pt`` can, move the
    broken file aside (``checkpoint.corrupt.pt``) and put a copy of the predecessor in its place. Returns a message
    saying so, or None when ``checkpoint.pt`` reads fine. Raises :class:`CheckpointError` when neither reads."""
    path = _resolve(run_dir)
    prev = previous_path(path)
    if path.is_file():
        try:
            _read_checkpoint(path, "cpu")
            return None
        except CheckpointError as e:
            if not prev.is_file():
                raise CheckpointError(f"{e}; there is no previous checkpoint {prev.name} to resume from") from None
            reason = str(e)
    elif prev.is_file():
        reason = f"{path} is missing"
    else:
        raise ConfigError(f"no checkpoint at {path} to resume")
    try:
        state = _read_checkpoint(prev, "cpu")
    except CheckpointError as e:
        raise CheckpointError(f"{reason}; its predecessor cannot be read either ({e})") from None
    corrupt = path.with_name(f"{path.stem}.corrupt{path.suffix}")
    moved = ""
    if path.is_file():
        os.replace(path, corrupt)
        moved = f"moved it to {corrupt.name} and "
    tmp = path.with_name(f".{path.name}.restore")
    shutil.copyfile(prev, tmp)
    os.replace(tmp, path)
    return (
        f"{reason}; {moved}resuming from the previous checkpoint {prev.name} "
        f"(epoch {state.get('epoch')}, step {state.get('step')})"
    )


# ---------------------------------------------------------------------------------------------- trained runs


@dataclass
class Run:
    """A trained run read back by :func:`load_run`.

    ``model`` is in eval mode, takes inputs in [0, 1] (normalisation inside); ``recipe`` and ``config`` are the
    settings it was trained with, ``history`` the per-epoch log records, ``evaluation`` the last ``eval.json`` written
    next to the checkpoint by ``adv-transport eval`` (None when there is none)."""

    model: nn.Module
    recipe: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    epoch: int | None
    checkpoint: Path
    weights: str = "model"  # which weights ``model`` holds: "model" (last), "ema" (weight average) or "best"


def final_weights(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The weights a checkpoint reports, as :meth:`Trainer.final_model` picks them, and which they are: ``best`` (the
    best validation epoch's, when the run selected on validation or stopped early), ``ema`` (the weight average,
    when the run kept one), else ``model`` (the last weights)."""
    r = (state.get("config") or {}).get("recipe") or {}
    best = state.get("best")
    if isinstance(best, dict) and isinstance(best.get("state"), dict) and (
        r.get("select") == "best" or state.get("stopped_early_at") is not None
    ):
        return best["state"], "best"
    ema = state.get("ema")
    if isinstance(ema, dict) and ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}, "ema"
    return state["model"], "model"


def model_from_state(state: dict[str, Any], where: str | os.PathLike = "the checkpoint") -> nn.Module:
    """Rebuild the model of a checkpoint ``state`` (its recipe's architecture, class count, image size and the
    normalisation stored in the weights) and load the weights it reports (:func:`final_weights`: the best validation
    epoch's or the weight average when the run used them, else the last). Returned on the CPU, in eval mode."""
    from .models import build_model

    config = state.get("config") or {}
    r = config.get("recipe")
    if not isinstance(r, dict) or "model" not in r or "dataset" not in r:
        raise CheckpointError(
            f"{where} holds no recipe (config['recipe'] with 'model' and 'dataset'); only checkpoints written by "
            "adv-transport train can be rebuilt: load its 'model' state dict into your own model instead"
        )
    weights, _ = final_weights(state)
    kwargs: dict[str, Any] = {"num_classes": config.get("num_classes"), "image_size": config.get("image_size")}
    if isinstance(weights.get("mean"), torch.Tensor) and isinstance(weights.get("std"), torch.Tensor):
        kwargs.update(mean=weights["mean"].flatten().tolist(), std=weights["std"].flatten().tolist())
    model = build_model(r["model"], r["dataset"], **kwargs)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{where}: its weights do not fit a {r['model']} for {r['dataset']} ({str(e).strip().splitlines()[0]})"
        ) from None
    return model.eval()


def _current_recipe(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored recipe with today's field names and every field (an ATL recipe written before ``eta`` existed has
    its step under ``step_size``); one that is not a whole recipe is returned as it is."""
    from .errors import ConfigError
    from .recipes import Recipe

    try:
        return Recipe.from_dict(stored).to_dict()
    except ConfigError:
        return stored


def load_run(path: str | os.PathLike, device: str | torch.device | None = None) -> Run:
    """The trained model of a run directory or checkpoint file, with its recipe, history and last evaluation.

    The model is on ``device`` (default: the CPU) in eval mode and takes inputs in [0, 1]."""
    ckpt = _resolve(path)
    state = load_checkpoint(ckpt)
    model = model_from_state(state, ckpt)
    if device is not None:
        model.to(device)
    evaluation = None
    report = ckpt.parent / "eval.json"
    if report.is_file():
        try:
            evaluation = json.loads(report.read_text())
        except (OSError, ValueError) as e:
            warnings.warn(f"{report} is not readable JSON ({e}); evaluation left empty", stacklevel=2)
    config = dict(state.get("config") or {})
    return Run(
        model=model,
        recipe=_current_recipe(dict(config.get("recipe") or {})),
        config=config,
        history=list(state.get("history") or []),
        evaluation=evaluation,
        epoch=state.get("epoch"),
        checkpoint=ckpt,
        weights=final_weights(state)[1],
    )


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """The trained model of a run directory or ``checkpoint.pt``, in eval mode, normalisation inside.

    Inputs in [0, 1], as ``robustbench.utils.load_model`` returns its models. ``device`` defaults to the CPU."""
    return load_run(path, device).model
