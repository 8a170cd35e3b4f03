"""Small DCGAN-style players for 28x28 grey images (MNIST), for the GAN experiments of :mod:`adv_transport.gan`."""

from __future__ import annotations

import torch.nn as nn


class DCGANGenerator(nn.Module):
    """z (``z_dim``) -> 128x7x7 -> 64x14x14 -> 1x28x28, images in [0, 1] (sigmoid)."""

    def __init__(self, z_dim: int = 64, width: int = 64):
        super().__init__()
        self.z_dim = z_dim
        self.fc = nn.Sequential(nn.Linear(z_dim, 2 * width * 7 * 7), nn.BatchNorm1d(2 * width * 7 * 7), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1), nn.Sigmoid(),
        )
        self.width = width

    def forward(self, z):
        return self.net(self.fc(z).view(-1, 2 * self.width, 7, 7))


class DCGANDiscriminator(nn.Module):
    """1x28x28 -> 64x14x14 -> 128x7x7 -> logit (LeakyReLU, no batch-norm)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, 1),
        )

    def forward(self, x):
        return self.net(x).flatten()
