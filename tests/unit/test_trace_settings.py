"""Trace settings: --trace-config parsing, per-model resolution, sampling and the trace file layout."""

from __future__ import annotations

import json

import pytest

from tritium.cli import parse_args
from tritium.core.errors import InvalidArgumentError, UnsupportedError
from tritium.trace import TraceConfig, TraceManager

REPO = ["--model-repository=/models"]


def test_trace_config_modes_and_deprecated_flags():
    options = parse_args([*REPO, "--trace-file=/tmp/t.json", "--trace-level=TIMESTAMPS", "--trace-rate=5",
                          "--trace-config", "level=TENSORS", "--trace-config", "triton,log-frequency=3",
                          "--trace-config", "count=10"])
    config = TraceConfig.parse(options.trace_config)
    assert config.settings == {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": 5, "trace_count": 10,
                               "log_frequency": 3, "trace_file": "/tmp/t.json", "trace_mode": "triton"}


def test_opentelemetry_settings():
    config = TraceConfig.parse(["mode=opentelemetry", "opentelemetry,url=http://h:1/v1/traces",
                                "opentelemetry,resource=service.name=svc", "opentelemetry,bsp_schedule_delay=10"])
    assert config.settings["trace_mode"] == "opentelemetry"
    assert config.otel == {"url": "http://h:1/v1/traces", "resource": {"service.name": "svc"}, "bsp_schedule_delay": 10}


@pytest.mark.parametrize("argv, message", [
    (["--trace-config", "foo,rate=1"], "invalid value for trace mode option: foo"),
    (["--trace-config", "level=BOGUS"], "invalid value for trace level option: bogus"),
    (["--trace-config", "rate=abc"], "Unable to parse 'trace_rate', got: abc"),
    (["--trace-config", "rate"], "expects [<mode>,]<setting>=<value>"),
    (["--trace-config", "bogus=1"], "unknown trace setting 'bogus'"),
    (["--trace-config", "opentelemetry,file=x"], "unknown opentelemetry trace setting 'file'"),
    (["--trace-config", "level=TIMESTAMPS"], "needs a trace file"),
])
def test_bad_trace_flags_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args([*REPO, *argv])
    assert message in capsys.readouterr().err


def _manager(tmp_path, **settings):
    items = [f"triton,file={tmp_path / 't.json'}"] + [f"{k}={v}" for k, v in settings.items()]
    return TraceManager(TraceConfig.parse(items))


def test_off_by_default_and_inactive(tmp_path):
    manager = TraceManager(TraceConfig())
    assert not manager.active
    assert manager.settings() == {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                                  "log_frequency": "0", "trace_file": "", "trace_mode": "triton"}


def test_sampling_rate_and_count(tmp_path):
    manager = _manager(tmp_path, level="TIMESTAMPS", rate=2, count=2)
    sampled = [manager.start("m", 1, str(i)) is not None for i in range(8)]
    assert sampled == [False, True, False, True, False, False, False, False]
    assert manager.settings()["trace_count"] == "0"
    assert not manager.active


def test_model_override_and_clear(tmp_path):
    manager = _manager(tmp_path, level="TIMESTAMPS", rate=1)
    assert manager.settings("m", {"trace_level": ["OFF"]})["trace_level"] == ["OFF"]
    assert manager.start("m", 1, "") is None and manager.start("n", 1, "") is not None
    manager.settings("", {"trace_rate": "4"})
    assert manager.settings("m")["trace_rate"] == "4"  # not overridden: follows the global
    assert manager.settings("m", {"trace_level": None})["trace_level"] == ["TIMESTAMPS"]
    assert manager.settings("", {"trace_rate": None})["trace_rate"] == "1"  # global null: startup value
    with pytest.raises(UnsupportedError):
        manager.settings("", {"trace_mode": "opentelemetry"})
    with pytest.raises(InvalidArgumentError):
        manager.settings("m", {"log_frequency": "-1"})


def test_trace_file_layout(tmp_path):
    manager = _manager(tmp_path, level="TIMESTAMPS", rate=1)
    manager.settings("", {"log_frequency": "2"})
    for i in range(3):
        trace = manager.start("m", 3, f"r{i}")
        trace.stamp("REQUEST_START", 10 + i)
        trace.execution(11 + i, 12 + i, 13 + i, 14 + i, 15 + i)
        trace.finish()
    manager.close()  # waits for the writer; the third trace goes to the main file (Triton's shutdown write)
    first = json.loads((tmp_path / "t.json.0").read_text())
    assert first[0] == {"id": 1, "model_name": "m", "model_version": 3, "request_id": "r0"}
    assert first[1] == {"id": 1, "timestamps": [{"name": "REQUEST_START", "ns": 10}]}
    assert {e["id"] for e in first} == {1, 2}
    assert not (tmp_path / "t.json.1").exists()
    assert {e["id"] for e in json.loads((tmp_path / "t.json").read_text())} == {3}


def test_opentelemetry_missing_package_message(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    manager = TraceManager(TraceConfig.parse(["mode=opentelemetry", "level=TIMESTAMPS"]))
    with pytest.raises(UnsupportedError, match=r"tritium\[trace\]"):
        manager.open()


def test_tensors_level_writes_tensors_as_triton(tmp_path):
    import numpy as np

    from tritium.core.types import DataType, Tensor

    manager = _manager(tmp_path, level="TENSORS", rate=1)
    manager.settings("", {"log_frequency": "1"})
    trace = manager.start("m", 1, "r")
    trace.add_tensors("TENSOR_QUEUE_INPUT", [Tensor("IN", DataType.FP32, np.array([[0, 1.5, 1e6]], np.float32))])
    trace.add_tensors("TENSOR_BACKEND_OUTPUT", [Tensor("OUT", DataType.INT32, np.array([3, -4], np.int32))])
    trace.stamp("REQUEST_START")
    trace.finish()
    manager.close()
    # Level TENSORS alone: no model entry and no timestamps, as Triton writes it.
    assert json.loads((tmp_path / "t.json.0").read_text()) == [
        {"id": 1, "activity": "TENSOR_QUEUE_INPUT",
         "tensor": {"name": "IN", "data": "0,1.5,1e+06", "shape": "1,3", "dtype": "FP32"}},
        {"id": 1, "activity": "TENSOR_BACKEND_OUTPUT",
         "tensor": {"name": "OUT", "data": "3,-4", "shape": "2", "dtype": "INT32"}},
    ]
