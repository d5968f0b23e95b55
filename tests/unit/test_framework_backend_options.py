"""Backend-wide options of the tensorflow backend (``--backend-config=tensorflow,...``), refused with reasons
before TensorFlow is imported, and the two framework backends found by name like any other."""

from __future__ import annotations

import pytest

from tritium.backends import ModelConfigError
from tritium.backends.registry import BUILTIN, discover
from tritium.backends.tensorflow import TensorFlowBackend


@pytest.mark.parametrize("settings,words", [
    ({"version": "1"}, ["version=1", "TensorFlow 2"]),
    ({"version": "two"}, ["version", "two"]),
    ({"gpu-memory-fraction": "1.5"}, ["gpu-memory-fraction", "1.5"]),
    ({"allow-soft-placement": "maybe"}, ["allow-soft-placement", "maybe"]),
    ({"default-max-batch-size": "-3"}, ["default-max-batch-size", "-3"]),
])
def test_tensorflow_backend_config_refused(settings: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ModelConfigError) as e:
        TensorFlowBackend().initialize(settings)
    for word in words:
        assert word in str(e.value)


def test_framework_backends_are_found_by_name() -> None:
    found = discover()
    assert found["openvino"] == BUILTIN["openvino"] == "tritium.backends.openvino:OpenVinoBackend"
    assert found["tensorflow"] == BUILTIN["tensorflow"] == "tritium.backends.tensorflow:TensorFlowBackend"
