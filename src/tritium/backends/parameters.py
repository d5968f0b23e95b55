"""Reading a model's ``parameters`` and a backend's ``--backend-config`` values, with one wording of errors.

The framework backends (onnxruntime, pytorch) and the Python backend used to parse these by hand, each
with its own copy of the messages; a bad value is a :class:`ModelConfigError` naming the key and the value.
"""

from __future__ import annotations

from collections.abc import Mapping

from tritium.core.errors import ModelConfigError

from .base import ModelContext

TRUE_WORDS = frozenset(("1", "true", "on", "yes"))
FALSE_WORDS = frozenset(("0", "false", "off", "no"))


def integer(ctx: ModelContext, key: str, fallback: Mapping[str, str] | None = None) -> int | None:
    """Parameter ``key`` as an integer (else ``fallback[key]``, e.g. the backend config); ``None`` when unset."""
    value = ctx.parameter(key)
    if value is None and fallback is not None:
        value = fallback.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ModelConfigError(f"model '{ctx.name}': parameter '{key}' must be an integer, got '{value}'") from None


def flag(ctx: ModelContext, key: str, strict: bool = True) -> bool | None:
    """Parameter ``key`` as true/false; ``None`` when unset.  ``strict``: a word that is neither is an error;
    else anything but a true word is false (onnxruntime backend's reading, as Triton's)."""
    value = ctx.parameter(key)
    if value is None:
        return None
    text = value.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS or not strict:
        return False
    raise ModelConfigError(f"model '{ctx.name}': parameter '{key}' must be 'true' or 'false', got '{value}'")


def whole_number(owner: str, config: Mapping[str, str], key: str, default: int, unit: str, minimum: int = 1) -> int:
    """``config[key]`` (a backend's ``--backend-config`` values) as a number of at least ``minimum``."""
    value = config.get(key)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ModelConfigError(f"{owner}: '{key}' must be a number of {unit}, got '{value}'") from None
    if number < minimum:
        bound = "positive" if minimum == 1 else f"{minimum} or more"
        raise ModelConfigError(f"{owner}: '{key}' must be {bound}, got '{value}'")
    return number
