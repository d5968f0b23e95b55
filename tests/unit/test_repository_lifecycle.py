"""Fingerprints (what a reload rebuilds), file-override folders and warmup samples."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InvalidArgumentError, Status, TritiumError, status_text
from tritium.core.model import Model
from tritium.repository.fingerprint import model_fingerprint, version_fingerprint
from tritium.repository.overrides import OverrideDir
from tritium.repository.warmup import sample_request


def test_fingerprints_see_config_and_version_file_changes_separately(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"a")
    (tmp_path / "config.pbtxt").write_text("max_batch_size: 8")
    model, v1 = model_fingerprint(str(tmp_path)), version_fingerprint(str(tmp_path), 1)
    (tmp_path / "1" / "model.onnx").write_bytes(b"b")  # same size, same second: content tells
    assert model_fingerprint(str(tmp_path)) == model
    assert version_fingerprint(str(tmp_path), 1) != v1
    (tmp_path / "config.pbtxt").write_text("max_batch_size: 4")
    assert model_fingerprint(str(tmp_path)) != model
    assert model_fingerprint(str(tmp_path), "override") != model_fingerprint(str(tmp_path))


def test_override_folder_refuses_paths_outside_and_is_removed_with_its_last_user():
    with pytest.raises(InvalidArgumentError, match="file:../etc/x"):
        OverrideDir.create("m", {"../etc/x": b""})
    folder = OverrideDir.create("m", {"1/model.onnx": b"xyz"})
    with open(os.path.join(folder.path, "1", "model.onnx"), "rb") as f:
        assert f.read() == b"xyz"
    folder.acquire()
    folder.acquire()
    folder.release()
    assert os.path.isdir(folder.path)
    folder.release()
    assert not os.path.exists(folder.path)


def _model(max_batch_size: int) -> Model:
    config = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    config.input.add(name="X", data_type=mc.TYPE_INT32, dims=[3])
    config.input.add(name="S", data_type=mc.TYPE_STRING, dims=[2])
    return Model("m", 1, config, scheduler=None)  # type: ignore[arg-type]


def test_warmup_samples_batch_zero_random_and_file_data(tmp_path):
    sample = mc.ModelWarmup(name="s", batch_size=4)
    sample.inputs["X"].data_type = mc.TYPE_INT32
    sample.inputs["X"].dims.extend([3])
    sample.inputs["X"].input_data_file = "x.bin"
    sample.inputs["S"].data_type = mc.TYPE_STRING
    sample.inputs["S"].dims.extend([2])
    sample.inputs["S"].random_data = True
    (tmp_path / "warmup").mkdir()
    np.array([7, 8, 9], dtype=np.int32).tofile(tmp_path / "warmup" / "x.bin")
    request = sample_request(_model(8), sample, str(tmp_path))
    tensors = {t.name: t.data for t in request.inputs}
    np.testing.assert_array_equal(tensors["X"], np.tile([7, 8, 9], (4, 1)))
    assert tensors["S"].shape == (4, 2) and set(tensors["S"].ravel()) == {b""}
    with pytest.raises(InvalidArgumentError, match="batch_size must be 1"):
        sample_request(_model(0), sample, str(tmp_path))
    sample.inputs["X"].input_data_file = "missing.bin"
    with pytest.raises(InvalidArgumentError, match="missing.bin"):
        sample_request(_model(8), sample, str(tmp_path))


def test_status_text_spells_codes_as_triton():
    """A failed version's reason reads as Triton writes an error: ``<code>: <message>``."""
    assert status_text(InvalidArgumentError("bad sample")) == "Invalid argument: bad sample"
    assert status_text(TritiumError("gone", Status.UNAVAILABLE)) == "Unavailable: gone"
    assert status_text(TritiumError("x", Status.INTERNAL)) == "Internal: x"
    assert status_text(ValueError("oops")) == "Internal: ValueError: oops"  # not ours: a bug, Internal

