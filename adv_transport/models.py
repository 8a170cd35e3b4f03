"""Reference models, all taking inputs in [0, 1] with normalisation inside the model.

- ``mnist-cnn``: the small MNIST CNN of Wong et al. 2020 (two stride-2 convolutions of 16 and 32 channels, a 100-unit
  hidden layer).
- ``small-cnn``: the same architecture for any dataset (for CIFAR-10: 3 channels, 32x32), for CPU-sized comparisons;
  ``small-cnn-w<k>`` the same with k times the channels and hidden units (e.g. ``small-cnn-w2``: 32, 64, 200).
- ``preact-resnet18``: the CIFAR PreAct-ResNet-18 (He et al. 2016) used by Wong et al. 2020 and RobustBench.
- ``wrn-<depth>-<width>``: the WideResNet (Zagoruyko & Komodakis 2016) of TRADES, Rice et al. 2020 and RobustBench,
  e.g. ``wrn-28-10``, ``wrn-34-10``; its weights have the key names of robustbench's ``WideResNet``.
- ``timm:<name>``: any timm model, created through :mod:`adv_transport.plugins.timm` (timm imported only then).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DATASETS, DEFAULT_IMAGE_SIZE, check_dataset_name
from .errors import ConfigError

MODELS = ("mnist-cnn", "small-cnn", "small-cnn-w<k>", "preact-resnet18", "wrn-<depth>-<width>", "timm:<name>")
WRN_PATTERN = re.compile(r"^wrn-(\d+)-(\d+)$")
SMALL_CNN_PATTERN = re.compile(r"^small-cnn(?:-w(\d+))?$")


def small_cnn_width(name: str) -> int | None:
    """The width multiplier of ``small-cnn`` (1) or ``small-cnn-w<k>`` (k >= 1); None for other names."""
    m = SMALL_CNN_PATTERN.match(name) if isinstance(name, str) else None
    if m is None:
        return None
    k = int(m.group(1) or 1)
    if k < 1:
        raise ConfigError(f"{name}: the width multiplier of small-cnn-w<k> is an integer >= 1")
    return k


def wrn_depth_width(name: str) -> tuple[int, int] | None:
    """``(depth, width)`` of a ``wrn-<depth>-<width>`` name (checked: depth 10, 16, 22, 28, 34, ..., width >= 1);
    None for other names."""
    m = WRN_PATTERN.match(name) if isinstance(name, str) else None
    if m is None:
        return None
    depth, width = int(m.group(1)), int(m.group(2))
    if depth < 10 or (depth - 4) % 6 or width < 1:
        raise ConfigError(
            f"{name}: a WideResNet's depth is 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...) and its width >= 1, "
            "e.g. wrn-28-10 or wrn-34-10"
        )
    return depth, width


def check_model_name(name: str) -> str:
    """``name`` if it names one of :data:`MODELS` (``timm:<name>``: any name; timm checks it when building), else a
    :class:`ConfigError` listing them."""
    if name in ("mnist-cnn", "preact-resnet18") or small_cnn_width(name) or wrn_depth_width(name) is not None:
        return name
    if isinstance(name, str) and name.startswith("timm:"):
        return name
    raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")


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
    """Conv(16, 4x4, s2) - ReLU - Conv(32, 4x4, s2) - ReLU - FC(100) - ReLU - FC(classes).

    ``width`` multiplies the 16, 32 and 100 (``small-cnn-w<k>``)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 1):
        super().__init__()
        side = image_size // 4
        c1, c2, hidden = 16 * width, 32 * width, 100 * width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class _PreActPair(nn.Module):
    """The residual branch of a pre-activation block, BN-ReLU-Conv3x3 twice (``bn1``, ``conv1``, ``bn2``,
    ``conv2``), and a 1x1 convolution of the pre-activated input as the shortcut where the shape changes (else
    ``None``: the identity), under the attribute name ``shortcut_name``."""

    shortcut_name = "shortcut"

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        projection = None
        if stride != 1 or in_planes != planes:
            projection = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        setattr(self, self.shortcut_name, projection)


class PreActBlock(_PreActPair):
    expansion = 1

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


class WideBlock(_PreActPair):
    """BN-ReLU-Conv3x3-BN-ReLU-Conv3x3 plus a shortcut: the identity, or (when the width changes) a 1x1 convolution
    ``convShortcut`` of the pre-activated input. Named as robustbench's ``wide_resnet.BasicBlock`` (no dropout)."""

    shortcut_name = "convShortcut"  # robustbench's key name

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return shortcut + out


class WideStage(nn.Module):
    """``n`` :class:`WideBlock` s in ``.layer`` (robustbench's ``NetworkBlock``); the first one changes width/stride."""

    def __init__(self, n: int, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(n))
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-``depth``-``width`` (Zagoruyko & Komodakis 2016) as in TRADES and RobustBench, without
    normalisation: a 16-channel 3x3 convolution, three stages of ``(depth - 4) / 6`` blocks of 16, 32 and 64 times
    ``width`` channels (strides 1, 2, 2), BN-ReLU, global average pooling and a linear layer. Its state dict has the
    keys of ``robustbench.model_zoo.architectures.wide_resnet.WideResNet(depth, num_classes, width)`` (``conv1``,
    ``block<k>.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``) and the same initialisation."""

    def __init__(self, depth: int = 28, width: int = 10, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        wrn_depth_width(f"wrn-{depth}-{width}")  # checks them
        n = (depth - 4) // 6
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(n, channels[0], channels[1], 1)
        self.block2 = WideStage(n, channels[1], channels[2], 2)
        self.block3 = WideStage(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # robustbench: avg_pool2d(out, 8), the same on 32x32 inputs
        return self.fc(out)


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
    wrn = wrn_depth_width(name)
    if name == "mnist-cnn" or small_cnn_width(name):
        net = MnistCNN(channels, num_classes, image_size, width=small_cnn_width(name) or 1)
    elif name == "preact-resnet18":
        net = PreActResNet18(channels, num_classes)
    elif wrn is not None:
        net = WideResNet(*wrn, in_channels=channels, num_classes=num_classes)
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
    """:func:`build_model` for ``dataset`` (default ``data.name``) and the images of the dataset object ``data``: their
    side (``data.shape``, e.g. ImageNet read at ``--image-size``). A named dataset's statistics and class count
    (ImageNet, read from folders: the count of ``data``'s class folders, as the run's config stores it); a ``folder:``
    dataset's class count and statistics (computed from its images) from ``data``."""
    dataset = dataset or data.name
    shape = getattr(data, "shape", None)
    image_size = int(shape[-1]) if shape else None
    if dataset in DATASETS:
        num_classes = data.num_classes if getattr(data, "streaming", False) else None
        return build_model(name, dataset, num_classes=num_classes, image_size=image_size)
    mean, std = data.stats()
    return build_model(name, dataset, num_classes=data.num_classes, image_size=image_size, mean=mean, std=std)
