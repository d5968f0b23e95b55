"""``EXECUTION_ENV_PATH``: the Python environment a model's process runs in.

Triton's Python backend takes a conda-pack archive (``.tar.gz``) or an unpacked environment directory, with
``$$TRITON_MODEL_DIRECTORY`` standing for the model's directory.  An archive is unpacked once per server
into a cache directory named after the archive's path, size and modification time (a changed archive is
unpacked again on its next load), shared by every model and instance that names it, and removed at
shutdown (or, when a server was killed, by the next one that unpacks an archive).  The model's process is
the environment's ``bin/python`` with the environment's ``bin`` first on
``PATH``, as its ``activate`` script would set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import threading

from tritium.config.paths import execution_env_path
from tritium.core.errors import ModelConfigError

log = logging.getLogger(__name__)

#: Caches are named ``<prefix><server pid>-<random>`` in the temporary directory.
_ROOT_PREFIX = "tritium-python-envs-"
#: Written last into an unpacked environment: a directory without it is an interrupted unpacking.
_DONE = ".tritium-unpacked"


class Environments:
    """Unpacked archives of one server, by archive identity."""

    def __init__(self, root: str | None = None) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._unpacked: dict[str, str] = {}

    def interpreter(self, model: str, model_dir: str, value: str | None, from_client: bool = False) -> str:
        """The Python that runs ``model``'s processes for this ``EXECUTION_ENV_PATH`` value (none: the server's own).

        ``from_client``: the value comes from a repository-API config override (only paths in the model folder).
        """
        if not value:
            return sys.executable
        # the server checked the config's paths before (config/paths.py); asked again, the answer is the same
        path = execution_env_path(model_dir, value, model, from_client)
        if os.path.isdir(path):
            return _python_of(model, path, value)
        if not os.path.isfile(path):
            raise ModelConfigError(f"model '{model}': EXECUTION_ENV_PATH '{value}' does not exist")
        if not tarfile.is_tarfile(path):
            raise ModelConfigError(f"model '{model}': EXECUTION_ENV_PATH '{value}' is neither a directory nor a "
                                   "tar archive (conda-pack's .tar.gz)")
        return _python_of(model, self._unpack(model, path, value), value)

    def _unpack(self, model: str, archive: str, value: str) -> str:
        info = os.stat(archive)
        identity = f"{os.path.realpath(archive)}\0{info.st_size}\0{info.st_mtime_ns}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        with self._lock:  # models loading at once share one unpacking
            target = self._unpacked.get(key)
            if target is not None and os.path.exists(os.path.join(target, _DONE)):
                return target
            if self._root is None:
                _remove_orphans()
                self._root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-")
            target = os.path.join(self._root, key)
            shutil.rmtree(target, ignore_errors=True)
            log.info("unpacking EXECUTION_ENV_PATH '%s' of model '%s' into %s", archive, model, target)
            if not hasattr(tarfile, "data_filter"):
                raise ModelConfigError(f"model '{model}': unpacking EXECUTION_ENV_PATH '{value}' safely needs "
                                       "Python 3.10.12 or later (tarfile's data filter); unpack it and name the "
                                       "directory instead")
            try:
                with tarfile.open(archive) as tar:
                    # "data": no member may land outside the target, be a device, or keep setuid bits
                    tar.extractall(target, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                shutil.rmtree(target, ignore_errors=True)
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise ModelConfigError(f"model '{model}': failed to unpack EXECUTION_ENV_PATH '{value}': "
                                       f"{_without(reason, target)}") from None
            with open(os.path.join(target, _DONE), "w"):
                pass
            self._unpacked[key] = target
            return target

    def close(self) -> None:
        """Remove every environment unpacked here (at shutdown: no model process runs any more)."""
        with self._lock:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._unpacked.clear()


def _remove_orphans() -> None:
    """Remove what servers that were killed (no shutdown, no clean-up) left unpacked: a cache whose server
    process is gone.  A live process with that id keeps it (it may be another server)."""
    parent = tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_ROOT_PREFIX):
            continue
        pid = name[len(_ROOT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}") or not os.path.isdir("/proc/self"):
            continue
        log.info("removing %s, left unpacked by server process %s, which is gone", name, pid)
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _without(text: str, folder: str) -> str:
    """``text`` with the server's ``folder`` left out (an error for a client names no absolute server path)."""
    return text.replace(folder + os.sep, "").replace(folder, "")


def _python_of(model: str, env: str, value: str) -> str:
    python = os.path.join(env, "bin", "python")
    if os.access(python, os.X_OK):
        return python
    raise ModelConfigError(f"model '{model}': EXECUTION_ENV_PATH '{value}' holds no executable bin/python")


def activated(env: dict[str, str], python: str) -> dict[str, str]:
    """``env`` as an environment's ``activate`` leaves it for ``python`` of that environment: its ``bin``
    first on ``PATH`` (the server's own interpreter changes nothing)."""
    if python == sys.executable:
        return env
    root = os.path.dirname(os.path.dirname(python))
    env = dict(env)
    env["PATH"] = os.path.join(root, "bin") + (os.pathsep + env["PATH"] if env.get("PATH") else "")
    env["CONDA_PREFIX"] = root
    env.pop("PYTHONHOME", None)
    return env
