"""The one check of a model name that a client sends, whatever the frontend (HTTP, gRPC, BLS).

A model name becomes a folder name of the repository, so a name that could leave the repository or
mean something to a shell or a log line is refused before anything touches the file system.  The rules
(``check_model_name``): not empty; at most :data:`MAX_NAME_BYTES` bytes of UTF-8 (a file name's limit);
no path separator (``/``, ``\\``), no NUL or other character that is not printable; no leading dot (which also
refuses ``.`` and ``..``, and hidden folders, which repositories skip); none of the characters that
Triton's Python backend refuses in names (``;|&$`<>()[]{}\\"'*?~#!``, "contains invalid characters").
"""

from __future__ import annotations

from .errors import InvalidArgumentError

#: A file name's limit on Linux file systems (NAME_MAX).
MAX_NAME_BYTES = 255
#: Triton's Python backend's ``INVALID_CHARS`` (shell metacharacters), refused in every model's name here.
SHELL_CHARACTERS = ";|&$`<>()[]{}\\\"'*?~#!"
_REFUSED = frozenset(SHELL_CHARACTERS + "/")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model's name, or ``None`` when it can."""
    if not name:
        return "model names must not be empty"
    if len(name) > MAX_NAME_BYTES or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"model names must not be longer than {MAX_NAME_BYTES} bytes"
    if name[0] == ".":
        return "model names must not start with '.'"
    if "\0" in name:
        return "model names must not contain NUL"
    if not name.isprintable():
        return "model names must not contain control characters"
    if _REFUSED.isdisjoint(name):
        return None
    bad = next(c for c in name if c in _REFUSED)
    if bad in "/\\":
        return "model names must not contain a path separator ('/' or '\\')"
    return f"model names must not contain '{bad}' (none of {SHELL_CHARACTERS})"


def shown(name: str) -> str:
    """``name`` as error messages quote it: control characters escaped, long names cut."""
    text = name if len(name) <= 64 else name[:64] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check_model_name(name: str) -> None:
    """Raise :class:`InvalidArgumentError` (400 / INVALID_ARGUMENT) when ``name`` cannot name a model."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidArgumentError(f"invalid model name '{shown(name)}': {problem}")
