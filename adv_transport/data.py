"""Datasets with stable per-example indices, and a seeded, resumable batch iterator.

Every dataset serves ``(x in [0, 1], y, idx)`` with ``idx`` its stable dataset index (the row of the adversarial
bank). Accepted names (:data:`DATASETS`): ``mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``imagenet`` and
``folder:<path>``.

In memory (uint8 NCHW, served as float in [0, 1]), read in this order:

1. a directory of ``.npz`` files (``data_dir`` argument, else the ``ADV_TRANSPORT_DATA`` environment variable):
   ``mnist.npz``; ``cifar10.npz`` or, failing that, ``cifar10_jpeg_lossy.npz`` (JPEG-recompressed: fine for relative
   comparisons between methods, never for numbers comparable with published CIFAR-10 results; a warning says so);
   ``cifar100.npz`` (fine labels); ``svhn.npz`` (the ``train`` and ``test`` splits, digit labels 0-9; a stored 10
   for the digit 0, the .mat convention, is read as 0).
   Arrays ``x_train, y_train, x_test, y_test``, images uint8 NHW, NHWC or NCHW.
   A test split stored sorted by class (as the JPEG-lossy CIFAR-10 copy is) is served with its classes interleaved
   (each class keeping its own order), so that the first N test points form a class-balanced slice.
2. torchvision's download into ``data_dir`` (or ``~/.cache/adv_transport``) when no file is found.

Streamed from disk (never loaded whole): ``imagenet`` (``<data_dir>/imagenet/{train,val}``, as torchvision's
ImageFolder reads it) and ``folder:<path>`` (``<path>/train/<class>/*`` and ``<path>/val/<class>/*``). Each image is
resized (short side ``image_size * 256 / 224``) and centre-cropped to ``image_size`` (224 by default), so the bank
holds one fixed-size frame per example; random crops and flips are applied after delta by the trainer. Indices are
positions in ImageFolder's sorted file list (classes sorted by name; ``val`` uses ``train``'s classes), stable as long
as the folder does not change. :class:`IndexedBatches` reads them through a ``DataLoader`` with worker processes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError

DEFAULT_IMAGE_SIZE = 224
FOLDER_PREFIX = "folder:"
SPLITS = ("train", "test")


def _spec(shape, classes, mean, std, flip, files=(), torchvision=None) -> dict:
    return {"shape": shape, "classes": classes, "mean": mean, "std": std, "flip": flip, "files": files,
            "torchvision": torchvision, "streamed": not files}


# The one list of named datasets: shape, class count, mean/std (the normalisation inside the model), whether
# horizontal flips belong to the augmentation (not for digits), the .npz files read in that order and the torchvision
# class downloaded without them. A dataset without files (ImageNet) is streamed from an image folder, as are
# ``folder:<path>`` datasets, which take their classes from the folder and compute their statistics.
DATASETS: dict[str, dict] = {
    "mnist": _spec((1, 28, 28), 10, (0.1307,), (0.3081,), False, ("mnist.npz",), "MNIST"),
    "cifar10": _spec((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True,
                     ("cifar10.npz", "cifar10_jpeg_lossy.npz"), "CIFAR10"),
    "cifar100": _spec((3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                      ("cifar100.npz",), "CIFAR100"),
    "svhn": _spec((3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False, ("svhn.npz",), "SVHN"),
    "imagenet": _spec((3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                      True),
}
DATASET_NAMES = (*DATASETS, f"{FOLDER_PREFIX}<path>")


def check_dataset_name(name: str) -> str:
    """``name`` if it is an accepted dataset name, else a :class:`ConfigError` listing them."""
    if name in DATASETS:
        return name
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX) and len(name) > len(FOLDER_PREFIX):
        return name
    raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(DATASET_NAMES)}")


def is_streamed(name: str) -> bool:
    """Whether dataset ``name`` is read from an image folder one image at a time (``imagenet``, ``folder:<path>``)
    rather than held in memory; its images are resized to ``image_size``."""
    return name.startswith(FOLDER_PREFIX) or DATASETS[name]["streamed"]


def dataset_flip(name: str) -> bool:
    """Whether horizontal flips belong to ``name``'s augmentation (not for digits: MNIST, SVHN)."""
    return DATASETS.get(name, {"flip": True})["flip"]


def dataset_stats(name: str):
    """``(mean, std)`` of a named dataset, or None for ``folder:`` datasets (computed from the data)."""
    spec = DATASETS.get(name)
    return None if spec is None else (spec["mean"], spec["std"])


