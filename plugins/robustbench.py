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

:func:`export_submission` writes what a RobustBench model-zoo pull request needs for one of our checkpoints: the
weights under RobustBench's own key names and a zoo entry that builds the model from robustbench's own classes
(``PreActResNet`` with ``mu``/``sigma`` buffers as in its Wong2020Fast entry; ``WideResNet`` with ``mu``/``sigma``
buffers as in its Rice2020Overfitting entry; ``timm.create_model`` wrapped in its ``normalize_model`` as in its ImageNet
entries), so that loading the submission needs robustbench alone.
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

from adv_transport.checkpoint import Run, atomic_save, atomic_write_text, load_run
from adv_transport.data import DATASETS
from adv_transport.errors import ConfigError
from adv_transport.models import wrn_depth_width
from adv_transport.plugins import quiet_host_import
from adv_transport.threat import HOST_NORMS, canonical_norm, host_norm

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
        try:
            data = json.loads(Path(path).read_text())
            attacks = data["attacks_to_run"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{path} is not an AutoAttack state file (JSON with 'attacks_to_run', 'robust_flags', 'done'): "
                f"{type(e).__name__}: {e}; delete it to start the evaluation afresh"
            ) from None
        flags = data.get("robust_flags")
        return cls(
            attacks,
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
        self._aa = make_autoattack(model, norm, eps, version, self.seed, device)
        if attacks_to_run:
            self._aa.attacks_to_run = list(attacks_to_run)

    def __getattr__(self, name):
        return getattr(self.__dict__["_aa"], name)

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(text + "\n")

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None):
        norm = canonical_norm(self.norm)
        state = None
        if state_path is not None and Path(state_path).is_file():
            state = EvaluationState.from_disk(state_path)
            if state.attacks_to_run != set(self._aa.attacks_to_run):
                raise ConfigError(
                    f"the state {state_path} was made with other attacks ({sorted(state.attacks_to_run)}); accepted: "
                    f"a state of {sorted(self._aa.attacks_to_run)}, or none (remove the file to start over)"
                )
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
with quiet_host_import():
    import robustbench  # noqa: E402  (needs the module above)
    from robustbench.eval import benchmark  # noqa: E402
    from robustbench.model_zoo import model_dicts  # noqa: E402
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel  # noqa: E402
    from robustbench.utils import load_model  # noqa: E402

__all__ = [
    "AutoAttack",
    "EvaluationState",
    "architecture_name",
    "benchmark",
    "export_submission",
    "load_model",
    "preact_to_robustbench",
    "register_entry",
    "register_model",
    "robustbench",
    "robustbench_state_dict",
    "zoo_entry",
]

# ---------------------------------------------------------------------------------------------- submissions

NAME_PATTERN = re.compile(r"^[A-Z][A-Za-z]*\d{4}[A-Z][A-Za-z0-9_]*$")
# the leaderboards of robustbench 1.1.1 a model trained by adv-transport can enter, as RobustBench spells them
LEADERBOARDS = {"cifar10": ("Linf", "L2"), "cifar100": ("Linf",), "imagenet": ("Linf",)}
THREATS = tuple(HOST_NORMS.values())
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


