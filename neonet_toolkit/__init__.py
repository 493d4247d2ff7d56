"""NeoNet toolkit: nnU-Net-style, self-configuring PNI prediction from 3D MRI."""
import logging

from neonet_toolkit.version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
