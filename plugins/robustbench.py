"""RobustBench on the packages as released on PyPI, and RobustBench submissions.

robustbench 1.1.1 (the latest on PyPI) does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``: names of the GitHub-only ``autoattack`` package, while PyPI's
``pyautoattack`` (which robustbench depends on) is ``import pyautoattack`` with another API (no ``log_path`` or ``bs``;
``run_standard_evaluation`` returns ``(x_adv, y_adv)``; its resume from a state file is broken in 0.2.0).
Importing this module registers, *only when no ``autoattack`` module is importable*, a module ``autoattack`` with the
API robustbench calls, backed by pyautoattack, whose state file does resume. Then ``robustbench`` imports, and
``load_model`` and ``benchmark`` work::

    import adv_transport.plugins.robustbench as rb
    model = rb.load_model("Standard", model_dir="models", dataset="cifar10", threat_model="Linf")
    clean, robust = rb.benchmark(model, n_examples=100, dataset="cifar10", threat_model="Linf", eps=8 / 255)

:func:`export_submission` writes what a RobustBench model-zoo pull request needs for one of our checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from adv_transport.checkpoint import atomic_save, atomic_write_text, load_checkpoint
from adv_transport.errors import ConfigError
from adv_transport.models import STATS, build_model

from .autoattack import autoattack_flags, make_autoattack

# ---------------------------------------------------------------------------------------------- the autoattack module


class EvaluationState:
    """Per-point robustness flags of an AutoAttack run, saved as JSON after every batch (a working resume).

    ``robust_flags`` is a float tensor of 0/1 (robustbench takes its ``.mean()``, which a bool tensor refuses)."""

    def __init__(
        self,
        attacks_to_run,
        path: Path | None = None,
        robust_flags: torch.Tensor | None = None,
        done: int = 0,
        clean_accuracy: float = float("nan"),
    ):
        self.attacks_to_run = set(attacks_to_run)
        self.path = None if path is None else Path(path)
        self.robust_flags = robust_flags
        self.done = done
        self.clean_accuracy = clean_accuracy

    def to_disk(self) -> None:
        if self.path is None:
            return
        flags = None if self.robust_flags is None else self.robust_flags.int().tolist()
        data = {
            "attacks_to_run": sorted(self.attacks_to_run),
            "robust_flags": flags,
            "done": self.done,
            "clean_accuracy": self.clean_accuracy,
        }
        atomic_write_text(json.dumps(data), self.path)

    @classmethod
    def from_disk(cls, path) -> EvaluationState:
        data = json.loads(Path(path).read_text())
        flags = data.get("robust_flags")
        return cls(
            data["attacks_to_run"],
            path,
            None if flags is None else torch.tensor(flags, dtype=torch.float32),
            data.get("done", 0),
            data.get("clean_accuracy", float("nan")),
        )

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust_flags.float().mean())


class AutoAttack:
    """The ``autoattack.AutoAttack`` API that robustbench calls, running pyautoattack underneath.

    ``AutoAttack(model, norm='Linf', eps=.3, version='standard', device='cuda', log_path=None, seed=None)``;
    ``run_standard_evaluation(x, y, bs=250, state_path=None)`` returns the adversarial inputs. Other attributes
    (``apgd``, ``fab``, ``square``, ``attacks_to_run``, ...) are those of the underlying pyautoattack object.
    """

    def __init__(
        self,
        model,
        norm="Linf",
        eps=0.3,
        seed=None,
        verbose=True,
        attacks_to_run=(),
        version="standard",
        is_tf_model=False,
        device="cuda",
        log_path=None,
    ):
        if is_tf_model:
            raise ConfigError("TensorFlow models are not supported by this compatibility layer")
        self.model = model
        self.norm, self.epsilon, self.version, self.log_path = norm, eps, version, log_path
        self.seed = 0 if seed is None else seed
        self._aa = make_autoattack(model, {"Linf": "linf", "L2": "l2"}[norm], eps, version, self.seed, device)
        if attacks_to_run:
            self._aa.attacks_to_run = list(attacks_to_run)

    def __getattr__(self, name):
        return getattr(self.__dict__["_aa"], name)

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(text + "\n")

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None):
        norm = {"Linf": "linf", "L2": "l2"}[self.norm]
        state = None
        if state_path is not None and Path(state_path).is_file():
            state = EvaluationState.from_disk(state_path)
            if state.attacks_to_run != set(self._aa.attacks_to_run):
                raise ValueError(f"the state {state_path} was made with other attacks ({sorted(state.attacks_to_run)})")
        state = state or EvaluationState(self._aa.attacks_to_run, state_path, torch.zeros(len(x_orig)))
        x_adv = x_orig.clone().detach()
        for start in range(state.done * bs, len(x_orig), bs):
            x, y = x_orig[start : start + bs], y_orig[start : start + bs]
            flags = autoattack_flags(self.model, x, y, norm, self.epsilon, self.version, self.seed, bs, aa=self._aa)
            x_adv[start : start + bs] = flags.pop("x_adv").to(x_adv.device)
            state.robust_flags[start : start + bs] = list(flags.values())[-1].float()
            state.done += 1
            state.to_disk()
            self._log(
                f"batch {state.done}: robust accuracy so far {state.robust_flags[: start + bs].float().mean():.2%}"
            )
        if return_labels:
            with torch.no_grad():
                return x_adv, torch.cat([self.model(x_adv[i : i + bs]).argmax(1) for i in range(0, len(x_adv), bs)])
        return x_adv


def install_autoattack_compat() -> bool:
    """Register the compatibility ``autoattack`` module unless a real one is importable. Returns True if installed."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return False
    module = types.ModuleType("autoattack", __doc__)
    state = types.ModuleType("autoattack.state")
    module.AutoAttack, module.EvaluationState, module.__path__ = AutoAttack, EvaluationState, []
    state.EvaluationState = EvaluationState
    module.state = state
    sys.modules["autoattack"], sys.modules["autoattack.state"] = module, state
    return True