def preact_to_robustbench(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``PreActResNet18`` weights under the key names of robustbench's ``PreActResNet(PreActBlock, [2, 2, 2, 2])``:
    ``layers.<i>.*`` -> ``layer<i // 2 + 1>.<i % 2>.*``, ``shortcut.weight`` -> ``shortcut.0.weight``; ``conv1``, the
    final ``bn`` and ``linear`` keep their names."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            if rest.startswith("shortcut."):
                rest = "shortcut.0." + rest[len("shortcut.") :]
            key = f"layer{int(i) // 2 + 1}.{int(i) % 2}.{rest}"
        out[key] = value
    return out


def _architecture(run_model: str, dataset: str) -> str:
    if run_model == "preact-resnet18":
        if dataset == "imagenet":
            raise ConfigError(
                "robustbench's PreActResNet pools a 4x4 map (32x32 inputs): for ImageNet submit a timm:<name> model"
            )
        return "preact"
    if wrn_depth_width(run_model) is not None:
        if dataset == "imagenet":
            raise ConfigError(
                "robustbench's WideResNet pools an 8x8 map (32x32 inputs): for ImageNet submit a timm:<name> model"
            )
        return "wrn"
    if run_model.startswith("timm:"):
        return "timm"
    raise ConfigError(
        f"RobustBench has no {run_model!r} architecture; submit a preact-resnet18, wrn-<depth>-<width> or timm:<name> "
        "model (RobustBench's own classes must be able to load it)"
    )


def robustbench_state_dict(model, architecture: str, dataset: str) -> dict[str, torch.Tensor]:
    """The weights of our :class:`~adv_transport.models.Normalized` ``model`` as the zoo entry of
    :func:`zoo_entry` loads them through ``robustbench.utils.load_model`` (which cuts the first six characters of
    every key holding 'model.' and, for ImageNet, prefixes 'model.' to every key)."""
    inner = {k: v.detach().cpu().clone() for k, v in model.model.state_dict().items()}
    mean, std = model.mean.detach().cpu().clone(), model.std.detach().cpu().clone()
    kind = _architecture(architecture, dataset)
    if kind == "preact":
        return {"mu": mean, "sigma": std, **preact_to_robustbench(inner)}
    if kind == "wrn":  # our WideResNet has robustbench's key names
        return {"mu": mean, "sigma": std, **inner}
    bad = [k for k in inner if "model." in k or "module." in k]
    if bad:
        raise ConfigError(f"robustbench's load_model would rename the keys {bad[:3]} of this timm model; cannot submit")
    if dataset == "imagenet":  # load_model adds 'model.'; the normalisation comes from the entry (missing keys allowed)
        return inner
    # CIFAR: normalize_model's keys, with the 'model.' that load_model cuts doubled
    return {"normalize.mean": mean, "normalize.std": std, **{f"model.model.{k}": v for k, v in inner.items()}}


def _floats(t) -> str:
    """A tuple literal of float32 values, each in the fewest digits that read back as the same float32."""

    def short(v: torch.Tensor) -> str:
        for digits in range(4, 10):
            text = f"{float(v):.{digits}g}"
            if torch.tensor(float(text), dtype=torch.float32) == v:
                return text
        return repr(float(v))

    return "(" + ", ".join(short(v) for v in torch.as_tensor(t, dtype=torch.float32).flatten()) + ")"


# where the class of a zoo entry goes in robustbench/model_zoo/<dataset>.py: next to the entry it follows
NEXT_TO = {"preact": " and the class next to Wong2020FastNet", "wrn": " and the class next to Rice2020OverfittingNet"}


def _normalized_subclass(name: str, base: str, cls: str, doc: str, init: str, mean, std, gdrive: str) -> str:
    """Source of a zoo entry whose model subclasses robustbench's ``cls`` (imported as ``base`` from
    ``robustbench.model_zoo.architectures``) with the data's mean and std as ``mu``/``sigma`` buffers, as
    RobustBench's own entries for normalised models do."""
    return (
        "import torch\n\n"
        f"from robustbench.model_zoo.architectures.{base}\n\n\n"
        f"class {name}Net({cls}):\n"
        f'    """{doc}"""\n\n'
        "    def __init__(self):\n"
        f"        {init}\n"
        f"        self.register_buffer('mu', torch.tensor({_floats(mean)}).view(1, 3, 1, 1))\n"
        f"        self.register_buffer('sigma', torch.tensor({_floats(std)}).view(1, 3, 1, 1))\n\n"
        "    def forward(self, x):\n"
        "        x = (x - self.mu) / self.sigma\n"
        f"        return super({name}Net, self).forward(x)\n\n\n"
        f"ENTRY = ('{name}', {{\n"
        f"    'model': {name}Net,\n"
        f"    'gdrive_id': '{gdrive}',\n"
        "})\n"
    )


def zoo_entry(
    name: str,
    architecture: str,
    dataset: str,
    threat_model: str,
    num_classes: int,
    mean,
    std,
    gdrive_id: str | None = None,
) -> str:
    """Python source of a robustbench model-zoo entry that needs robustbench (and timm, which it depends on) only.
    Executed, it defines ``ENTRY = (name, {'model': ..., 'gdrive_id': ...})``."""
    kind = _architecture(architecture, dataset)
    where = f"robustbench/model_zoo/{dataset}.py"
    gdrive = gdrive_id or f"<id of the uploaded models/{dataset}/{threat_model}/{name}.pt>"
    head = (
        f"# RobustBench model-zoo entry for {name} (written by adv-transport submit): robustbench's own classes.\n"
        # the OrderedDict of robustbench/model_zoo/<dataset>.py holding the entry is named as our norm
        f"# Add the entry to the `{canonical_norm(threat_model)}` OrderedDict of {where}"
        + NEXT_TO.get(kind, "")
        + f";\n# upload models/{dataset}/{threat_model}/{name}.pt and put its id in 'gdrive_id'.\n"
    )
    if kind == "preact":
        base = "resnet import PreActBlock, PreActResNet"
        doc = (
            "PreAct-ResNet-18 with a BN-ReLU before the pooling and the shortcut taken from the pre-activated\n"
            f"    input; inputs in [0, 1], the {dataset} mean and std inside the model (as Wong2020FastNet)."
        )
        init = (
            f"super().__init__(PreActBlock, [2, 2, 2, 2], num_classes={num_classes}, bn_before_fc=True,\n"
            "                         out_shortcut=True)"
        )
        return head + _normalized_subclass(name, base, "PreActResNet", doc, init, mean, std, gdrive)
    if kind == "wrn":
        depth, width = wrn_depth_width(architecture)
        doc = (
            f"WideResNet-{depth}-{width}; inputs in [0, 1], the {dataset} mean and std inside the model (as\n"
            "    Rice2020OverfittingNet)."
        )
        init = (
            f"super().__init__(depth={depth}, num_classes={num_classes}, widen_factor={width},\n"
            "                         sub_block1=False)"
        )
        return head + _normalized_subclass(name, "wide_resnet import WideResNet", "WideResNet", doc, init, mean, std,
                                           gdrive)
    timm_name = architecture[len("timm:") :]
    return head + (
        "import timm\n\n"
        "from robustbench.model_zoo.architectures.utils_architectures import normalize_model\n\n"
        f"ENTRY = ('{name}', {{\n"
        "    'model': lambda: normalize_model(\n"
        f"        timm.create_model('{timm_name}', pretrained=False, num_classes={num_classes}),\n"
        f"        {_floats(mean)}, {_floats(std)}),\n"
        f"    'gdrive_id': '{gdrive}',\n"
        "})\n"
    )


def register_entry(entry: str | Path, dataset: str = "cifar10", threat_model: str = "Linf") -> str:
    """Execute a zoo entry (its source, or the path of ``model_zoo_entry.py``) and add it to the installed
    robustbench's in-memory model zoo, so that ``load_model(name, model_dir=...)`` finds it. Returns its name."""
    source = Path(entry).read_text() if isinstance(entry, Path) or str(entry).endswith(".py") else str(entry)
    namespace: dict[str, Any] = {}
    exec(compile(source, "model_zoo_entry.py", "exec"), namespace)
    name, spec = namespace["ENTRY"]
    model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name] = spec
    return name


