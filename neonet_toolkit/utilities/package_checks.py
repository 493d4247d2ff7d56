"""Installed packages that conflict with NeoNet's stack, detected from their metadata (never imported)."""
from __future__ import annotations

from importlib import metadata


def monai_generative_warning() -> str | None:
    """A warning when the old ``monai-generative`` package sits next to MONAI core, else ``None``.

    Its networks and schedulers moved into MONAI core (``monai.networks.nets``, ``monai.networks.schedulers``,
    ``monai.inferers``) in MONAI 1.4; NeoNet uses those. monai-generative 0.2.3 fails to import with
    MONAI >= 1.6, so it must not be imported at all; it is only detected here."""
    try:
        gen = metadata.version("monai-generative")
    except metadata.PackageNotFoundError:
        return None
    try:
        core = metadata.version("monai")
    except metadata.PackageNotFoundError:
        core = "not installed"
    return (f"monai-generative {gen} is installed next to MONAI {core}. NeoNet does not use it: its generative "
            "networks are part of MONAI core since 1.4, and monai-generative 0.2.3 fails to import with MONAI >= "
            "1.6. Nothing in NeoNet imports it; remove it with `pip uninstall monai-generative` unless another "
            "tool in this environment needs it.")
