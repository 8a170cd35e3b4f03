"""Sample-quality measures for generated MNIST digits that need no download.

- :func:`classifier_frechet_distance`: the Fréchet distance between Gaussians fitted to the 100-unit hidden features
  of an MNIST classifier trained by this project (``adv-transport train --method clean --dataset mnist``; the small
  MNIST CNN), on real and on generated images. It is FID's formula on another network's features, so it is named for
  what it is and its values are not comparable with FID.
- :func:`mode_coverage`: the class histogram of generated images under that classifier: how many classes are
  covered (at least ``min_share`` of the samples) and its KL divergence to the uniform distribution.
- :func:`save_grid`: an image grid as PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint
from ..errors import ConfigError
from ..models import build_model


def load_feature_classifier(checkpoint: str | Path, device="cpu") -> nn.Module:
    """The MNIST CNN of an ``adv-transport train --dataset mnist`` run, in eval mode."""
    state = load_checkpoint(checkpoint)
    recipe = state.get("config", {}).get("recipe", {})
    if recipe.get("dataset") != "mnist" or recipe.get("model") not in ("mnist-cnn", "small-cnn"):
        raise ConfigError(f"{checkpoint} is not an MNIST CNN checkpoint (recipe {recipe.get('model')!r} on "
                          f"{recipe.get('dataset')!r}); train one with: adv-transport train --method clean")
    model = build_model(recipe["model"], "mnist")
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The 100-unit hidden features (after the ReLU before the last linear layer) of the MNIST CNN."""
    body = nn.Sequential(*list(classifier.model.net)[:-1])  # Normalized(MnistCNN).model.net minus the last layer
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        out.append(body((x - classifier.mean) / classifier.std).double().cpu())
    return torch.cat(out)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between Gaussian fits of two feature sets."""
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("the Fréchet distance needs at least 2 samples per set")
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))


def classifier_frechet_distance(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between real and generated images in the classifier's feature space."""
    return frechet_distance(features(classifier, real), features(classifier, fake))


@torch.no_grad()
def mode_coverage(classifier: nn.Module, images: torch.Tensor, num_classes: int = 10, min_share: float = 0.01) -> dict:
    """Class histogram of ``images`` under ``classifier``: shares, classes covered, KL(histogram || uniform)."""
    preds = torch.cat([classifier(images[i:i + 500]).argmax(1).cpu() for i in range(0, len(images), 500)])
    hist = torch.bincount(preds, minlength=num_classes).double() / len(preds)
    nz = hist[hist > 0]
    kl = float((nz * (nz * num_classes).log()).sum())
    return {"histogram": hist.tolist(), "classes_covered": int((hist >= min_share).sum()), "kl_to_uniform": kl}


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10) -> Path:
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images[: nrow * nrow].detach().cpu(), str(path), nrow=nrow)
    return path
