"""Plugins for host ecosystems (installed as ``adv_transport.plugins``): one module per host library.

Nothing here is imported by ``import adv_transport``; import the module of the host you use, e.g.
``adv_transport.plugins.timm`` or ``adv_transport.plugins.torchattacks``.
"""

import contextlib
import warnings

# warnings the host libraries' own imports raise on every import, which their users cannot act on (they concern the
# host's code, not the caller's): silenced around those imports only, nowhere else
HOST_IMPORT_NOISE = (
    (FutureWarning, r"`torch\.jit\.interface` is deprecated"),  # timm 1.0.9's layers, through torch 2.x
    (UserWarning, r"pkg_resources is deprecated as an API"),  # robustbench 1.1.1's loaders, through setuptools
)


@contextlib.contextmanager
def quiet_host_import():
    """Import a host library without :data:`HOST_IMPORT_NOISE` (every other warning is shown as usual)."""
    with warnings.catch_warnings():
        for category, message in HOST_IMPORT_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
