"""Reference models, all taking inputs in [0, 1] with normalisation inside the model.

- ``mnist-cnn``: the small MNIST CNN of Wong et al. 2020 (two stride-2 convolutions of 16 and 32 channels, a 100-unit
  hidden layer).
- ``small-cnn``: the same architecture for any dataset (for CIFAR-10: 3 channels, 32x32), for CPU-sized comparisons.
- ``preact-resnet18``: the CIFAR PreAct-ResNet-18 (He et al. 2016) used by Wong et al. 2020 and RobustBench.
- ``timm:<name>``: any timm model, created through :mod:`adv_transport.plugins.timm` (timm imported only then).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DATASETS, DEFAULT_IMAGE_SIZE, check_dataset_name
from .errors import ConfigError

MODELS = ("mnist-cnn", "small-cnn", "preact-resnet18", "timm:<name>")


class Normalized(nn.Module):
    """``model((x - mean) / std)``: keeps the public input range [0, 1]."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class MnistCNN(nn.Module):
    """Conv(16, 4x4, s2) - ReLU - Conv(32, 4x4, s2) - ReLU - FC(100) - ReLU - FC(classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * side * side, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        layers = []
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(PreActBlock(self.in_planes, planes, stride=1 if (i == 0 or j > 0) else 2))
                self.in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(self.in_planes)
        self.linear = nn.Linear(self.in_planes, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def PreActResNet18(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> PreActResNet:
    """The CIFAR PreAct-ResNet-18 (He et al. 2016) of Wong et al. 2020 and RobustBench, without normalisation."""
    return PreActResNet((2, 2, 2, 2), in_channels, num_classes, width)


def build_model(
    name: str,
    dataset: str = "mnist",
    num_classes: int | None = None,
    normalize: bool = True,
    *,
    image_size: int | None = None,
    mean=None,
    std=None,
) -> nn.Module:
    """Build a model by name for a dataset, wrapped in :class:`Normalized` with the dataset's statistics.

    ``num_classes`` and ``image_size`` default to the dataset's (``folder:`` datasets: pass them, as
    ``build_training`` does from the data); ``mean``/``std`` override the statistics (required for ``folder:``
    datasets, whose statistics are computed from their images)."""
    check_dataset_name(dataset)
    spec = DATASETS.get(dataset)
    if mean is None or std is None:
        if spec is None:
            raise ConfigError(f"{dataset}: pass mean= and std= (a folder dataset's statistics come from its images)")
        mean, std = spec["mean"], spec["std"]
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if num_classes is None:
        if spec is None:
            raise ConfigError(f"{dataset}: pass num_classes= (a folder dataset's classes come from its folders)")
        num_classes = spec["classes"]
    if image_size is None:
        image_size = spec["shape"][-1] if spec is not None else DEFAULT_IMAGE_SIZE
    channels = len(mean)
    if name in ("mnist-cnn", "small-cnn"):
        net = MnistCNN(channels, num_classes, image_size)
    elif name == "preact-resnet18":
        net = PreActResNet18(channels, num_classes)
    elif name.startswith("timm:"):
        try:
            from .plugins.timm import create_model  # host library, imported only when asked for
        except ImportError as e:
            raise ConfigError(f"{name} needs timm ({e}); install it: pip install 'adv-transport[plugins]'") from None
        net = create_model(name[len("timm:") :], in_chans=channels, num_classes=num_classes)
    else:
        raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    return Normalized(net, mean, std) if normalize else net


def model_for_data(name: str, data, dataset: str | None = None) -> nn.Module:
    """:func:`build_model` for ``dataset`` (default ``data.name``): a named dataset's own class count, image size and
    statistics; for a ``folder:`` dataset those of the dataset object ``data`` (statistics computed from its images)."""
    dataset = dataset or data.name
    if dataset in DATASETS:
        return build_model(name, dataset)
    mean, std = data.stats()
    return build_model(name, dataset, num_classes=data.num_classes, image_size=data.shape[-1], mean=mean, std=std)
