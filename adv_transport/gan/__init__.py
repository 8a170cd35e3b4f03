"""GAN training with any pair of optimizers (the normalized ones of :mod:`adv_transport.optim` included).

- :mod:`adv_transport.gan.game`: one step of the non-saturating GAN game (:func:`gan_step`).
- :mod:`adv_transport.gan.models`: small DCGAN-style players for 28x28 images.
- :mod:`adv_transport.gan.sample_quality`: sample measures that need no download (a Fréchet distance in the features
  of a project-trained MNIST CNN, mode coverage, image grids).
"""

from .game import ORDERS, StepLog, discriminator_objective, gan_step, generator_loss
from .models import DCGANDiscriminator, DCGANGenerator

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "ORDERS",
    "StepLog",
    "discriminator_objective",
    "gan_step",
    "generator_loss",
]
