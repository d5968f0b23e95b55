"""File overrides of a repository load (``file:<version>/<name>`` parameters): a temporary model folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping

from tritium.core.errors import InvalidArgumentError


class OverrideDir:
    """A temporary model folder shared by the versions loaded from it; removed when the last one goes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._users = 0

    @classmethod
    def create(cls, name: str, files: Mapping[str, bytes]) -> OverrideDir:
        """Write ``files`` (paths relative to the model folder) into a new temporary folder."""
        root = tempfile.mkdtemp(prefix="tritium-override-")  # no part of the name: the client chose it
        try:
            for relative, content in files.items():
                normalized = os.path.normpath(relative)
                if (not relative or os.path.isabs(relative) or normalized == "." or normalized.startswith("..")
                        or "\0" in relative):
                    raise InvalidArgumentError(
                        f"failed to load '{name}': file override 'file:{relative}' must name a file inside the "
                        "model folder, as 'file:<version>/<name>'"
                    )
                path = os.path.join(root, normalized)
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(content)
                except OSError as e:  # a name too long, a file where a folder must go (1/a and 1/a/b), ...
                    raise InvalidArgumentError(
                        f"failed to load '{name}': file override 'file:{relative}' cannot be written: {e.strerror}"
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
