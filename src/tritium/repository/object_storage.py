"""Model repositories in object storage (``s3://``, ``gs://``, ``as://``), read through fsspec.

The URL forms and credentials are Triton's: ``s3://bucket/path``, ``s3://[http(s)://]host:port/bucket/path``
(an S3-compatible endpoint), ``gs://bucket/path``, ``as://account/container/path``; credentials from each
cloud's environment variables, or from the JSON file ``TRITON_CLOUD_CREDENTIAL_PATH`` names (the entry whose
key is the longest prefix of the repository URL).

A model loads from a local copy: its objects are downloaded into a fresh temporary folder, checked (every
key a plain relative path that stays inside the folder, every size as listed), and only then renamed into
place and published by an atomic symlink swap, so a model is never read half-downloaded.  Files unchanged
since the previous copy are hard-linked rather than downloaded again, and keep their times, so a reload
rebuilds only the versions whose objects changed.  The copies of all repositories together stay under
``--repository-cache-size``; a model's copy goes when it no longer serves, and all of them at shutdown.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tritium.config.paths import is_inside, relative_text
from tritium.core.errors import InvalidArgumentError, TritiumError, UnavailableError
from tritium.core.names import name_problem, shown

from .storage import CacheSettings, ModelStorage

log = logging.getLogger(__name__)

#: The library each scheme needs, and the extra that installs it.
_LIBRARIES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "as": ("adlfs", "azure")}
#: Triton's environment variables naming where each cloud's copies go.
_MOUNT_VARIABLES = {"s3": "TRITON_AWS_MOUNT_DIRECTORY", "gs": "TRITON_GCS_MOUNT_DIRECTORY",
                    "as": "TRITON_AZURE_MOUNT_DIRECTORY"}
#: ``s3://[http(s)://]host:port/bucket/path``, as Triton matches a custom endpoint.
_S3_ENDPOINT = re.compile(r"(?:(https?)://)?([0-9A-Za-z.\-]+):([0-9]+)/(.*)")
#: Cache folders are named ``<prefix><scheme>-<random>``, each holding a lock file while its server runs.
_ROOT_PREFIX = "tritium-models-"
_LOCK_FILE = ".in-use"
#: Longest error text of a library kept in a reason.
_REASON_LIMIT = 400


@dataclass(frozen=True)
class _Object:
    """One object of a model: its size and what identifies its content (ETag, generation, time)."""

    size: int
    tag: str
    #: Not compared: an object uploaded again with the same content is the same object.
    mtime: float | None = field(default=None, compare=False)


class ObjectCache:
    """The local copies of every object-storage repository of the server, bounded in size together."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        #: Bytes held by each published copy (repository folder + model name).
        self._sizes: dict[str, int] = {}
        self._roots: list[str] = []
        #: The locks that mark this server's folders as in use (held open for the process's life).
        self._held: list[int] = []

    def new_root(self, scheme: str) -> str:
        """A fresh folder for one repository's copies; the folders a killed server left go first."""
        parent = self.settings.directory or os.environ.get(_MOUNT_VARIABLES[scheme], "") or tempfile.gettempdir()
        _remove_orphans(parent)
        root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{scheme}-", dir=parent)
        fd = os.open(os.path.join(root, _LOCK_FILE), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with self._lock:
            self._roots.append(root)
            self._held.append(fd)
        return root

    def reserve(self, key: str, needed: int, what: str) -> None:
        """Refuse a download of ``needed`` bytes that would take the copies over the bound."""
        with self._lock:
            used = sum(self._sizes.values())
            if used + needed > self.settings.max_bytes:
                raise UnavailableError(
                    f"{what}: the model repository cache is full ({_mib(used)} MiB used of "
                    f"{_mib(self.settings.max_bytes)} MiB, {_mib(needed)} MiB more needed); unload models or "
                    "raise --repository-cache-size")

    def set_size(self, key: str, size: int | None) -> None:
        with self._lock:
            if size is None:
                self._sizes.pop(key, None)
            else:
                self._sizes[key] = size

    def close(self) -> None:
        with self._lock:
            roots, self._roots = self._roots, []
            held, self._held = self._held, []
            self._sizes.clear()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        for fd in held:
            os.close(fd)


def _remove_orphans(parent: str) -> None:
    """Remove the cache folders of servers that are gone (killed: no shutdown cleaned them): those whose lock
    no process holds.  A lock, not a process id, since a restarted container's server has the same id."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        folder = os.path.join(parent, name)
        if not name.startswith(_ROOT_PREFIX) or os.path.islink(folder):
            continue
        try:
            fd = os.open(os.path.join(folder, _LOCK_FILE), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # not one of ours, or being made right now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live server's
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        log.info("removed '%s', the model cache of a server that is gone", folder)


class ObjectStorage(ModelStorage):
    """A repository in S3, GCS or Azure Blob Storage; models load from local copies."""

    def __init__(self, location: str, fs: Any, root: str, cache: ObjectCache, scheme: str) -> None:
        self.location = location
        self._fs = fs
        #: The repository's folder as the filesystem names it ("bucket/path"), no trailing '/'.
        self._root = root.rstrip("/")
        self._cache = cache
        self._scheme = scheme
        self._dir: str | None = None
        self._dir_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        #: Model name -> the objects of its published copy, and that copy's folder.
        self._copies: dict[str, tuple[dict[str, _Object], str]] = {}
        self._counter = itertools.count(1)

    @classmethod
    def open(cls, location: str, cache: ObjectCache) -> ObjectStorage:
        """Parse ``location`` and make its filesystem (credentials resolved as Triton resolves them)."""
        scheme = location.partition("://")[0]
        library, extra = _LIBRARIES[scheme]
        try:
            module = __import__(library)
        except ImportError:
            raise InvalidArgumentError(
                f"model repository '{location}' needs the '{library}' package: pip install 'tritium[{extra}]'"
            ) from None
        credentials = _credential_entry(scheme, location)
        if scheme == "s3":
            fs, root = _s3(module, location, credentials)
        elif scheme == "gs":
            fs, root = _gcs(module, location, credentials)
        else:
            fs, root = _azure(module, location, credentials)
        storage = cls(location, fs, root, cache, scheme)
        try:
            storage._folder()  # a cache folder that cannot be made stops the start, not a later load
        except OSError as e:
            raise InvalidArgumentError(f"model repository '{location}': the local cache folder cannot be made: "
                                       f"{e.strerror}: '{e.filename}'") from None
        return storage

    # -- listing ------------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        try:
            self._fs.invalidate_cache()
            entries = self._fs.ls(self._root, detail=True)
        except Exception as e:  # the library's own errors: missing bucket, credentials, network
            raise UnavailableError(f"model repository '{self.location}' cannot be read: {_reason(e)}") from None
        names = []
        start = len(self._root) + 1
        for info in entries:
            name = str(info["name"])[start:].rstrip("/")
            if info.get("type") == "directory" and name and "/" not in name:  # not "" (a key "path//x")
                names.append(name)
        return sorted(set(names))

    def _objects(self, prefix: str, what: str) -> dict[str, dict[str, _Object]]:
        """Model name -> relative key -> object, for every object under ``prefix`` of the repository."""
        try:
            self._fs.invalidate_cache()
            found = self._fs.find(prefix, detail=True)
        except Exception as e:
            raise UnavailableError(f"{what}: model repository '{self.location}' cannot be read: {_reason(e)}") \
                from None
        models: dict[str, dict[str, _Object]] = {}
        start = len(self._root) + 1
        for path, info in found.items():
            if info.get("type", "file") != "file" or path.endswith("/"):
                continue  # "folder" markers some tools write
            name, sep, relative = path[start:].partition("/")
            if sep:
                models.setdefault(name, {})[relative] = _object(info)
        return models

    def fingerprints(self, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        listing = self._objects(self._root, "poll")
        prints = {}
        for name in names:
            digest = hashlib.blake2b(digest_size=16)
            for relative, obj in sorted(listing.get(name, {}).items()):
                digest.update(f"{relative}\0{obj.size}\0{obj.tag}\0".encode())
            prints[name] = digest.hexdigest()
        return prints

    # -- local copies -------------------------------------------------------------------------------

    def _folder(self) -> str:
        with self._dir_lock:
            if self._dir is None or not os.path.isdir(self._dir):
                self._dir = self._cache.new_root(self._scheme)
                os.makedirs(os.path.join(self._dir, ".copies"), exist_ok=True)
            return self._dir

    def _lock_of(self, name: str) -> threading.Lock:
        with self._dir_lock:
            return self._locks.setdefault(name, threading.Lock())

    def local_dir(self, name: str) -> str:
        problem = name_problem(name)
        if problem is not None:  # the manager only asks for listed names; a name is a folder name below
            raise InvalidArgumentError(f"model '{shown(name)}': {problem}")
        what = f"failed to load '{name}' from model repository '{self.location}'"
        try:
            return self._fetch(name, what)
        except OSError as e:  # the cache folder: disk full, removed, ...
            raise UnavailableError(f"{what}: the local copy cannot be made: {e.strerror}") from None

    def _fetch(self, name: str, what: str) -> str:
        with self._lock_of(name):
            objects = self._objects(f"{self._root}/{name}/", what).get(name, {})
            if not objects:
                raise UnavailableError(f"{what}: the model has no files there")
            folder = self._folder()
            stable = os.path.join(folder, name)
            current = self._copies.get(name)
            if current is not None and current[0] == objects and os.path.isdir(stable):
                return stable
            copy = self._download(name, objects, current, folder, what)
            _publish(stable, copy)
            self._copies[name] = (objects, copy)
            self._cache.set_size(stable, sum(o.size for o in objects.values()))
            if current is not None and current[1] != copy:
                shutil.rmtree(current[1], ignore_errors=True)
            log.info("fetched model '%s' from '%s' (%d files, %.1f MiB)", name, self.location, len(objects),
                     sum(o.size for o in objects.values()) / (1 << 20))
            return stable

    def _download(self, name: str, objects: dict[str, _Object], current: tuple[dict[str, _Object], str] | None,
                  folder: str, what: str) -> str:
        """The model's objects in a new complete folder under ``folder`` (unchanged ones linked from
        ``current``); nothing is left behind on failure."""
        for relative in objects:
            problem = _key_problem(relative)
            if problem is not None:
                raise UnavailableError(f"{what}: object key '{shown(name + '/' + relative)}' {problem}; "
                                       "nothing was fetched")
        folders = {relative.rsplit("/", 1)[0] for relative in objects if "/" in relative}
        folders |= {folder.rsplit("/", i)[0] for folder in folders for i in range(1, folder.count("/") + 1)}
        clash = sorted(folders & set(objects))
        if clash:
            raise UnavailableError(f"{what}: object key '{shown(name + '/' + clash[0])}' is both a file and a "
                                   "folder of other keys; nothing was fetched")
        old = current[0] if current is not None else {}
        fetch = [r for r, o in objects.items() if old.get(r) != o]
        self._cache.reserve(os.path.join(folder, name), sum(objects[r].size for r in fetch), what)
        tmp = tempfile.mkdtemp(prefix=f".partial-{name}-", dir=folder)
        try:
            remote, local = [], []
            for relative in objects:
                target = os.path.join(tmp, *relative.split("/"))
                if not is_inside(tmp, target):  # _key_problem refused such keys already: belt and braces
                    raise UnavailableError(f"{what}: object key '{shown(relative)}' leaves the model folder")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if current is not None and relative not in fetch:
                    _link_or_copy(os.path.join(current[1], *relative.split("/")), target)
                else:
                    remote.append(f"{self._root}/{name}/{relative}")
                    local.append(target)
            if remote:
                self._fs.get(remote, local)
            for relative in fetch:
                target = os.path.join(tmp, *relative.split("/"))
                obj = objects[relative]
                got = os.path.getsize(target) if os.path.isfile(target) else -1
                if got != obj.size:
                    raise UnavailableError(f"{what}: object '{shown(relative)}' arrived with {got} bytes of "
                                           f"{obj.size}")
                if obj.mtime is not None:
                    os.utime(target, (obj.mtime, obj.mtime))
            copy = os.path.join(folder, ".copies", f"{name}.{next(self._counter)}")
            os.rename(tmp, copy)
            return copy
        except TritiumError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:  # the network went away, the disk is full, a key is a file and a folder, ...
            shutil.rmtree(tmp, ignore_errors=True)
            # clients read this: paths in the cache are shown relative to the model's folder
            raise UnavailableError(f"{what}: download failed: {relative_text(_reason(e), tmp)}") from None

    def release(self, name: str) -> None:
        with self._lock_of(name):
            current = self._copies.pop(name, None)
            if current is None or self._dir is None:
                return
            stable = os.path.join(self._dir, name)
            try:
                os.unlink(stable)
            except OSError:
                pass
            shutil.rmtree(current[1], ignore_errors=True)
            self._cache.set_size(stable, None)
            log.info("removed the local copy of model '%s' of '%s'", name, self.location)

    def close(self) -> None:
        with self._dir_lock:
            self._copies.clear()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        self._cache.close()


def _publish(stable: str, copy: str) -> None:
    """Point ``stable`` at ``copy`` in one step (a new symlink renamed over the old one)."""
    link = f"{stable}.link-{os.getpid()}-{threading.get_ident()}"
    try:
        os.unlink(link)
    except FileNotFoundError:
        pass
    os.symlink(os.path.relpath(copy, os.path.dirname(stable)), link)
    os.replace(link, stable)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _key_problem(relative: str) -> str | None:
    """Why an object key (relative to its model folder) cannot be a file of the local copy, or ``None``."""
    if "\0" in relative:
        return "contains NUL"
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "is not a plain relative path (empty, '.' or '..' components, or a leading '/')"
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts):
        return "has a component longer than 255 bytes"
    return None


def _object(info: dict[str, Any]) -> _Object:
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation") or ""
    when = info.get("LastModified") or info.get("last_modified") or info.get("updated") or info.get("mtime")
    mtime: float | None = None
    if isinstance(when, datetime):
        mtime = when.timestamp()
    elif isinstance(when, (int, float)):
        mtime = float(when)
    if not tag:
        tag = str(when or "")
    return _Object(int(info.get("size") or 0), str(tag), mtime)


def _reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f}"


# -- locations and credentials ----------------------------------------------------------------------


def _credential_entry(scheme: str, location: str) -> Any:
    """The ``TRITON_CLOUD_CREDENTIAL_PATH`` entry for ``location`` (longest matching key), or ``None``."""
    path = os.environ.get("TRITON_CLOUD_CREDENTIAL_PATH", "")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"TRITON_CLOUD_CREDENTIAL_PATH '{path}' cannot be read: {_reason(e)}") from None
    section = data.get(scheme) if isinstance(data, dict) else None
    if section is None:
        return None
    if not isinstance(section, dict):
        raise InvalidArgumentError(f"TRITON_CLOUD_CREDENTIAL_PATH '{path}': '{scheme}' must be an object")
    matches = [key for key in section if isinstance(key, str) and location.startswith(key)]
    return section[max(matches, key=len)] if matches else None


def _fields(entry: Any, scheme: str, names: Sequence[str]) -> dict[str, str]:
    """The non-empty string fields ``names`` of a credential entry (an object)."""
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise InvalidArgumentError(f"TRITON_CLOUD_CREDENTIAL_PATH: a '{scheme}' credential must be an object")
    return {name: str(entry[name]) for name in names if entry.get(name)}


def parse_s3(location: str) -> tuple[str | None, str]:
    """(endpoint URL or ``None`` for AWS, "bucket/path") of an ``s3://`` repository, as Triton reads it."""
    rest = location[len("s3://"):]
    match = _S3_ENDPOINT.fullmatch(rest)
    if match is not None:
        scheme, host, port, path = match.groups()
        endpoint: str | None = f"{scheme or 'http'}://{host}:{port}"
    elif rest.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"model repository '{location}': an S3 endpoint must be given as "
                                   "s3://[http(s)://]host:port/bucket/path")
    else:
        endpoint, path = None, rest
    path = path.strip("/")
    if not path or path.split("/", 1)[0] in ("", ".", ".."):
        raise InvalidArgumentError(f"model repository '{location}' names no bucket")
    return endpoint, path


