"""Reading a model package safely, zip or folder: entry names that cannot leave the target folder, entry types
(no links, no special or encrypted entries, no duplicates), the member list against the manifest, size caps while
unpacking, and the sha256 of every file. Nothing here loads a file's content beyond the manifest
(:mod:`neonet_toolkit.models.package` verifies the checkpoints afterwards).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.io import load_json
from neonet_toolkit.version import __version__

MANIFEST = "manifest.json"
FORMAT = "neonet_model_package"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
_CHUNK = 1 << 20


class PackageError(DatasetError):
    """A model package that cannot be exported, verified, installed or opened; the message names the file and why."""


# ----------------------------------------------------------------------------- small helpers
def _major(version: str) -> str:
    return str(version).split(".")[0]


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _check_member_name(name: str, where: str) -> PurePosixPath:
    """A package-relative path that cannot leave the package folder (refused otherwise, naming it)."""
    if not isinstance(name, str) or not name:
        raise PackageError(f"{where}: an empty or non-text entry name {name!r} is not allowed in a model package.")
    if "\\" in name or "\x00" in name or ":" in name:
        raise PackageError(f"{where}: entry {name!r} contains a backslash, NUL or drive colon; a model package only "
                           "holds plain relative paths. Refusing the package.")
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise PackageError(f"{where}: entry {name!r} is an absolute path, which would be written outside the target "
                           "folder. Refusing the package.")
    p = PurePosixPath(name)
    if any(part in ("..", ".", "") for part in name.rstrip("/").split("/")):
        raise PackageError(f"{where}: entry {name!r} contains '..' or '.' components (a path escaping the target "
                           "folder, 'zip slip'). Refusing the package.")
    return p


def _check_version(manifest: dict, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(f"{where}: {MANIFEST} is not a NeoNet model package manifest (format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else type(manifest).__name__!r}, "
                           f"expected {FORMAT!r}). Export the model with `neonet_export_model`.")
    fv = manifest.get("format_version")
    if fv != FORMAT_VERSION:
        raise PackageError(f"{where}: package format version {fv!r}, this toolkit reads version {FORMAT_VERSION}. "
                           f"Re-export the model with neonet_toolkit {__version__}.")
    made = str(manifest.get("toolkit_version", "?"))
    if _major(made) != _major(__version__):
        raise PackageError(
            f"{where}: the package was made with neonet_toolkit {made} (major version {_major(made)}), this is "
            f"neonet_toolkit {__version__} (major version {_major(__version__)}): models are not exchanged across "
            f"major versions. Install neonet_toolkit=={_major(made)}.* to use it, or re-export the model from its "
            f"training folders with neonet_toolkit {__version__}.")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise PackageError(f"{where}: {MANIFEST} lists no files.")
    for name, rec in files.items():
        _check_member_name(name, where)
        if name == MANIFEST:
            raise PackageError(f"{where}: {MANIFEST} lists itself.")
        if not (isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and isinstance(rec.get("size"), int)):
            raise PackageError(f"{where}: the manifest entry of {name!r} has no sha256/size.")


def _is_zip(src: Path) -> bool:
    return src.is_file() and zipfile.is_zipfile(src)


# ----------------------------------------------------------------------------- reading a package (zip or folder)
def _zip_members(zf: zipfile.ZipFile, where: str) -> dict[str, zipfile.ZipInfo]:
    """{name: info} of the file members; refuses unsafe names, links, special files and duplicates."""
    out: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        _check_member_name(info.filename, where)
        mode = info.external_attr >> 16
        if mode and stat.S_ISLNK(mode):
            raise PackageError(f"{where}: entry {info.filename!r} is a symbolic link; a link could point outside the "
                               "target folder. Refusing the package.")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded (zipfile.writestr)
            raise PackageError(f"{where}: entry {info.filename!r} is not a regular file (mode {oct(mode)}). Refusing "
                               "the package.")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise PackageError(f"{where}: entry {info.filename!r} is encrypted. Refusing the package.")
        if info.filename in out:
            raise PackageError(f"{where}: entry {info.filename!r} appears twice. Refusing the package.")
        out[info.filename] = info
    return out


def _read_manifest_zip(zf: zipfile.ZipFile, members: dict, where: str) -> dict:
    info = members.get(MANIFEST)
    if info is None:
        raise PackageError(f"{where}: no {MANIFEST} at the top of the zip; this is not a NeoNet model package "
                           "(export one with `neonet_export_model`).")
    if info.file_size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{where}: {MANIFEST} is {info.file_size} bytes, more than a manifest ever needs.")
    with zf.open(info) as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PackageError(f"{where}: {MANIFEST} is not valid JSON ({e}).") from None
    _check_version(manifest, where)
    return manifest


def _compare_members(names: Iterable[str], manifest: dict, where: str) -> None:
    present = set(names) - {MANIFEST}
    listed = set(manifest["files"])
    extra, missing = sorted(present - listed), sorted(listed - present)
    if extra:
        raise PackageError(f"{where}: {extra[0]!r} is not listed in {MANIFEST}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                           + ": a package holds exactly the files its manifest lists. Refusing the package.")
    if missing:
        raise PackageError(f"{where}: {missing[0]!r} listed in {MANIFEST} is missing"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                           + ". The package is incomplete: export it again.")


def _extract_zip(src: Path, dest: Path) -> dict:
    """Safely extract ``src`` into ``dest`` (created empty), hashing every member while it is written; the manifest."""
    where = str(src)
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile as e:
        raise PackageError(f"{where}: not a readable zip ({e}).") from None
    with zf:
        members = _zip_members(zf, where)
        manifest = _read_manifest_zip(zf, members, where)
        _compare_members(members, manifest, where)
        for name, info in members.items():
            rec = manifest["files"].get(name)
            if rec is not None and info.file_size != rec["size"]:
                raise PackageError(f"{where}: {name!r} is {info.file_size} bytes, the manifest says {rec['size']}: "
                                   "the file was changed. Refusing the package.")
        base = dest.resolve()
        for name, info in members.items():
            target = (dest / name)
            if base not in target.resolve().parents:  # belt and braces: the name checks already exclude this
                raise PackageError(f"{where}: entry {name!r} would be written outside {dest}. Refusing the package.")
            target.parent.mkdir(parents=True, exist_ok=True)
            limit = manifest["files"][name]["size"] if name != MANIFEST else MAX_MANIFEST_BYTES
            h, n = hashlib.sha256(), 0
            with zf.open(info) as fin, open(target, "xb") as fout:
                for block in iter(lambda: fin.read(_CHUNK), b""):
                    n += len(block)
                    if n > limit:
                        raise PackageError(f"{where}: {name!r} unpacks to more than the {limit} bytes its entry "
                                           "declares. Refusing the package.")
                    h.update(block)
                    fout.write(block)
            if name != MANIFEST:
                _check_hash(name, h.hexdigest(), n, manifest, where)
    return manifest


def _check_hash(name: str, digest: str, size: int, manifest: dict, where: str) -> None:
    rec = manifest["files"][name]
    if size != rec["size"]:
        raise PackageError(f"{where}: {name!r} has {size} bytes, the manifest says {rec['size']}: the file was changed "
                           "or truncated. Refusing the package.")
    if digest != rec["sha256"]:
        raise PackageError(f"{where}: {name!r} has sha256 {digest[:16]}..., the manifest says {rec['sha256'][:16]}...: "
                           "the file was changed after export. Refusing the package (nothing in it was loaded).")


def _walk_folder(root: Path, where: str) -> list[str]:
    """Every file of a package folder as a relative posix name; refuses links and special files."""
    out = []
    for d, dirs, files in os.walk(root, followlinks=False):
        for n in [*dirs, *files]:
            p = Path(d) / n
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                raise PackageError(f"{where}: {rel!r} is a symbolic link; a link could point outside the package. "
                                   "Refusing the package.")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise PackageError(f"{where}: {rel!r} is not a regular file. Refusing the package.")
            if stat.S_ISREG(st.st_mode):
                _check_member_name(rel, where)
                out.append(rel)
    return out


def _read_manifest_folder(root: Path, where: str) -> dict:
    f = root / MANIFEST
    if f.is_symlink() or not f.is_file():
        raise PackageError(f"{where}: no {MANIFEST}; this is not a NeoNet model package folder (export one with "
                           "`neonet_export_model` and extract it, or pass the zip).")
    if f.stat().st_size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{where}: {MANIFEST} is larger than a manifest ever needs.")
    try:
        manifest = load_json(f)
    except ValueError as e:
        raise PackageError(f"{where}: {MANIFEST} is not valid JSON ({e}).") from None
    _check_version(manifest, where)
    return manifest


def _verify_folder_hashes(root: Path, where: str) -> dict:
    manifest = _read_manifest_folder(root, where)
    _compare_members(_walk_folder(root, where), manifest, where)
    for name in sorted(manifest["files"]):
        digest, size = _sha256_file(root / name)
        _check_hash(name, digest, size, manifest, where)
    return manifest


def _copy_folder(src: Path, dest: Path) -> dict:
    """Copy a package folder into ``dest`` (checked first: no links, no extra/missing file), hashing the copies."""
    where = str(src)
    manifest = _read_manifest_folder(src, where)
    _compare_members(_walk_folder(src, where), manifest, where)
    for name in [MANIFEST, *sorted(manifest["files"])]:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(src / name, "rb") as fin, open(target, "xb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
    # the copy is what will be used: verify it, not the source (which may change meanwhile)
    copied = _read_manifest_folder(dest, where)
    for name in sorted(copied["files"]):
        digest, size = _sha256_file(dest / name)
        _check_hash(name, digest, size, copied, where)
    return copied