def register_model(name: str, architecture: str, dataset: str = "cifar10", threat_model: str = "Linf") -> None:
    """Add ``name`` (our ``architecture`` with ``dataset``'s class count and statistics) to robustbench's in-memory
    model zoo, through the same entry :func:`export_submission` writes."""
    spec = DATASETS[dataset]
    source = zoo_entry(name, architecture, dataset, threat_model, spec["classes"], spec["mean"], spec["std"], "local")
    register_entry(source, dataset, threat_model)


def _check(name: str, dataset: str, threat_model: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"RobustBench names are <Name><Year><Word>, e.g. Doe2026Langevin; got {name!r}")
    if dataset not in LEADERBOARDS:
        raise ConfigError(
            f"RobustBench has no leaderboard for {dataset!r}; accepted: {', '.join(LEADERBOARDS)} "
            "(RobustBench spells the threat models Linf and L2)"
        )
    if threat_model not in LEADERBOARDS[dataset]:
        accepted = ", ".join(f"{d} {t}" for d, ts in LEADERBOARDS.items() for t in ts)
        raise ConfigError(f"RobustBench has no {dataset} {threat_model!r} leaderboard; accepted: {accepted}")


def _eps_text(eps: float, threat_model: str) -> str:
    if threat_model == "Linf" and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


