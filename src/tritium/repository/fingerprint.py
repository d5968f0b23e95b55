"""Fingerprints of a model's files, so reloads and polls rebuild only what changed.

A fingerprint is a hash of every file's path, size and modification time, and
of the content of small files (configs, labels), so an edit that keeps the size
and lands within the file system's time resolution is still seen.
"""

from __future__ import annotations

import hashlib
import os
import stat

from tritium.config.paths import is_inside

#: Files up to this size are hashed by content as well.
CONTENT_LIMIT = 1 << 20


def _leads_outside(path: str, model_dir: str, digest: hashlib.blake2b) -> bool:
    """A symlink out of the model folder is not read (the load refuses what uses it): its target is hashed."""
    if not os.path.islink(path) or is_inside(model_dir, path):
        return False
    try:
        digest.update(f"link\0{os.readlink(path)}\0".encode())
    except OSError:
        pass
    return True


def _add_file(digest: hashlib.blake2b, path: str, rel: str, model_dir: str) -> None:
    if _leads_outside(path, model_dir, digest):
        return
    try:
        st = os.stat(path)
    except OSError:
        return
    digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    # regular files only: a FIFO or a device (/dev/zero has size 0) would block or never end
    if stat.S_ISREG(st.st_mode) and st.st_size <= CONTENT_LIMIT:
        try:
            with open(path, "rb") as f:
                digest.update(f.read())
        except OSError:
            pass


def _add_tree(digest: hashlib.blake2b, root: str, prefix: str, model_dir: str) -> None:
    if _leads_outside(root, model_dir, digest):
        return  # e.g. a version folder linked to '/': never walked
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders below are not followed
        dirnames.sort()
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            _add_file(digest, path, os.path.join(prefix, os.path.relpath(path, root)), model_dir)


def model_fingerprint(model_dir: str, extra: str = "") -> str:
    """Everything of a model outside its version folders (config, labels, warmup data), plus ``extra``."""
    digest = hashlib.blake2b(extra.encode(), digest_size=16)
    try:
        entries = sorted(os.listdir(model_dir))
    except OSError:
        return ""
    for entry in entries:
        path = os.path.join(model_dir, entry)
        if os.path.isdir(path):
            if not entry.isdigit():
                _add_tree(digest, path, entry, model_dir)
        else:
            _add_file(digest, path, entry, model_dir)
    return digest.hexdigest()


def version_fingerprint(model_dir: str, version: int) -> str:
    """The files of one version folder."""
    digest = hashlib.blake2b(digest_size=16)
    _add_tree(digest, os.path.join(model_dir, str(version)), str(version), model_dir)
    return digest.hexdigest()
