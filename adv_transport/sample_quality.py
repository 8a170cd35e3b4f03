"""Deprecated: moved to :mod:`adv_transport.gan.sample_quality`; this alias goes in the next release."""

import warnings

from .gan.sample_quality import *  # noqa: F403

warnings.warn(
    "adv_transport.sample_quality moved to adv_transport.gan.sample_quality", DeprecationWarning, stacklevel=2
)
