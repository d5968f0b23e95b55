"""Where a model repository lives: a local folder or an object store, behind one interface.

The manager lists models, fingerprints them (poll mode) and gets a local folder to load each from
through :class:`ModelStorage`.  :class:`LocalStorage` is the folder itself; ``s3://``, ``gs://`` and
``as://`` repositories (:mod:`.object_storage`, imported only when one is named) copy each model into a
bounded local cache before it loads.  Nothing else in the repository layer knows which kind it reads.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from tritium.config.autocomplete import version_dirs
from tritium.core.errors import InvalidArgumentError

from .fingerprint import model_fingerprint, version_fingerprint

log = logging.getLogger(__name__)

#: Repository URL schemes served from object storage (as Triton spells them).
OBJECT_SCHEMES = ("s3", "gs", "as")


class ModelStorage(ABC):
    """One ``--model-repository``: lists its model folders and hands out local copies of them."""

    #: The repository as the operator named it (what logs and errors show).
    location: str

    @abstractmethod
    def list_models(self) -> list[str]:
        """The names of the repository's model folders (unfiltered); raises a ``TritiumError`` naming the
        repository when it cannot be read."""

    @abstractmethod
    def fingerprints(self, names: Sequence[str]) -> dict[str, str]:
        """Name -> fingerprint of the files of each model in ``names`` (what poll mode compares)."""

    @abstractmethod
    def local_dir(self, name: str) -> str:
        """A local folder holding the model's current files, complete (runs on a load thread)."""

    def release(self, name: str) -> None:  # noqa: B027  optional: a storage without copies has nothing to do
        """The model no longer serves: its local copy, if any, may go."""

    def close(self) -> None:  # noqa: B027  optional, as release
        """The server stops: remove every local copy."""


class LocalStorage(ModelStorage):
    """A repository folder on a local file system: models load from it in place."""

    def __init__(self, location: str) -> None:
        self.location = location

    def list_models(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.location))
        except OSError as e:  # the path is the operator's: in the log, not in what a client reads
            log.error("failed to open model repository '%s': %s", self.location, e)
            raise InvalidArgumentError(f"failed to open a model repository: {e.strerror}") from None
        return [entry for entry in entries if os.path.isdir(os.path.join(self.location, entry))]

    def fingerprints(self, names: Sequence[str]) -> dict[str, str]:
        prints = {}
        for name in names:
            model_dir = self.local_dir(name)
            parts = [model_fingerprint(model_dir)]
            parts += [version_fingerprint(model_dir, v) for v in sorted(version_dirs(model_dir))]
            prints[name] = ":".join(parts)
        return prints

    def local_dir(self, name: str) -> str:
        return os.path.join(self.location, name)


@dataclass(frozen=True)
class ModelSource:
    """A model folder found in one repository."""

    storage: ModelStorage
    name: str

    def __str__(self) -> str:
        return f"{self.storage.location.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class CacheSettings:
    """Where object-storage models are copied, and how many bytes the copies may take in all."""

    directory: str = ""
    max_bytes: int = 10 << 30


def scheme_of(location: str) -> str:
    """``s3``, ``gs`` or ``as`` for an object-storage repository, ``""`` for a local folder."""
    scheme, sep, _ = location.partition("://")
    return scheme if sep and scheme in OBJECT_SCHEMES else ""


def open_storages(locations: Sequence[str], cache: CacheSettings) -> list[ModelStorage]:
    """One storage per ``--model-repository``; raises :class:`InvalidArgumentError` for a malformed URL or
    when the library an object store needs is not installed."""
    storages: list[ModelStorage] = []
    shared = None
    for location in locations:
        if scheme_of(location):
            from .object_storage import ObjectCache, ObjectStorage  # only when such a repository is named

            shared = shared or ObjectCache(cache)
            storages.append(ObjectStorage.open(location, shared))
        else:
            storages.append(LocalStorage(location))
    return storages
