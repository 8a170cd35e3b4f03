"""Datasets with stable per-example indices, and a seeded, resumable batch iterator.

Images are kept in memory as uint8 NCHW and served as float NCHW in [0, 1] together with their labels and their
dataset index ``idx`` (the row of the adversarial bank). Sources, in order:

1. a directory of ``.npz`` files (``data_dir`` argument, else the ``ADV_TRANSPORT_DATA`` environment variable):
   ``mnist.npz``; ``cifar10.npz`` or, failing that, ``cifar10_jpeg_lossy.npz`` (JPEG-recompressed: fine for relative
   comparisons between methods, never for numbers comparable with published CIFAR-10 results; a warning says so).
   Arrays ``x_train, y_train, x_test, y_test``, images uint8 NHW or NHWC.
   A test split stored sorted by class (as the JPEG-lossy CIFAR-10 copy is) is served with its classes interleaved
   (each class keeping its own order), so that the first N test points form a class-balanced slice.
2. torchvision's download into ``data_dir`` (or ``~/.cache/adv_transport``) when no file is found.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError

DATASETS = {"mnist": {"shape": (1, 28, 28), "classes": 10}, "cifar10": {"shape": (3, 32, 32), "classes": 10}}
SPLITS = ("train", "test")
_FILES = {"mnist": ["mnist.npz"], "cifar10": ["cifar10.npz", "cifar10_jpeg_lossy.npz"]}
LOSSY_NOTE = (
    "cifar10_jpeg_lossy.npz is a JPEG-recompressed copy of CIFAR-10: use it for relative comparisons between "
    "training methods only, never as CIFAR-10 numbers comparable with RobustBench or published results."
)


class IndexedDataset:
    """Images (uint8 NCHW or float NCHW in [0, 1]) with labels; item ``i`` is ``(x_i in [0, 1], y_i, i)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "custom", lossy: bool = False):
        if images.dim() != 4:
            raise ConfigError(f"images must be NCHW (4-d), got shape {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()
        self.name = name
        self.lossy = lossy

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self) else 0

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``(x, y, idx)`` for the given dataset indices, x float32 in [0, 1]."""
        x = self.images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, self.labels[idx], idx

    def __getitem__(self, i: int):
        x, y, idx = self.get(torch.tensor([i]))
        return x[0], y[0], idx[0]

    def subset(self, n: int | None) -> IndexedDataset:
        """The first ``n`` examples (indices unchanged); the whole set when n is None."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ConfigError(f"subset size must be positive, got {n}")
        return IndexedDataset(self.images[:n], self.labels[:n], self.name, self.lossy)


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("ADV_TRANSPORT_DATA")
    return Path(env) if env else None


def _from_npz(path: Path, name: str, split: str) -> IndexedDataset:
    with np.load(path) as f:
        try:
            x, y = f[f"x_{split}"], f[f"y_{split}"]
        except KeyError:
            raise ConfigError(f"{path} lacks arrays x_{split}/y_{split}; it has {sorted(f.files)}") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    lossy = "lossy" in path.name
    if lossy:
        warnings.warn(LOSSY_NOTE, stacklevel=3)
    if split == "test" and len(y) > 1 and bool(np.all(np.diff(np.asarray(y).astype(np.int64)) >= 0)):
        # a test split sorted by class (the JPEG-lossy CIFAR-10 copy): interleave the classes, keeping each class's
        # own order, so that "the first N test points" is a class-balanced slice, as in the official order
        order = interleave_by_class(np.asarray(y))
        x, y = x[order], np.asarray(y)[order]
    images = torch.from_numpy(np.ascontiguousarray(x))
    if images.dtype != torch.uint8:
        images = images.float()
    return IndexedDataset(images, torch.from_numpy(np.asarray(y).astype(np.int64)), name, lossy)


def interleave_by_class(labels: np.ndarray) -> np.ndarray:
    """Indices that take the first example of every class, then the second of every class, and so on."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def _from_torchvision(name: str, split: str, root: Path) -> IndexedDataset:
    import torchvision  # lazily: only needed without local files

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(root=str(root), train=(split == "train"), download=True)
    except (RuntimeError, OSError) as e:  # no network, or a failed checksum
        raise ConfigError(
            f"could not download {name} through torchvision into {root} ({str(e).splitlines()[0]}). Point --data-dir "
            f"or ADV_TRANSPORT_DATA at a folder holding {' or '.join(_FILES[name])}."
        ) from None
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    if data.ndim == 3:
        data = data[:, None]
    else:
        data = data.transpose(0, 3, 1, 2)
    targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return IndexedDataset(torch.from_numpy(np.ascontiguousarray(data)), targets, name)


def load_dataset(
    name: str, split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True
) -> IndexedDataset:
    """Load ``mnist`` or ``cifar10`` (``train`` or ``test`` split) as an :class:`IndexedDataset`."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    root = default_data_dir(data_dir)
    if root is not None:
        for fname in _FILES[name]:
            if (root / fname).is_file():
                return _from_npz(root / fname, name, split)
    if not download:
        raise ConfigError(
            f"no {' or '.join(_FILES[name])} in {root} and download is off; set --data-dir / ADV_TRANSPORT_DATA to a "
            "folder holding it, or allow the torchvision download"
        )
    return _from_torchvision(name, split, root or Path.home() / ".cache" / "adv_transport")


class IndexedBatches:
    """Seeded mini-batches ``(x, y, idx)`` over an :class:`IndexedDataset`.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at (epoch, step) sees exactly the batches
    an uninterrupted run would have seen.
    """

    def __init__(
        self,
        dataset: IndexedDataset,
        batch_size: int = 128,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
    ):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        return torch.randperm(n, generator=g)

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x, y, idx = self.dataset.get(idx)
            yield x.to(self.device), y.to(self.device), idx

    def __iter__(self):
        return self.iterate(self.epoch)
