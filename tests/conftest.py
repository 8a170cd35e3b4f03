import numpy as np
import pytest
import torch
import torch.nn as nn

from adv_transport.data import IndexedDataset


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


class Linear2(nn.Module):
    """f(x) = W flat(x) + b with fixed weights: the input gradient is known in closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None = None):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.zeros(w.shape[0]) if b is None else b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


def synthetic_dataset(n=64, shape=(1, 8, 8), classes=3, seed=0) -> IndexedDataset:
    """Separable synthetic images: class c brightens a block of rows; values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand((n,) + shape, generator=g) * 0.3
    h = shape[1]
    band = h // classes
    for c in range(classes):
        x[y == c, :, c * band : (c + 1) * band] += 0.6
    return IndexedDataset(x.clamp(0, 1), y, name="synthetic")


class TinyCNN(nn.Module):
    def __init__(self, channels=1, classes=3, side=8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, classes)
        )

    def forward(self, x):
        return self.net(x)


def write_synthetic_mnist(folder, n_train=200, n_test=60, seed=0):
    """A tiny stand-in for mnist.npz (same arrays and dtypes as the real file): class c lights rows 2c..2c+3."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for c in range(10):
            x[y == c, 2 * c : 2 * c + 4, :] = 230
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return folder


@pytest.fixture()
def mnist_dir(tmp_path):
    return write_synthetic_mnist(tmp_path / "data")
