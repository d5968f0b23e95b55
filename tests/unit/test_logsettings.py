"""Triton's log switches applied to Python logging records."""

from __future__ import annotations

import io
import logging
import re

import pytest

from tritium.core.errors import InvalidArgumentError, UnsupportedError
from tritium.logsettings import LogManager, LogSettings


@pytest.fixture
def logs():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    manager = LogManager(LogSettings())
    stream = io.StringIO()
    manager.handler.setStream(stream)  # type: ignore[attr-defined]
    yield manager, stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _emit(level: int, text: str) -> None:
    logging.getLogger("tritium.test").log(level, text)


@pytest.mark.parametrize("key, level", [("log_info", logging.INFO), ("log_warning", logging.WARNING),
                                        ("log_error", logging.ERROR)])
def test_each_switch_silences_its_level_only(logs, key, level):
    manager, stream = logs
    manager.update({key: False})
    for lvl in (logging.INFO, logging.WARNING, logging.ERROR):
        _emit(lvl, f"message-{logging.getLevelName(lvl)}")
    text = stream.getvalue()
    assert f"message-{logging.getLevelName(level)}" not in text
    assert sum(f"message-{logging.getLevelName(lvl)}" in text for lvl in (logging.INFO, logging.WARNING, logging.ERROR)) == 2


def test_verbose_level_enables_debug_records(logs):
    manager, stream = logs
    _emit(logging.DEBUG, "hidden")
    manager.update({"log_verbose_level": 2})
    _emit(logging.DEBUG, "shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_formats(logs):
    manager, stream = logs
    _emit(logging.WARNING, "plain")
    manager.update({"log_format": "ISO8601"})
    _emit(logging.ERROR, "iso")
    lines = stream.getvalue().splitlines()
    assert re.match(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ test_logsettings\.py:\d+\] plain$", lines[0])
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ E \d+ test_logsettings\.py:\d+\] iso$", lines[1])


def test_bad_updates_change_nothing(logs):
    manager, _ = logs
    with pytest.raises(InvalidArgumentError):
        manager.update({"log_verbose_level": 1, "log_format": "nope"})
    assert manager.settings.log_verbose_level == 0
    with pytest.raises(UnsupportedError):
        manager.update({"log_file": "/tmp/x"})