LOSSY_NOTE = (
    "cifar10_jpeg_lossy.npz is a JPEG-recompressed copy of CIFAR-10: use it for relative comparisons between "
    "training methods only, never as CIFAR-10 numbers comparable with RobustBench or published results."
)


class IndexedDataset:
    """Images (uint8 NCHW or float NCHW in [0, 1]) with labels; item ``i`` is ``(x_i in [0, 1], y_i, i)``."""

    streaming = False

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        name: str = "custom",
        lossy: bool = False,
        num_classes: int | None = None,
    ):
        if images.dim() != 4:
            raise ConfigError(f"images must be NCHW (4-d), got shape {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()
        self.name = name
        self.lossy = lossy
        self._num_classes = num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        if self._num_classes is not None:
            return self._num_classes
        if self.name in DATASETS:
            return DATASETS[self.name]["classes"]
        return int(self.labels.max()) + 1 if len(self) else 0

    @property
    def flip(self) -> bool:
        return dataset_flip(self.name)

    def stats(self):
        """``(mean, std)`` per channel: the named dataset's, else computed from (up to 10,000 of) the images."""
        known = dataset_stats(self.name)
        if known is not None:
            return known
        x, _, _ = self.get(torch.arange(min(len(self), 10_000)))
        return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())

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
        return IndexedDataset(self.images[:n], self.labels[:n], self.name, self.lossy, self._num_classes)


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("ADV_TRANSPORT_DATA")
    return Path(env) if env else None


def _from_npz(path: Path, name: str, split: str) -> IndexedDataset:
    try:
        with np.load(path) as f:
            try:
                x, y = f[f"x_{split}"], f[f"y_{split}"]
            except KeyError:
                raise ConfigError(f"{path} lacks arrays x_{split}/y_{split}; it has {sorted(f.files)}") from None
    except (OSError, ValueError, EOFError) as e:  # not an npz, truncated, or pickled objects (refused)
        raise ConfigError(
            f"{path} is not a readable .npz with arrays x_train, y_train, x_test, y_test ({type(e).__name__}: {e})"
        ) from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    expected = DATASETS[name]["shape"]
    if tuple(x.shape[1:]) != tuple(expected) or len(y) != len(x):
        raise ConfigError(
            f"{path}: x_{split} has shape {tuple(x.shape)} and y_{split} {len(y)} labels; expected N images of "
            f"{expected} (CHW, HWC or HW) and N labels"
        )
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if name == "svhn":
        y = np.where(y == 10, 0, y)  # the .mat files label the digit 0 as 10
    lossy = "lossy" in path.name
    if lossy:
        warnings.warn(LOSSY_NOTE, stacklevel=3)
    if split == "test" and len(y) > 1 and bool(np.all(np.diff(y) >= 0)):
        # a test split sorted by class (the JPEG-lossy CIFAR-10 copy): interleave the classes, keeping each class's
        # own order, so that "the first N test points" is a class-balanced slice, as in the official order
        order = interleave_by_class(np.asarray(y))
        x, y = x[order], y[order]
    images = torch.from_numpy(np.ascontiguousarray(x))
    if images.dtype != torch.uint8:
        images = images.float()
    return IndexedDataset(images, torch.from_numpy(y), name, lossy)


