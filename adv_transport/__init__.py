"""adv_transport: Langevin adversarial transport (ATL) for PyTorch classifiers.

The public API the README uses is re-exported here, each name with a one-line docstring; the GAN code is in
:mod:`adv_transport.gan`, the evaluation in :mod:`adv_transport.eval`. Host libraries (timm, torchattacks,
robustbench, pyautoattack) are only touched by ``adv_transport.plugins.*``.
"""

from . import schedules
from .augment import RandomCropFlip
from .bank import AdversarialBank
from .checkpoint import CheckpointError, Run, load_model, load_run
from .data import FolderDataset, IndexedBatches, IndexedDataset, load_dataset
from .distributed import Runtime
from .errors import (
    AdvTransportError,
    BankMismatchError,
    ConfigError,
    DataRangeError,
    EmptyLoaderError,
    MissingIndexError,
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteParameterError,
)
from .eval import evaluate
from .langevin import LangevinSampler
from .methods import ATL, ATTA, FGSMPGI, FGSMRS, NFGSM, PGD, Clean, InnerStep
from .models import MnistCNN, Normalized, PreActResNet18, build_model
from .optim import AdaDir, AdaLR, NormalizedSGD
from .recipes import Recipe, recipe
from .schedules import CosineSchedule, LinearSchedule
from .threat import ThreatModel
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "ATL",
    "ATTA",
    "AdaDir",
    "AdaLR",
    "AdvTransportError",
    "AdversarialBank",
    "BankMismatchError",
    "CheckpointError",
    "Clean",
    "ConfigError",
    "CosineSchedule",
    "DataRangeError",
    "EmptyLoaderError",
    "FGSMPGI",
    "FGSMRS",
    "FolderDataset",
    "IndexedBatches",
    "IndexedDataset",
    "InnerStep",
    "LangevinSampler",
    "LinearSchedule",
    "MissingIndexError",
    "MnistCNN",
    "NFGSM",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteParameterError",
    "Normalized",
    "NormalizedSGD",
    "PGD",
    "PreActResNet18",
    "RandomCropFlip",
    "Recipe",
    "Run",
    "Runtime",
    "ThreatModel",
    "Trainer",
    "build_model",
    "evaluate",
    "load_dataset",
    "load_model",
    "load_run",
    "recipe",
]


def __getattr__(name: str):
    """``Linear`` and ``Cosine``: the former top-level names of the schedules (deprecated aliases, one release)."""
    if name in ("Linear", "Cosine"):
        return getattr(schedules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
