"""Log settings as Triton has them, on top of Python's logging.

Triton's switches (``log_info``, ``log_warning``, ``log_error``,
``log_verbose_level``, ``log_format``, ``log_file``) become a filter and a
formatter on one handler of the root logger, so every module keeps using
``logging.getLogger(__name__)``.  The logging extension (``/v2/logging``,
gRPC ``LogSettings``) reads and changes them at run time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from tritium.core.errors import InvalidArgumentError, UnsupportedError
from tritium.options import ServerOptions

FORMATS = ("default", "ISO8601")


class TritonLogFormatter(logging.Formatter):
    """Triton's log lines.

    default:  ``I1122 03:43:00.123456 1234 file.py:12] message``
    ISO8601:  ``2026-11-22T03:43:00Z I 1234 file.py:12] message``
    """

    def __init__(self, log_format: str = "default") -> None:
        super().__init__()
        self.log_format = log_format

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname[0] if record.levelname else "I"
        where = f"{os.getpid()} {record.filename}:{record.lineno}] {record.getMessage()}"
        if self.log_format == "ISO8601":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            text = f"{stamp} {level} {where}"
        else:
            t = time.localtime(record.created)
            micros = int((record.created % 1) * 1_000_000)
            text = (
                f"{level}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                + where
            )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@dataclass
class LogSettings:
    """The logging extension's settings, named as Triton names them."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LevelFilter(logging.Filter):
    """Drops records whose Triton level is switched off; DEBUG records are Triton's verbose logs."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.settings
        if record.levelno >= logging.ERROR:
            return s.log_error
        if record.levelno >= logging.WARNING:
            return s.log_warning
        if record.levelno >= logging.INFO:
            return s.log_info
        return s.log_verbose_level > 0


class LogManager:
    """Owns the root logger's handler and applies :class:`LogSettings` to it."""

    def __init__(self, settings: LogSettings, logger: logging.Logger | None = None) -> None:
        """``logger``: the logger whose handler this is (the root logger by default; an embedded server passes
        ``tritium``'s so that the program's own logging is left as it was)."""
        if settings.log_format not in FORMATS:
            raise InvalidArgumentError(f"invalid argument for --log_format, got: {settings.log_format}")
        self.settings = settings
        self._lock = threading.Lock()
        if settings.log_file:
            handler: logging.Handler = logging.FileHandler(settings.log_file)
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_LevelFilter(settings))
        handler.setFormatter(TritonLogFormatter(settings.log_format))
        self.handler = handler
        self.logger = logging.getLogger() if logger is None else logger
        self.logger.handlers[:] = [handler]
        self._apply_level()

    def _apply_level(self) -> None:
        self.logger.setLevel(logging.DEBUG if self.settings.log_verbose_level > 0 else logging.INFO)

    def close(self) -> None:
        """Detach and close the handler (its log file)."""
        if self.handler in self.logger.handlers:
            self.logger.removeHandler(self.handler)
        self.handler.close()

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply the given settings (unknown keys are ignored, as Triton does); returns all settings."""
        new = LogSettings(**self.settings.as_dict())
        for key, value in changes.items():
            if key == "log_file":
                if value != self.settings.log_file:
                    raise UnsupportedError("log file location can not be updated through network protocol")
            elif key in ("log_info", "log_warning", "log_error"):
                if not isinstance(value, bool):
                    raise InvalidArgumentError(f"'{key}' must be a boolean, got {value!r}")
                setattr(new, key, value)
            elif key == "log_verbose_level":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgumentError(f"'log_verbose_level' must be an unsigned integer, got {value!r}")
                new.log_verbose_level = value
            elif key == "log_format":
                if value not in FORMATS:
                    raise InvalidArgumentError(f"invalid argument for --log_format, got: {value}")
                new.log_format = value
        with self._lock:
            for key, value in new.as_dict().items():
                setattr(self.settings, key, value)
            formatter = self.handler.formatter
            if isinstance(formatter, TritonLogFormatter):
                formatter.log_format = self.settings.log_format
            self._apply_level()
        return self.settings.as_dict()


def configure_logging(options: ServerOptions) -> LogManager:
    """Route Python's logging through Triton's log settings (format, levels, file)."""
    return LogManager(
        LogSettings(
            log_file=options.log_file,
            log_info=options.log_info,
            log_warning=options.log_warning,
            log_error=options.log_error,
            log_verbose_level=options.log_verbose,
            log_format=options.log_format,
        )
    )
