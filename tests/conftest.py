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