install_autoattack_compat()
import robustbench  # noqa: E402  (needs the module above)
from robustbench.eval import benchmark  # noqa: E402
from robustbench.model_zoo import model_dicts  # noqa: E402
from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel  # noqa: E402
from robustbench.utils import load_model  # noqa: E402

__all__ = [
    "AutoAttack",
    "EvaluationState",
    "benchmark",
    "export_submission",
    "load_model",
    "register_model",
    "robustbench",
    "zoo_model",
]

# ---------------------------------------------------------------------------------------------- submissions

NAME_PATTERN = re.compile(r"^[A-Z][A-Za-z]*\d{4}[A-Z][A-Za-z0-9_]*$")
THREATS = ("Linf", "L2")
CARD_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
)


class RobustBenchModel(nn.Module):
    """Inputs in [0, 1], normalisation inside. Its state-dict keys avoid 'model.' and 'module.', which robustbench's
    ``load_model`` strips from every key."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mu", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("sigma", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mu) / self.sigma)


def zoo_model(architecture: str, dataset: str) -> RobustBenchModel:
    """An untrained model of ``architecture`` (our names: preact-resnet18, mnist-cnn, timm:<name>) for ``dataset``."""
    normalized = build_model(architecture, dataset)
    return RobustBenchModel(normalized.model, *STATS[dataset])


def register_model(name: str, architecture: str, dataset: str = "cifar10", threat_model: str = "Linf") -> None:
    """Add ``name`` to robustbench's in-memory model zoo so that ``load_model(name, model_dir=...)`` finds it."""
    zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    zoo[name] = {"model": lambda: zoo_model(architecture, dataset), "gdrive_id": ""}


