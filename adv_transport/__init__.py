"""adv_transport: Langevin adversarial transport (ATL) for PyTorch classifiers.

The public API is re-exported here; host libraries (timm, torchattacks, robustbench, pyautoattack) are only touched
by ``adv_transport.plugins.*``.
"""

from .augment import RandomCropFlip
from .bank import AdversarialBank
from .checkpoint import CheckpointError, Run, load_model, load_run
from .data import FolderDataset, IndexedBatches, IndexedDataset, load_dataset
from .errors import (
    AdvTransportError,
    BankMismatchError,
    ConfigError,
    DataRangeError,
    MissingIndexError,
    NonFiniteLossError,
)
from .langevin import LangevinSampler
from .methods import ATL, FGSMRS, NFGSM, PGD, Clean, InnerStep
from .models import MnistCNN, Normalized, PreActResNet18, build_model
from .schedules import Cosine, Linear
from .threat import ThreatModel
from .trainer import Trainer

__version__ = "0.1.0"

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
    "Cosine",
    "DataRangeError",
    "FolderDataset",
    "IndexedBatches",
    "IndexedDataset",
    "InnerStep",
    "LangevinSampler",
    "Linear",
    "MissingIndexError",
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
