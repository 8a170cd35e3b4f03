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

from .errors import ConfigError

STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
}
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
    return PreActResNet((2, 2, 2, 2), in_channels, num_classes, width)


def build_model(name: str, dataset: str = "mnist", num_classes: int = 10, normalize: bool = True) -> nn.Module:
    """Build a model by name for a dataset, wrapped in :class:`Normalized` with the dataset's statistics."""
    if dataset not in STATS:
        raise ConfigError(f"unknown dataset {dataset!r}; accepted: {', '.join(STATS)}")
    mean, std = STATS[dataset]
    channels = len(mean)
    size = 28 if dataset == "mnist" else 32
    if name in ("mnist-cnn", "small-cnn"):
        net = MnistCNN(channels, num_classes, size)
    elif name == "preact-resnet18":
        net = PreActResNet18(channels, num_classes)
    elif name.startswith("timm:"):
        from .plugins.timm import create_model  # host library, imported only when asked for

        net = create_model(name[len("timm:") :], in_chans=channels, num_classes=num_classes)
    else:
        raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    return Normalized(net, mean, std) if normalize else net
