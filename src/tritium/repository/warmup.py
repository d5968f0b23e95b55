"""Model warmup (``model_warmup`` in the config): sample requests run on every instance before READY.

Each sample is validated like a client request, then executed ``count`` times
(at least once) on each instance directly, on the load thread, before the
model is published.  A sample that fails fails the load with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import ModelInstanceState
from tritium.config.paths import WARMUP_DIR, inside_model_dir
from tritium.core.bytes_codec import deserialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError, TritiumError
from tritium.core.inference import InferenceRequest
from tritium.core.model import Model
from tritium.core.types import DataType, Tensor

#: Most bytes the data of one warmup input may take, its batch included.  The sizes come from the config (which
#: a client may send with the repository API): they are checked before anything is allocated.
MAX_INPUT_BYTES = 1 << 30


class WarmupError(InvalidArgumentError):
    """A warmup sample could not be made or did not run."""


def warm_up(model: Model, instances: Sequence[ModelInstanceState], model_dir: str) -> None:
    """Run every warmup sample of ``model``'s config on every instance; raise :class:`WarmupError` on failure."""
    for sample in model.config.model_warmup:
        try:
            request = sample_request(model, sample, model_dir)
            model.validate(request)
        except TritiumError as e:
            raise WarmupError(f"failed to run warmup sample '{sample.name}': {e}") from None
        for instance in instances:
            for _ in range(max(1, sample.count)):
                try:
                    outcome = instance.execute([request])
                except TritiumError as e:
                    raise WarmupError(f"failed to run warmup sample '{sample.name}': {e}") from None
                except Exception as e:  # a backend bug fails the load, not the server
                    raise WarmupError(f"failed to run warmup sample '{sample.name}': {type(e).__name__}: {e}") from None
                if len(outcome) != 1:
                    raise WarmupError(f"failed to run warmup sample '{sample.name}': expected 1 response, "
                                      f"got {len(outcome)}")
                if isinstance(outcome[0], TritiumError):
                    raise WarmupError(f"failed to run warmup sample '{sample.name}': {outcome[0]}")


def sample_request(model: Model, sample: mc.ModelWarmup, model_dir: str) -> InferenceRequest:
    """The request of one warmup sample: zero, random or file data, batched as the sample says."""
    batch_size = sample.batch_size or 1
    if model.max_batch_size == 0 and batch_size != 1:
        raise InvalidArgumentError(f"batch_size must be 1 for a model that does not batch, got {batch_size}")
    if model.max_batch_size > 0 and batch_size > model.max_batch_size:
        raise InvalidArgumentError(f"batch_size {batch_size} exceeds max_batch_size {model.max_batch_size}")
    rng = np.random.default_rng()
    inputs = []
    for name, spec in sample.inputs.items():
        if spec.data_type == mc.TYPE_INVALID:
            raise InvalidArgumentError(f"warmup input '{name}' must specify 'data_type'")
        datatype = DataType.from_config(mc.DataType.Name(spec.data_type))
        dims = tuple(int(d) for d in spec.dims)
        if any(d < 0 for d in dims):
            raise InvalidArgumentError(f"input '{name}' has variable dims {list(dims)}; warmup dims must be fixed")
        size = math.prod(dims) * (datatype.itemsize or 8) * (batch_size if model.max_batch_size > 0 else 1)
        if size > MAX_INPUT_BYTES:
            raise InvalidArgumentError(f"warmup input '{name}' of shape {list(dims)} would take {size} bytes, more "
                                       f"than the {MAX_INPUT_BYTES} a warmup input may take")
        one = _data(model, name, datatype, dims, spec, model_dir, rng)
        if model.max_batch_size > 0:
            data = np.repeat(one[np.newaxis, ...], batch_size, axis=0)
        else:
            data = one
        inputs.append(Tensor(name, datatype, data))
    return InferenceRequest(model.name, model.version, id=f"warmup:{sample.name}", inputs=inputs,
                            batch_size=batch_size if model.max_batch_size > 0 else 1)


def _data(model: Model, name: str, datatype: DataType, dims: tuple[int, ...], spec: mc.ModelWarmup.Input,
          model_dir: str, rng: np.random.Generator) -> np.ndarray:
    count = int(np.prod(dims, dtype=np.int64))
    choice = spec.WhichOneof("input_data_type")
    if choice == "input_data_file":
        path = inside_model_dir(model_dir, spec.input_data_file, f"input_data_file of warmup input '{name}'",
                                model.name, base=WARMUP_DIR)
        shown = f"{WARMUP_DIR}/{spec.input_data_file.lstrip('/')}"  # never the server's absolute path
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise InvalidArgumentError(
                f"cannot read warmup data of input '{name}' from '{shown}': {e.strerror}") from None
        if datatype is DataType.BYTES:
            return deserialize_bytes_tensor(raw, count, name).reshape(dims)
        size = count * datatype.itemsize
        if len(raw) < size:
            raise InvalidArgumentError(
                f"warmup data of input '{name}' in '{shown}' has {len(raw)} bytes, {size} are needed for {list(dims)}"
            )
        return np.frombuffer(raw, dtype=datatype.numpy_dtype, count=count).reshape(dims)
    if datatype is DataType.BYTES:  # zero and random data are empty strings, as Triton sends them
        return np.full(dims, b"", dtype=object)
    if choice == "random_data" and datatype is not DataType.BOOL:
        dtype = datatype.numpy_dtype
        if dtype.kind == "f":
            return rng.random(dims).astype(dtype)
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), size=dims, endpoint=True).astype(dtype)
    if choice not in ("zero_data", "random_data"):
        raise InvalidArgumentError(f"warmup input '{name}' sets no data (zero_data, random_data or input_data_file)")
    return np.zeros(dims, dtype=datatype.numpy_dtype)
