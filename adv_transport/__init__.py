"""adv_transport: Langevin adversarial transport (ATL) for PyTorch classifiers.

The public API is re-exported here; host libraries (timm, torchattacks, robustbench, pyautoattack) are only touched
by ``adv_transport.plugins.*``.
"""

from . import schedules
from .augment import RandomCropFlip
from .bank import AdversarialBank
from .checkpoint import CheckpointError, Run, load_model, load_run
from .data import FolderDataset, IndexedBatches, IndexedDataset, load_dataset
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
from .langevin import LangevinSampler
from .methods import ATL, FGSMRS, NFGSM, PGD, Clean, InnerStep
from .models import MnistCNN, Normalized, PreActResNet18, build_model
from .schedules import CosineSchedule, LinearSchedule
from .threat import ThreatModel
from .trainer import Trainer

__version__ = "0.1.0"


def __getattr__(name: str):
    """``Linear`` and ``Cosine``: the former top-level names of the schedules (deprecated aliases, one release)."""
    if name in ("Linear", "Cosine"):
        return getattr(schedules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATL",
    "RandomCropFlip",
    "FGSMRS",
    "NFGSM",
    "PGD",
    "AdvTransportError",
    "AdversarialBank",
    "BankMismatchError",
    "CheckpointError",
    "Clean",
    "ConfigError",
    "CosineSchedule",
    "DataRangeError",
    "FolderDataset",
    "IndexedBatches",
    "IndexedDataset",
    "InnerStep",
    "LangevinSampler",
    "LinearSchedule",
    "EmptyLoaderError",
    "MissingIndexError",
    "NonFiniteError",
    "NonFiniteParameterError",
    "MnistCNN",
    "NonFiniteLossError",
    "Normalized",
    "PreActResNet18",
    "Run",
    "ThreatModel",
    "Trainer",
    "build_model",
    "load_dataset",
    "load_model",
    "load_run",
    "__version__",
]
