"""PyTorch backend for TorchScript models (``backend: "pytorch"``, ``platform: "pytorch_libtorch"``, ``model.pt``).

Follows Triton's pytorch backend (``libtorch``):

* the module is loaded with ``torch.jit.load`` onto the instance's device
  (``cpu``, ``cuda:<id>`` for KIND_GPU, the devices baked into the file for KIND_MODEL);
* inputs bind to ``forward()`` by argument name, else by the ``<name>__<index>``
  convention, else in config order; a ``forward`` taking one ``Dict[str, Tensor]``
  gets every input under its config name; ``TYPE_STRING`` inputs arrive as ``List[str]``;
* ``forward`` may return a tensor, a ``List[str]``, a tuple/list of those (outputs bound
  by ``<name>__<index>`` or config order) or a ``Dict[str, Tensor]`` (bound by name,
  something Triton's backend refuses);
* the model ``parameters`` Triton reads: ``INFERENCE_MODE``, ``DISABLE_OPTIMIZED_EXECUTION``,
  ``DISABLE_CUDNN``, ``ENABLE_CACHE_CLEANING``, ``ENABLE_WEIGHT_SHARING``, ``ENABLE_JIT_EXECUTOR``,
  ``ENABLE_JIT_PROFILING``, ``ENABLE_TENSOR_FUSER``, ``ENABLE_NVFUSER`` (older torch only),
  ``INTRA_OP_THREAD_COUNT`` and ``INTER_OP_THREAD_COUNT`` (process-wide: the first model wins).

torch is an optional dependency (``pip install 'tritium[pytorch]'``), imported only when a
pytorch model loads.
"""

from .backend import PyTorchBackend, PyTorchModelState
from .execution import PyTorchInstanceState
from .settings import INSTALL_HINT, Settings

__all__ = ["PyTorchBackend", "PyTorchModelState", "PyTorchInstanceState", "Settings", "INSTALL_HINT"]