def interleave_by_class(labels: np.ndarray) -> np.ndarray:
    """Indices that take the first example of every class, then the second of every class, and so on."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def _from_torchvision(name: str, split: str, root: Path) -> IndexedDataset:
    import torchvision  # lazily: only needed without local files

    cls = getattr(torchvision.datasets, DATASETS[name]["torchvision"])
    try:
        if name == "svhn":
            ds = cls(root=str(root), split=split, download=True)
        else:
            ds = cls(root=str(root), train=(split == "train"), download=True)
    except (RuntimeError, OSError) as e:  # no network, or a failed checksum
        raise ConfigError(
            f"could not download {name} through torchvision into {root} ({str(e).splitlines()[0]}). Point --data-dir "
            f"or ADV_TRANSPORT_DATA at a folder holding {' or '.join(DATASETS[name]['files'])}."
        ) from None
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    if data.ndim == 3:
        data = data[:, None]
    elif data.shape[-1] in (1, 3):  # NHWC (CIFAR); SVHN is already NCHW
        data = data.transpose(0, 3, 1, 2)
    targets = torch.as_tensor(np.asarray(getattr(ds, "targets", None) or ds.labels), dtype=torch.long)
    return IndexedDataset(torch.from_numpy(np.ascontiguousarray(data)), targets, name)


class FolderDataset:
    """An image folder read from disk one example at a time, with stable per-example indices.

    Item ``i`` is ``(x_i in [0, 1], y_i, i)``, ``i`` the position in torchvision ImageFolder's sorted file list.
    Every image is resized (short side
    ``image_size * 256 / 224``) and centre-cropped to ``image_size`` x ``image_size`` RGB.

    ``class_to_idx`` (the train split's) fixes the labels of the val split. :class:`IndexedBatches` streams it
    through a ``DataLoader`` with ``num_workers`` worker processes (default: up to 8, one per CPU core).
    """

    streaming = True
    lossy = False

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        image_size: int = DEFAULT_IMAGE_SIZE,
        class_to_idx: dict[str, int] | None = None,
        num_workers: int | None = None,
        limit: int | None = None,
    ):
        from torchvision import datasets, transforms

        root = Path(root)
        if not root.is_dir():
            raise ConfigError(
                f"no image folder at {root}; expected <root>/train/<class>/*.jpg and <root>/val/<class>/*"
            )
        if int(image_size) < 8:
            raise ConfigError(f"image size must be >= 8 pixels, got {image_size}")
        self.root, self.name, self.image_size = root, name, int(image_size)
        self.transform = transforms.Compose(
            [
                transforms.Resize(round(self.image_size * 256 / 224)),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
            ]
        )

        class _Folder(datasets.ImageFolder):
            def find_classes(inner, directory):  # noqa: N805  (val/ takes train/'s class indices)
                found = super().find_classes(directory)
                if class_to_idx is None:
                    return found
                extra = sorted(set(found[0]) - set(class_to_idx))
                if extra:
                    raise ConfigError(f"{directory} has classes not in the train split: {extra[:5]}")
                return sorted(class_to_idx, key=class_to_idx.get), dict(class_to_idx)

        try:
            # the val split may lack some of train's classes
            self.folder = _Folder(str(root), transform=self.transform, allow_empty=class_to_idx is not None)
        except (FileNotFoundError, OSError) as e:
            raise ConfigError(f"{root}: not an image folder ({e}); expected <class>/<image files>") from None
        self.class_to_idx = dict(self.folder.class_to_idx)
        self.classes = list(self.folder.classes)
        self.labels = torch.tensor(self.folder.targets, dtype=torch.long)
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self._limit = len(self.folder) if limit is None else min(int(limit), len(self.folder))
        self.labels = self.labels[: self._limit]
        self._stats = None

    def __len__(self) -> int:
        return self._limit

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def flip(self) -> bool:
        return dataset_flip(self.name)

    def __getitem__(self, i: int):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        x, y = self.folder[i]
        return x, y, i

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``(x, y, idx)`` for the given dataset indices, read in this process."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        items = [self[i] for i in idx.tolist()]
        x = torch.stack([it[0] for it in items]) if items else torch.zeros((0, *self.shape))
        return x, self.labels[idx], idx

    def subset(self, n: int | None) -> FolderDataset:
        """The first ``n`` examples (indices unchanged); the whole set when n is None."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ConfigError(f"subset size must be positive, got {n}")
        import copy

        sub = copy.copy(self)
        sub._limit = int(n)
        sub.labels = self.labels[:n]
        return sub

    def stats(self):
        """``(mean, std)`` per channel: ImageNet's for ``imagenet``, else computed from up to 512 images spread
        evenly over the set (deterministic)."""
        known = dataset_stats(self.name)
        if known is not None:
            return known
        if self._stats is None:
            idx = torch.linspace(0, len(self) - 1, min(len(self), 512)).round().long().unique()
            x, _, _ = self.get(idx)
            self._stats = (tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist()))
        return self._stats


