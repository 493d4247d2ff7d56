"""Case ids: safe file names, and the only way a path is built from one (never outside its folder)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from neonet_toolkit.dataset.errors import DatasetError

logger = logging.getLogger(__name__)


_SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_case_id(case_id: str, where: str = "") -> str:
    """Return ``case_id`` if it is a safe file-name stem, else raise :class:`DatasetError`.

    Case ids become file names (``imagesTr/<id>_0000.nii.gz``, ``<id>.npz``). An id with a path
    separator, ``..``, or a leading dot could escape the dataset folder, so it is refused.
    """
    cid = str(case_id)
    if not _SAFE_CASE_ID.match(cid) or ".." in cid:
        raise DatasetError(
            f"Case id {cid!r}{' in ' + where if where else ''} is not a safe file name: case ids may "
            "only contain letters, digits, '_', '-' and '.', must start with a letter or digit and must not "
            "contain '..' or path separators. Rename the case (image, label and CSV row)."
        )
    return cid


def safe_join(folder: str | Path, case_id: str, suffix: str = "") -> Path:
    """``folder/case_id+suffix``, guaranteed to stay inside ``folder``."""
    check_case_id(case_id)
    folder = Path(folder).resolve()
    p = (folder / f"{case_id}{suffix}").resolve()
    if folder != p.parent:
        raise DatasetError(f"Case id {case_id!r} resolves outside {folder}; rename the case.")
    return p