def _s3(module: Any, location: str, entry: Any) -> tuple[Any, str]:
    endpoint, root = parse_s3(location)
    fields = _fields(entry, "s3", ("key_id", "secret_key", "session_token", "profile", "region"))
    client_kwargs: dict[str, str] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = fields.get("region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    fs = module.S3FileSystem(
        key=fields.get("key_id"), secret=fields.get("secret_key"), token=fields.get("session_token"),
        profile=fields.get("profile"), client_kwargs=client_kwargs, skip_instance_cache=True,
        use_listings_cache=False,
        # 2 tries (s3fs) of 3 attempts (botocore): a refused connection fails a load or a poll within seconds,
        # an unreachable endpoint within ~30 s, a stalled one within 3 min (the libraries' defaults: far longer)
        config_kwargs={"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 3}},
    )
    fs.retries = 2
    return fs, root


def _gcs(module: Any, location: str, entry: Any) -> tuple[Any, str]:
    root = location[len("gs://"):].strip("/")
    if not root:
        raise InvalidArgumentError(f"model repository '{location}' names no bucket")
    if entry is not None and not isinstance(entry, str):
        raise InvalidArgumentError("TRITON_CLOUD_CREDENTIAL_PATH: a 'gs' credential must be a file path")
    # no entry: GOOGLE_APPLICATION_CREDENTIALS, the attached service account, then anonymous (gcsfs's order)
    return module.GCSFileSystem(token=entry or None, skip_instance_cache=True, use_listings_cache=False), root


def _azure(module: Any, location: str, entry: Any) -> tuple[Any, str]:
    account, _, root = location[len("as://"):].partition("/")
    root = root.strip("/")
    if not account or not root:
        raise InvalidArgumentError(f"model repository '{location}' must be as://account/container/path")
    fields = _fields(entry, "as", ("account_str", "account_key", "auth_type", "client_id"))
    if entry is None:
        fields = {"account_key": os.environ.get("AZURE_STORAGE_KEY", ""),
                  "auth_type": os.environ.get("AZURE_STORAGE_AUTH_TYPE", ""),
                  "client_id": os.environ.get("AZURE_STORAGE_CLIENT_ID", "")}
    kwargs: dict[str, Any] = {"account_name": fields.get("account_str") or account, "skip_instance_cache": True}
    if fields.get("auth_type") in ("managed_identity", "default"):
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential  # adlfs depends on it

        kwargs["credential"] = (ManagedIdentityCredential(client_id=fields.get("client_id") or None)
                                if fields["auth_type"] == "managed_identity" else DefaultAzureCredential())
        kwargs["anon"] = False
    elif fields.get("account_key"):
        kwargs["account_key"] = fields["account_key"]
    return module.AzureBlobFileSystem(**kwargs), root