def _folder_dataset(name: str, split: str, data_dir, image_size, num_workers) -> FolderDataset:
    if name == "imagenet":
        base = default_data_dir(data_dir)
        if base is None:
            raise ConfigError(
                "imagenet is not downloadable: point --data-dir / ADV_TRANSPORT_DATA at a folder holding "
                "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG"
            )
        base = base / "imagenet"
    else:
        base = Path(name[len(FOLDER_PREFIX) :]).expanduser()
    for sub in ("train", "val"):
        if not (base / sub).is_dir():
            note = " (ImageNet is not downloadable: get it from image-net.org)" if name == "imagenet" else ""
            raise ConfigError(
                f"{base} has no {sub}/ folder; expected {base}/train/<class>/* and {base}/val/<class>/*{note}"
            )
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    train = FolderDataset(base / "train", name, size, num_workers=num_workers)
    if split == "train":
        return train
    return FolderDataset(base / "val", name, size, class_to_idx=train.class_to_idx, num_workers=num_workers)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    image_size: int | None = None,
    num_workers: int | None = None,
):
    """Load a dataset split by name (a key of :data:`DATASETS` or ``folder:<path>``), with stable indices.

    ``split``: ``train`` or ``test`` (the ``val/`` folder of image folders). In memory (:class:`IndexedDataset`)
    unless :func:`is_streamed` (``imagenet``, ``folder:<path>``: read from disk, :class:`FolderDataset`;
    ``image_size`` defaults to 224, ``num_workers`` to one per core)."""
    check_dataset_name(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    if is_streamed(name):
        return _folder_dataset(name, split, data_dir, image_size, num_workers)
    if image_size is not None and image_size != DATASETS[name]["shape"][-1]:
        raise ConfigError(
            f"{name} images are {DATASETS[name]['shape'][-1]} pixels; --image-size applies to imagenet and folder: "
            "datasets only"
        )
    root = default_data_dir(data_dir)
    if root is not None:
        for fname in DATASETS[name]["files"]:
            if (root / fname).is_file():
                return _from_npz(root / fname, name, split)
    if not download:
        raise ConfigError(
            f"no {' or '.join(DATASETS[name]['files'])} in {root} and download is off; set --data-dir / "
            "ADV_TRANSPORT_DATA to a folder holding it, or allow the torchvision download"
        )
    return _from_torchvision(name, split, root or Path.home() / ".cache" / "adv_transport")


class IndexedBatches:
    """Seeded mini-batches ``(x, y, idx)`` over an :class:`IndexedDataset` or a :class:`FolderDataset`.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at (epoch, step) sees exactly the batches
    an uninterrupted run would have seen. A streaming dataset (``dataset.streaming``, e.g. an image folder) is read
    through a ``torch.utils.data.DataLoader`` with ``num_workers`` worker processes (default: the dataset's
    ``num_workers``) in that same order; in-memory datasets are sliced in this process. For a CUDA ``device`` a
    batch is gathered into pinned (page-locked) memory and copied without blocking the host.
    """

    def __init__(
        self,
        dataset: IndexedDataset,
        batch_size: int = 128,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        num_workers: int | None = None,
    ):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.num_workers = getattr(dataset, "num_workers", 0) if num_workers is None else int(num_workers)
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
        if getattr(self.dataset, "streaming", False):
            yield from self._stream(order, start_step)
            return
        pinned = self.device.type == "cuda"
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            if pinned:  # page-locked host memory: the copy to the GPU does not block the host
                x, y, idx = self._pinned_batch(idx)
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx
                continue
            x, y, idx = self.dataset.get(idx)
            yield x.to(self.device), y.to(self.device), idx

    def _pinned_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dataset.get(idx)`` in pinned memory: an :class:`IndexedDataset`'s rows are gathered and converted
        straight into a pinned buffer (the same values as ``get``), any other dataset's batch is copied there."""
        ds = self.dataset
        on_host = isinstance(getattr(ds, "images", None), torch.Tensor) and not ds.images.is_cuda
        if type(ds).get is not IndexedDataset.get or not on_host or ds.labels.is_cuda:
            x, y, idx = ds.get(idx)  # a dataset already on the GPU needs no pinned copy
            return (x if x.is_cuda else x.pin_memory()), (y if y.is_cuda else y.pin_memory()), idx
        rows = ds.images[idx]
        x = torch.empty(rows.shape, dtype=torch.float32, pin_memory=True).copy_(rows)
        if rows.dtype == torch.uint8:
            x.div_(255.0)
        y = torch.empty(idx.shape, dtype=torch.long, pin_memory=True)
        torch.index_select(ds.labels, 0, idx, out=y)
        return x, y, idx

    def __iter__(self):
        return self.iterate(self.epoch)

    def _stream(self, order: torch.Tensor, start_step: int):
        from torch.utils.data import DataLoader

        batches = [
            order[step * self.batch_size : (step + 1) * self.batch_size].tolist()
            for step in range(start_step, len(self))
        ]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y, idx in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.long()
