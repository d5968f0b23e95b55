"""File overrides of a repository load (``file:<version>/<name>`` parameters): a temporary model folder.

The folders live in one temporary folder of this server process (``tritium-overrides-<pid>-*``, removed
at shutdown), each named by ``mkdtemp``: nothing a client sends becomes a folder name outside them.  A
file's path is read as Triton reads it (``file:/1/model.py`` is ``1/model.py`` of the model folder) and
must land strictly inside the model folder; ``..`` that leaves it is refused before anything is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping

from tritium.config.paths import is_inside, join
from tritium.core.errors import InvalidArgumentError
from tritium.core.names import shown

_ROOT_PREFIX = "tritium-overrides-"
_root: str | None = None
_root_lock = threading.Lock()


def _server_root() -> str:
    """This process's folder of override folders, made on first use."""
    global _root
    with _root_lock:
        if _root is None or not os.path.isdir(_root):
            _remove_orphans()
            _root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-")
        return _root


def _remove_orphans() -> None:
    """Remove the folders of servers that were killed (no shutdown): those whose process is gone."""
    parent = tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(_ROOT_PREFIX):].split("-", 1)[0] if name.startswith(_ROOT_PREFIX) else ""
        if pid.isdigit() and os.path.isdir("/proc/self") and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def remove_all() -> None:
    """Remove every override folder of this process (at shutdown)."""
    global _root
    with _root_lock:
        if _root is not None:
            shutil.rmtree(_root, ignore_errors=True)
        _root = None


def override_path(root: str, relative: str) -> str:
    """Where ``file:<relative>`` goes in the model folder ``root``; :class:`InvalidArgumentError` when it
    would not be a file strictly inside it."""
    path = os.path.normpath(join(root, relative))
    if "\0" in relative or path == os.path.normpath(root) or not is_inside(root, path):
        raise InvalidArgumentError(
            f"file override 'file:{shown(relative)}' must name a file inside the model folder, "
            "as 'file:<version>/<name>'"
        )
    return path


def check_override_name(relative: str, model: str) -> None:
    """Refuse ``file:<relative>`` unless it names a file strictly inside a model folder (before any is made)."""
    try:
        override_path("/nonexistent-model-folder", relative)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"failed to load '{model}': {e}") from None


class OverrideDir:
    """A temporary model folder shared by the versions loaded from it; removed when the last one goes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._users = 0

    @classmethod
    def create(cls, name: str, files: Mapping[str, bytes]) -> OverrideDir:
        """Write ``files`` (paths relative to the model folder) into a new temporary folder."""
        root = tempfile.mkdtemp(prefix="model-", dir=_server_root())
        try:
            for relative, content in files.items():
                try:
                    path = override_path(root, relative)
                except InvalidArgumentError as e:
                    raise InvalidArgumentError(f"failed to load '{name}': {e}") from None
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                    with os.fdopen(fd, "wb") as f:
                        f.write(content)
                except OSError as e:  # e.g. 'file:1' and 'file:1/model.py' together
                    raise InvalidArgumentError(
                        f"failed to load '{name}': cannot write file override 'file:{shown(relative)}': {e.strerror}"
                    ) from None
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root)

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