ARCHITECTURE_NAMES = {"preact-resnet18": "PreActResNet-18", "wrn-<depth>-<width>": "WideResNet-<depth>-<width>"}


def architecture_name(model: str) -> str:
    """The model card's ``architecture``, as RobustBench writes it: PreActResNet-18, WideResNet-28-10, resnet50."""
    wrn = wrn_depth_width(model)
    if wrn is not None:
        return f"WideResNet-{wrn[0]}-{wrn[1]}"
    return ARCHITECTURE_NAMES.get(model, model.replace("timm:", ""))


def export_submission(
    checkpoint: str | Path | Run,
    name: str,
    dataset: str,
    threat_model: str,
    out_dir: str | Path,
    report: dict | None = None,
    card: dict | None = None,
    gdrive_id: str | None = None,
) -> dict[str, Path]:
    """Write a RobustBench submission for an ``adv-transport train`` run (its folder, checkpoint, or
    :func:`~adv_transport.load_run` result) into ``out_dir``:

    - ``models/<dataset>/<threat>/<name>.pt``: ``{'state_dict': ...}`` under RobustBench's key names, as
      ``robustbench.utils.load_model`` reads it for the entry below;
    - ``model_info/<dataset>/<threat>/<name>.json``: the model card (``name`` is the paper title, from ``card``),
      filled from the evaluation ``report`` (AutoAttack accuracy only when it was run on all 10,000 test points;
      otherwise left empty and explained in the footnote); ``reported`` only when ``card`` gives it;
    - ``model_zoo_entry.py``: the entry for robustbench's model zoo (robustbench's own classes; see :func:`zoo_entry`).
    """
    _check(name, dataset, threat_model)
    run = checkpoint if isinstance(checkpoint, Run) else load_run(checkpoint)
    recipe = run.recipe
    if recipe.get("dataset") != dataset:
        raise ConfigError(f"the checkpoint was trained on {recipe.get('dataset')!r}, not {dataset!r}")
    norm = host_norm(recipe.get("norm", "linf"))
    if norm != threat_model:
        raise ConfigError(f"the checkpoint was trained against {norm} perturbations, not {threat_model}")
    model = run.model
    weights = robustbench_state_dict(model, recipe["model"], dataset)
    num_classes = int(run.config.get("num_classes") or DATASETS[dataset]["classes"])
    out = Path(out_dir)
    ckpt_path = atomic_save({"state_dict": weights}, out / "models" / dataset / threat_model / f"{name}.pt")
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
        "architecture": architecture_name(recipe["model"]),
        "eps": _eps_text(eps, threat_model),
        "clean_acc": f"{report['clean_acc']:.2f}" if "clean_acc" in report else "",
        "reported": "",
        "autoattack_acc": autoattack_acc,
        "footnote": " ".join(footnote) or None,
    }
    info.update(card or {})
    if not info["name"]:
        raise ConfigError("the card's 'name' is the paper's title: pass it (adv-transport submit --title '...')")
    card_path = atomic_write_text(
        json.dumps(info, indent=4) + "\n", out / "model_info" / dataset / threat_model / f"{name}.json"
    )
    entry = zoo_entry(name, recipe["model"], dataset, threat_model, num_classes, model.mean, model.std, gdrive_id)
    entry_path = atomic_write_text(entry, out / "model_zoo_entry.py")
    return {"checkpoint": ckpt_path, "card": card_path, "zoo_entry": entry_path}
