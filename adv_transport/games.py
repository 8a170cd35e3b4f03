"""Deprecated: moved to :mod:`adv_transport.gan` (``gan.game`` and ``gan.models``); this alias goes in the next
release."""

import warnings

from .gan.game import *  # noqa: F403
from .gan.game import ORDERS as MODES  # noqa: F401  (the update order was called "mode")
from .gan.models import DCGANDiscriminator, DCGANGenerator  # noqa: F401

warnings.warn("adv_transport.games moved to adv_transport.gan", DeprecationWarning, stacklevel=2)
