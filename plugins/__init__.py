"""Plugins for host ecosystems (installed as ``adv_transport.plugins``): one module per host library.

Nothing here is imported by ``import adv_transport``; import the module of the host you use, e.g.
``adv_transport.plugins.timm`` or ``adv_transport.plugins.torchattacks``.
"""
