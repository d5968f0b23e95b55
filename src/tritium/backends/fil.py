"""Tree models, as Triton's FIL backend serves them (``backend: "fil"``): XGBoost, LightGBM, Treelite.

Written against the public contract only (``tritium.backends``), as a backend outside tritium would be;
the frameworks come with the ``fil`` extra (``pip install tritium[fil]``) and load lazily, per model type.

Config, as FIL's: one input (``input__0``, FP32, ``[n_features]``), one output (``output__0``, FP32),
``max_batch_size`` > 0, and string parameters:

- ``model_type``: ``xgboost`` (legacy binary, ``xgboost.model``), ``xgboost_json`` (``xgboost.json``),
  ``xgboost_ubj`` (``xgboost.ubj``), ``lightgbm`` (text, ``model.txt``), ``treelite_checkpoint``
  (``checkpoint.tl``; scikit-learn forests go this way, converted with ``treelite.sklearn``);
  ``default_model_filename`` overrides the file name.  Left out, the type of the default file found is used.
- ``output_class`` (classifier or regressor), ``predict_proba`` (probabilities instead of class ids),
  ``threshold`` (binary decision, 0.5), ``xgboost_allow_unknown_field``: honoured.
- ``threads``: tritium's own: threads each instance's engine uses (default 1; instances add parallelism).
- ``algo``, ``storage_type``, ``threads_per_tree``, ``blocks_per_sm``, ``transfer_threshold``: FIL's GPU
  layout and launch settings; ignored (logged), as these instances run on the CPU.
  ``use_experimental_optimizations``: FIL's CPU performance flag, which does not change outputs; ignored
  (logged): the engine here is chosen by measurement instead.

Engines, by measurement (``benchmarks/fil.py``, 500 trees, 32 features, one thread): XGBoost's own
``inplace_predict`` is 1.5-7x faster than Treelite's GTIL from 16 rows up, GTIL 3-8x faster for one to
a few rows, and where they cross depends on the model.  So an XGBoost model is measured when it loads
(:func:`crossover`: both engines on batches of 1 to 64 random rows, a few milliseconds) and runs smaller
batches on GTIL, larger ones on XGBoost; both give the same float32 outputs.  LightGBM's own
``predict`` beat GTIL at every batch size.  Treelite checkpoints run on GTIL, the only engine that reads
them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tritium.backends import (
    Backend,
    DataType,
    InferenceRequest,
    InferenceResponse,
    InstanceSpec,
    InternalError,
    ModelConfigError,
    ModelContext,
    ModelInstanceState,
    ModelState,
    Tensor,
    TritiumError,
    UnavailableError,
    batch_inputs,
    model_config,
    split_batch,
)

log = logging.getLogger(__name__)

#: FIL's model types and the file each is looked for under, in the version folder.
MODEL_FILES: dict[str, str] = {
    "xgboost": "xgboost.model",
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
#: FIL parameters that only shape its GPU kernels: nothing to do on the CPU.
_GPU_ONLY = ("algo", "storage_type", "threads_per_tree", "blocks_per_sm", "transfer_threshold")
#: The batch sizes :func:`crossover` compares the engines at.
_PROBE_ROWS = (1, 2, 4, 8, 16, 32, 64)
_FP32 = model_config.TYPE_FP32


def _flag(ctx: ModelContext, key: str, default: bool = False) -> bool:
    text = ctx.parameter(key)
    if text is None or text.strip() == "":
        return default
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ModelConfigError(f"model '{ctx.name}': FIL parameter '{key}' must be true or false, got '{text}'")


def _number(ctx: ModelContext, key: str, default: float, integer: bool = False) -> float:
    text = ctx.parameter(key)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ModelConfigError(f"model '{ctx.name}': FIL parameter '{key}' must be {kind}, got '{text}'") from None
    return value


def _import(module: str, model_type: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise UnavailableError(f"FIL model_type '{model_type}' needs the Python package '{module.split('.')[0]}' "
                               f"(pip install 'tritium[fil]'): {e}") from None


def _model_file(ctx: ModelContext) -> tuple[str, str]:
    """(model_type, path) of this version: the ``model_type`` parameter, or the type whose file is there."""
    model_type = (ctx.parameter("model_type") or "").strip()
    filename = ctx.config.default_model_filename
    if model_type and model_type not in MODEL_FILES:
        raise ModelConfigError(f"model '{ctx.name}': unknown FIL model_type '{model_type}' "
                               f"(one of {', '.join(MODEL_FILES)})")
    if not model_type:
        found = [t for t, f in MODEL_FILES.items() if os.path.isfile(os.path.join(ctx.version_dir, filename or f))]
        if not found or (filename and len(found) > 1):
            raise ModelConfigError(f"model '{ctx.name}': set the FIL parameter 'model_type' (one of "
                                   f"{', '.join(MODEL_FILES)}): no file of a known type in {ctx.version_dir}")
        model_type = found[0]
    path = os.path.join(ctx.version_dir, filename or MODEL_FILES[model_type])
    version_dir = os.path.realpath(ctx.version_dir)
    if os.path.commonpath([os.path.realpath(path), version_dir]) != version_dir:
        raise ModelConfigError(f"model '{ctx.name}': model file '{filename}' lies outside the version folder")
    if not os.path.isfile(path):
        raise ModelConfigError(f"model '{ctx.name}': FIL model file not found: {path}")
    return model_type, path


class Forest:
    """A loaded tree model: ``predict(rows)`` gives an ``(n, k)`` float32 array (k = 1 for regressors and
    binary classifiers: the positive class's probability; k = classes for multi-class models)."""

    def __init__(self, model_type: str, path: str, threads: int, allow_unknown: bool) -> None:
        self.model_type = model_type
        self.threads = threads
        self._small: Callable[[np.ndarray], np.ndarray] | None = None
        if model_type == "lightgbm":
            lightgbm = _import("lightgbm", model_type)
            booster = lightgbm.Booster(model_file=path)
            self._large = lambda x: booster.predict(x, num_threads=threads)
            self.num_feature = int(booster.num_feature())
        elif model_type == "treelite_checkpoint":
            self._large = self._gtil(_import("treelite", model_type).Model.deserialize(path))
        elif model_type == "xgboost":  # the legacy binary format: XGBoost 3 no longer reads it, Treelite does
            treelite = _import("treelite", model_type)
            self._large = self._gtil(treelite.frontend.load_xgboost_model_legacy_binary(path))
        else:
            xgboost = _import("xgboost", model_type)
            booster = xgboost.Booster(model_file=path)
            booster.set_param({"nthread": threads})
            self.num_feature = int(booster.num_features())
            self._large = lambda x: booster.inplace_predict(x, validate_features=False)
            try:
                treelite = __import__("treelite")
            except ImportError:
                treelite = None
            if treelite is not None:
                choice = "json" if model_type == "xgboost_json" else "ubjson"
                forest = treelite.frontend.load_xgboost_model(path, format_choice=choice,
                                                              allow_unknown_field=allow_unknown)
                self._small = self._gtil(forest)
        probe = self._large(np.zeros((1, self.num_feature), dtype=np.float32))
        self.num_class = int(np.asarray(probe).reshape(1, -1).shape[1])
        #: Batches with fewer rows than this run on ``_small`` (GTIL) rather than ``_large``.
        self.small_below = crossover(self._small, self._large, self.num_feature) if self._small is not None else 0

    def _gtil(self, forest: Any) -> Callable[[np.ndarray], np.ndarray]:
        import treelite.gtil

        if forest.num_feature <= 0:
            raise ModelConfigError("the tree model declares no features")
        self.num_feature = int(forest.num_feature)
        predict, threads = treelite.gtil.predict, self.threads
        return lambda x: predict(forest, x, nthread=threads)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        small = self._small
        engine = small if small is not None and rows.shape[0] < self.small_below else self._large
        out = np.asarray(engine(rows), dtype=np.float32)
        return out.reshape(rows.shape[0], -1)


def crossover(small: Callable[[np.ndarray], Any], large: Callable[[np.ndarray], Any], features: int,
              repeats: int = 3) -> int:
    """The fewest rows (of ``_PROBE_ROWS``) at which ``large`` predicts faster than ``small``: each engine's
    best of ``repeats`` timings on the same random rows, so that a busy machine rarely tips the choice."""
    rows = np.random.default_rng(0).standard_normal((_PROBE_ROWS[-1], features)).astype(np.float32)

    def best(engine: Callable[[np.ndarray], Any], batch: np.ndarray) -> float:
        engine(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine(batch)
            times.append(time.perf_counter() - start)
        return min(times)

    for n in _PROBE_ROWS:
        batch = np.ascontiguousarray(rows[:n])
        if best(large, batch) < best(small, batch):
            return n
    return _PROBE_ROWS[-1] * 2


class FilBackend(Backend):
    """Tree models on the CPU (``backend: "fil"``)."""

    # instance_kinds: the default, KIND_CPU.  FIL's GPU execution needs RAPIDS' cuML/FIL, not here.

    def auto_complete_config(self, ctx: ModelContext) -> None:
        """Fill ``input__0`` / ``output__0`` and ``max_batch_size`` from the model file, as they are missing."""
        config = ctx.config
        if config.input and config.output and config.max_batch_size > 0:
            return
        settings = _Settings(ctx)
        forest = Forest(settings.model_type, settings.path, 1, settings.allow_unknown)
        if config.max_batch_size <= 0:
            config.max_batch_size = int(ctx.backend_config.get("default-max-batch-size", "4") or 4)
        if not config.input:
            config.input.add(name="input__0", data_type=_FP32, dims=[forest.num_feature])
        if not config.output:
            config.output.add(name="output__0", data_type=_FP32, dims=[settings.width(forest.num_class)])

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        return FilModel(ctx)


class _Settings:
    """The FIL parameters of one model, checked."""

    def __init__(self, ctx: ModelContext) -> None:
        self.model_type, self.path = _model_file(ctx)
        self.output_class = _flag(ctx, "output_class")
        self.predict_proba = _flag(ctx, "predict_proba")
        self.threshold = _number(ctx, "threshold", 0.5)
        self.allow_unknown = _flag(ctx, "xgboost_allow_unknown_field")
        self.threads = int(_number(ctx, "threads", 1, integer=True))
        if self.threads < 1:
            raise ModelConfigError(f"model '{ctx.name}': FIL parameter 'threads' must be 1 or more")
        if self.predict_proba and not self.output_class:
            raise ModelConfigError(f"model '{ctx.name}': predict_proba needs output_class true (a regressor has "
                                   "no class probabilities)")

    def width(self, num_class: int, declared: int | None = None) -> int:
        """Values per row of ``output__0``: the model's outputs, its probabilities, or one class id."""
        if not self.output_class:
            return num_class
        if not self.predict_proba:
            return 1
        if num_class == 1:  # binary: p, or [1 - p, p] where the config asks for two columns
            return 2 if declared == 2 else 1
        return num_class


class FilModel(ModelState):
    def __init__(self, ctx: ModelContext) -> None:
        super().__init__(ctx)
        config = ctx.config
        name = ctx.name
        self.settings = settings = _Settings(ctx)
        if config.max_batch_size <= 0:
            raise ModelConfigError(f"model '{name}': FIL models take batches of rows: set max_batch_size > 0")
        if len(config.input) != 1 or config.input[0].data_type != _FP32:
            raise ModelConfigError(f"model '{name}': FIL models take one FP32 input (input__0, [n_features])")
        if len(config.output) != 1 or config.output[0].data_type != _FP32:
            extra = [o.name for o in config.output if o.name != "output__0"]
            why = f" (FIL's '{extra[0]}' output, e.g. SHAP values, is not available)" if extra else ""
            raise ModelConfigError(f"model '{name}': FIL models have one FP32 output (output__0){why}")
        for key in _GPU_ONLY:
            if ctx.parameter(key) is not None:
                log.info("model '%s': FIL parameter '%s' applies to GPU execution only: ignored", name, key)
        if ctx.parameter("use_experimental_optimizations") is not None:
            log.info("model '%s': FIL parameter 'use_experimental_optimizations' is ignored (it does not change "
                     "outputs; tritium picks its engine by measurement)", name)
        try:
            self.forest = Forest(settings.model_type, settings.path, settings.threads, settings.allow_unknown)
        except TritiumError:
            raise
        except Exception as e:  # the framework's own reason: a corrupt or mistyped file
            raise ModelConfigError(f"model '{name}': cannot load {settings.path} as FIL model_type "
                                   f"'{settings.model_type}': {type(e).__name__}: {e}") from None
        tensor = config.input[0]
        self.input = tensor.name
        features = list(tensor.dims)
        if len(features) != 1 or features[0] not in (-1, self.forest.num_feature):
            raise ModelConfigError(f"model '{name}': input '{tensor.name}' has dims {features}; the model takes "
                                   f"[{self.forest.num_feature}] (its number of features)")
        output = config.output[0]
        self.output = output.name
        dims = list(output.dims)
        declared = int(np.prod(dims)) if dims and -1 not in dims else None
        self.width = settings.width(self.forest.num_class, declared)
        if declared is not None and declared != self.width:
            raise ModelConfigError(f"model '{name}': output '{output.name}' has dims {dims}, but this model gives "
                                   f"{self.width} value(s) per row (output_class={settings.output_class}, "
                                   f"predict_proba={settings.predict_proba}, classes={self.forest.num_class})")
        self.row_shape = tuple(d if d != -1 else self.width for d in dims) if dims else (self.width,)

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        return FilInstance(spec, self)

    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """``output__0`` for a batch of rows: FIL's conventions applied to the engine's predictions."""
        settings = self.settings
        scores = self.forest.predict(rows)
        if not settings.output_class:
            result = scores
        elif settings.predict_proba:
            if scores.shape[1] == 1 and self.width == 2:
                result = np.concatenate([1 - scores, scores], axis=1)
            else:
                result = scores
        elif scores.shape[1] == 1:
            result = (scores > settings.threshold).astype(np.float32)
        elif scores.shape[1] == 2:  # a binary model giving both classes (scikit-learn forests)
            result = (scores[:, 1:] > settings.threshold).astype(np.float32)
        else:
            result = np.argmax(scores, axis=1).astype(np.float32).reshape(-1, 1)
        return result.reshape((rows.shape[0], *self.row_shape))


class FilInstance(ModelInstanceState):
    def __init__(self, spec: InstanceSpec, model: FilModel) -> None:
        super().__init__(spec)
        self.model = model

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        model = self.model
        rows = batch_inputs(requests)[model.input]
        if rows.dtype != np.float32 or not rows.flags.c_contiguous:
            rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.input_end_ns = time.monotonic_ns()
        try:
            result = model.outputs(rows)
        except Exception as e:  # the engine's own failure, for this batch only
            raise InternalError(f"model '{model.ctx.name}': prediction failed: {type(e).__name__}: {e}") from None
        self.infer_end_ns = time.monotonic_ns()
        version = model.ctx.version
        responses: list[InferenceResponse | TritiumError] = []
        for request, part in zip(requests, split_batch(result, requests), strict=True):
            wanted = request.requested_outputs is None or model.output in request.requested_outputs
            outputs = [Tensor(model.output, DataType.FP32, part)] if wanted else []
            responses.append(InferenceResponse(request.model_name, version, request.id, outputs))
        return responses