def _check(name: str, dataset: str, threat_model: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"RobustBench names are <Name><Year><Word>, e.g. Doe2026Langevin; got {name!r}")
    if dataset not in ("cifar10", "cifar100"):
        raise ConfigError(
            f"RobustBench has no leaderboard for {dataset!r} that we can train for; accepted: cifar10 "
            "(cifar100 models are not built by adv-transport yet)"
        )
    if threat_model not in THREATS:
        raise ConfigError(f"threat model {threat_model!r} not accepted; accepted: {', '.join(THREATS)}")


def export_submission(
    checkpoint: str | Path,
    name: str,
    dataset: str,
    threat_model: str,
    out_dir: str | Path,
    report: dict | None = None,
    card: dict | None = None,
) -> dict[str, Path]:
    """Write a RobustBench submission for an ``adv-transport train`` checkpoint into ``out_dir``:

    - ``models/<dataset>/<threat>/<name>.pt``: ``{'state_dict': ...}`` as ``robustbench.utils.load_model`` reads it;
    - ``model_info/<dataset>/<threat>/<name>.json``: the model card, filled from the evaluation ``report``
      (AutoAttack accuracy only when it was run on all 10,000 test points; otherwise left empty and explained in
      the footnote);
    - ``model_zoo_entry.py``: the entry to add to robustbench's model zoo.
    """
    _check(name, dataset, threat_model)
    state = load_checkpoint(checkpoint)
    recipe = state.get("config", {}).get("recipe") or {}
    if recipe.get("dataset") != dataset:
        raise ConfigError(f"the checkpoint was trained on {recipe.get('dataset')!r}, not {dataset!r}")
    rb_model = zoo_model(recipe["model"], dataset)
    rb_model.net.load_state_dict({k[len("model.") :]: v for k, v in state["model"].items() if k.startswith("model.")})
    out = Path(out_dir)
    ckpt_path = atomic_save(
        {"state_dict": rb_model.state_dict()}, out / "models" / dataset / threat_model / f"{name}.pt"
    )
    report = report or {}
    footnote = []
    aa = report.get("autoattack_acc")
    n = report.get("n_examples")
    if aa is not None and n == 10000:
        autoattack_acc = f"{aa:.2f}"
    else:
        autoattack_acc = ""
        footnote.append(
            "AutoAttack not run on the 10,000 test points yet"
            + (f" (measured {aa:.2f} % on the first {n})" if aa is not None else "")
            + "."
        )
    if report.get("lossy_data"):
        footnote.append("Evaluated on a JPEG-lossy CIFAR-10 copy: not comparable with the leaderboard.")
    eps = report.get("eps", recipe.get("eps"))
    info: dict[str, Any] = {
        "link": "",
        "name": "",
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "venue": "",
        "architecture": recipe["model"],
        "eps": f"{eps * 255:.0f}/255" if threat_model == "Linf" else f"{eps:g}",
        "clean_acc": f"{report['clean_acc']:.2f}" if "clean_acc" in report else "",
        "reported": autoattack_acc,
        "autoattack_acc": autoattack_acc,
        "footnote": " ".join(footnote) or None,
    }
    info.update(card or {})
    card_path = atomic_write_text(
        json.dumps(info, indent=4) + "\n", out / "model_info" / dataset / threat_model / f"{name}.json"
    )
    entry = (
        f"# robustbench/model_zoo/{dataset.replace('cifar10', 'cifar10')}.py, in the {threat_model} OrderedDict:\n"
        f"('{name}', {{\n"
        f"    # architecture '{recipe['model']}' from adv-transport (adv_transport.plugins.robustbench.zoo_model);\n"
        f"    # inputs in [0, 1], normalisation inside the model\n"
        f"    'model': lambda: zoo_model('{recipe['model']}', '{dataset}'),\n"
        f"    'gdrive_id': '<id of the uploaded models/{dataset}/{threat_model}/{name}.pt>',\n"
        "}),\n"
    )
    entry_path = atomic_write_text(entry, out / "model_zoo_entry.py")
    return {"checkpoint": ckpt_path, "card": card_path, "zoo_entry": entry_path}
