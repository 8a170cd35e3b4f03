import torch
import torch.nn as nn

from adv_transport import ATL, AdversarialBank, LangevinSampler, ThreatModel
from adv_transport.augment import Augmented, CropFlipParams, RandomCropFlip, crop_flip


class Pixel(nn.Module):
    """Two-class model that looks at one pixel (r, c) of its input: logits (0, pixel)."""

    def __init__(self, r, c):
        super().__init__()
        self.r, self.c = r, c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        v = x[:, 0, self.r, self.c] + self.dummy
        return torch.stack([torch.zeros_like(v), v], 1)


def test_crop_flip_matches_manual_indexing():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) / 32
    p = CropFlipParams(dy=torch.tensor([0, 2]), dx=torch.tensor([1, 2]), flip=torch.tensor([False, True]))
    out = crop_flip(x, p, padding=1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 0:4, 1:5])
    assert torch.equal(out[1], padded[1, :, 2:6, 2:6].flip(-1))


def test_crop_flip_and_its_gradient_match_per_example_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 7, 5, generator=g, requires_grad=True)
    p = RandomCropFlip(padding=2).sample(x, generator=g)
    weights = torch.rand(16, 3, 7, 5, generator=g)
    out = crop_flip(x, p, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    ref = []
    for i in range(16):
        crop = padded[i, :, p.dy[i] : p.dy[i] + 7, p.dx[i] : p.dx[i] + 5]
        ref.append(crop.flip(-1) if p.flip[i] else crop)
    ref = torch.stack(ref)
    assert torch.equal(out, ref)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), x)
    assert torch.allclose(grad, ref_grad)
    assert torch.equal(crop_flip(x, p, padding=2), out)  # the cached index of the visit is reused as is


def test_delta_stays_in_the_unaugmented_frame():
    # The model reads pixel (1, 1) of the augmented image. With padding 2, crop offset (dy, dx) and a flip, that pixel
    # comes from x[1 + dy - 2, (W - 1 - 1) + dx - 2] (the flip comes after the crop). ATL must move exactly that
    # pixel of the *un-augmented* delta, and the stored delta must be found there on the next visit.
    t = ThreatModel("linf", 0.3)
    bank = AdversarialBank(2, (1, 6, 6), t)
    atl = ATL(bank, LangevinSampler(t, eta=0.1, noise_scale=0.0))
    x = torch.full((2, 1, 6, 6), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    params = CropFlipParams(dy=torch.tensor([3, 1]), dx=torch.tensor([2, 1]), flip=torch.tensor([False, True]))
    view = Augmented(Pixel(1, 1), params, padding=2)
    atl.perturb(view, x, y, torch.arange(2), 0.0)
    atl.commit()
    delta, _ = bank.read(torch.arange(2), x)
    expected = torch.zeros_like(delta)
    expected[0, 0, 1 + 3 - 2, 1 + 2 - 2] = 0.1  # no flip
    expected[1, 0, 1 + 1 - 2, (6 - 1 - 1) + 1 - 2] = 0.1  # flipped column
    assert torch.allclose(delta, expected)
    # the augmented adversarial input the model sees carries the perturbation at the pixel it reads
    seen = crop_flip(x + delta, params, 2)
    assert torch.allclose(seen[:, 0, 1, 1], torch.tensor([0.6, 0.6]))


def test_random_crop_flip_samples_per_example_parameters():
    aug = RandomCropFlip(padding=4, flip=True)
    p = aug.sample(torch.zeros(256, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert p.dy.min() >= 0 and p.dy.max() <= 8 and len(p.dy.unique()) > 5
    assert 0 < p.flip.float().mean() < 1
