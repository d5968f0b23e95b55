"""Tree models through tritonclient (``backend: "fil"``), compared with each framework's own predict.

Every FIL model type that runs on the CPU: XGBoost JSON and UBJSON, LightGBM text, Treelite checkpoints
(scikit-learn forests converted the way FIL documents); FIL's parameters (output_class, predict_proba,
threshold), auto-complete, and configs FIL's conventions refuse, each failing alone with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server import ROOT, RunningServer

xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")
treelite = pytest.importorskip("treelite")
sklearn_ensemble = pytest.importorskip("sklearn.ensemble")

FEATURES = 8
LEGACY = os.path.join(ROOT, "tests", "data", "fil")
RNG = np.random.default_rng(7)
X_TRAIN = RNG.standard_normal((600, FEATURES)).astype(np.float32)
X_TEST = RNG.standard_normal((64, FEATURES)).astype(np.float32)
Y_BINARY = (X_TRAIN[:, 0] + X_TRAIN[:, 1] * X_TRAIN[:, 2] > 0).astype(int)
Y_MULTI = np.digitize(X_TRAIN[:, 0] + 0.5 * X_TRAIN[:, 3], [-0.5, 0.5])  # 3 classes
Y_REG = X_TRAIN[:, 0] * 2 + np.sin(X_TRAIN[:, 1])


def _config(model_type: str | None, output_dims: int | None, *, output_class: bool, predict_proba: bool = False,
            extra: str = "", max_batch_size: int = 128, io: bool = True) -> str:
    params = [("output_class", str(output_class).lower()), ("predict_proba", str(predict_proba).lower())]
    if model_type:
        params.append(("model_type", model_type))
    text = f'backend: "fil"\nmax_batch_size: {max_batch_size}\ndynamic_batching {{ max_queue_delay_microseconds: 2000 }}\n'
    if io:
        text += (f'input [{{ name: "input__0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }}]\n'
                 f'output [{{ name: "output__0" data_type: TYPE_FP32 dims: [ {output_dims} ] }}]\n')
    text += "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params)
    return text + extra


def _model(repo: str, name: str, config: str, files: dict[str, str]) -> None:
    """A model folder: ``config``, and version 1 holding each trained file under the name given."""
    os.makedirs(os.path.join(repo, name, "1"), exist_ok=True)
    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
        f.write(config)
    for filename, source in files.items():
        shutil.copyfile(source, os.path.join(repo, name, "1", filename))


class Trained:
    """The models and what their own frameworks predict for X_TEST (the expected outputs)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.expected: dict[str, np.ndarray] = {}
        self.files: dict[str, str] = {}
        binary = xgboost.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1).fit(X_TRAIN, Y_BINARY)
        multi = xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(X_TRAIN, Y_MULTI)
        regressor = xgboost.XGBRegressor(n_estimators=20, max_depth=4, n_jobs=1).fit(X_TRAIN, Y_REG)
        self._save_xgb("xgb_binary", binary)
        self._save_xgb("xgb_multi", multi)
        self._save_xgb("xgb_reg", regressor)
        self.expected["xgb_binary_proba"] = binary.predict_proba(X_TEST)[:, 1:]
        self.expected["xgb_binary_class_03"] = (binary.predict_proba(X_TEST)[:, 1:] > 0.3).astype(np.float32)
        self.expected["xgb_multi_proba"] = multi.predict_proba(X_TEST)
        self.expected["xgb_multi_class"] = multi.predict(X_TEST).reshape(-1, 1).astype(np.float32)
        self.expected["xgb_reg"] = regressor.predict(X_TEST).reshape(-1, 1)
        lgb_binary = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=15, verbose=-1, n_jobs=1).fit(X_TRAIN, Y_BINARY)
        lgb_reg = lightgbm.LGBMRegressor(n_estimators=20, num_leaves=15, verbose=-1, n_jobs=1).fit(X_TRAIN, Y_REG)
        for name, model in (("lgb_binary", lgb_binary), ("lgb_reg", lgb_reg)):
            path = os.path.join(folder, f"{name}.txt")
            model.booster_.save_model(path)
            self.files[name] = path
        self.expected["lgb_binary_proba2"] = lgb_binary.predict_proba(X_TEST)
        self.expected["lgb_reg"] = lgb_reg.predict(X_TEST).reshape(-1, 1)
        # scikit-learn, FIL's documented route: a Treelite checkpoint made with treelite.sklearn
        forest = sklearn_ensemble.RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0)
        forest.fit(X_TRAIN, Y_MULTI)
        gbr = sklearn_ensemble.GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0)
        gbr.fit(X_TRAIN, Y_REG)
        for name, model in (("skl_forest", forest), ("skl_gbr", gbr)):
            path = os.path.join(folder, f"{name}.tl")
            treelite.sklearn.import_model(model).serialize(path)
            self.files[name] = path
        self.expected["skl_forest_proba"] = forest.predict_proba(X_TEST)
        self.expected["skl_forest_class"] = forest.predict(X_TEST).reshape(-1, 1).astype(np.float32)
        self.expected["skl_gbr"] = gbr.predict(X_TEST).reshape(-1, 1)

    def _save_xgb(self, name: str, model) -> None:  # type: ignore[no-untyped-def]
        for suffix in ("json", "ubj"):
            path = os.path.join(self.folder, f"{name}.{suffix}")
            model.get_booster().save_model(path)
            self.files[f"{name}.{suffix}"] = path


def _repository(repo: str, trained: Trained) -> None:
    """model name -> (config, {file name in the version folder: trained file})."""
    f = trained.files
    models = {
        "xgb_binary_proba": (_config("xgboost_json", 1, output_class=True, predict_proba=True),
                             {"xgboost.json": f["xgb_binary.json"]}),
        "xgb_binary_class_03": (_config("xgboost_ubj", 1, output_class=True,
                                        extra='parameters { key: "threshold" value { string_value: "0.3" } }\n'),
                                {"xgboost.ubj": f["xgb_binary.ubj"]}),
        "xgb_multi_proba": (_config("xgboost_ubj", 3, output_class=True, predict_proba=True),
                            {"xgboost.ubj": f["xgb_multi.ubj"]}),
        "xgb_multi_class": (_config("xgboost_json", 1, output_class=True), {"xgboost.json": f["xgb_multi.json"]}),
        # GPU-only parameters are ignored on the CPU; a custom file name
        "xgb_reg": (_config("xgboost_json", 1, output_class=False,
                            extra='default_model_filename: "regressor.json"\n'
                                  'parameters { key: "storage_type" value { string_value: "SPARSE" } }\n'
                                  'parameters { key: "algo" value { string_value: "NAIVE" } }\n'
                                  'parameters { key: "use_experimental_optimizations" value { string_value: "true" } }\n'),
                    {"regressor.json": f["xgb_reg.json"]}),
        "lgb_binary_proba2": (_config("lightgbm", 2, output_class=True, predict_proba=True),
                              {"model.txt": f["lgb_binary"]}),
        "lgb_reg": (_config("lightgbm", 1, output_class=False), {"model.txt": f["lgb_reg"]}),
        "skl_forest_proba": (_config("treelite_checkpoint", 3, output_class=True, predict_proba=True),
                             {"checkpoint.tl": f["skl_forest"]}),
        "skl_forest_class": (_config("treelite_checkpoint", 1, output_class=True), {"checkpoint.tl": f["skl_forest"]}),
        "skl_gbr": (_config("treelite_checkpoint", 1, output_class=False), {"checkpoint.tl": f["skl_gbr"]}),
        # auto-complete: no inputs, outputs or model_type; the file name tells the type
        "xgb_auto": (_config(None, None, output_class=True, predict_proba=True, io=False, max_batch_size=0),
                     {"xgboost.json": f["xgb_multi.json"]}),
        # refused, each alone
        "bad_features": (_config("xgboost_json", 1, output_class=False).replace(f"dims: [ {FEATURES} ]", "dims: [ 5 ]"),
                         {"xgboost.json": f["xgb_reg.json"]}),
        "bad_output_dims": (_config("xgboost_json", 2, output_class=True, predict_proba=True),
                            {"xgboost.json": f["xgb_multi.json"]}),
        "bad_model_type": (_config("catboost", 1, output_class=False), {"xgboost.json": f["xgb_reg.json"]}),
        "bad_proba_regressor": (_config("xgboost_json", 1, output_class=False, predict_proba=True),
                                {"xgboost.json": f["xgb_reg.json"]}),
        "bad_file_type": (_config("lightgbm", 1, output_class=False), {"model.txt": f["xgb_reg.ubj"]}),
        "bad_kind_gpu": (_config("xgboost_json", 1, output_class=False,
                                 extra="instance_group [{ kind: KIND_GPU gpus: [ 0 ] }]\n"),
                         {"xgboost.json": f["xgb_reg.json"]}),
        "bad_missing_file": (_config("xgboost_ubj", 1, output_class=False), {}),
    }
    for name, (config, files) in models.items():
        _model(repo, name, config, files)
    # the legacy binary format, made by XGBoost 1.7 (tests/data/fil/README.md)
    _model(repo, "xgb_legacy", _config("xgboost", 1, output_class=True, predict_proba=True)
           .replace(f"dims: [ {FEATURES} ]", "dims: [ 6 ]"), {"xgboost.model": os.path.join(LEGACY, "xgboost.model")})


BAD = {
    "bad_features": ["input__0", "[5]", f"[{FEATURES}]"],
    "bad_output_dims": ["output__0", "3 value(s)"],
    "bad_model_type": ["catboost", "model_type"],
    "bad_proba_regressor": ["predict_proba", "output_class"],
    "bad_file_type": ["model.txt", "lightgbm"],
    "bad_kind_gpu": ["KIND_GPU"],
    "bad_missing_file": ["xgboost.ubj", "not found"],
}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[RunningServer, Trained]]:
    workdir = tempfile.mkdtemp(prefix="tritium-fil-")
    try:
        trained = Trained(workdir)
        repo = os.path.join(workdir, "repo")
        _repository(repo, trained)
        with RunningServer([repo], ["--exit-on-error=false"], timeout=120) as running:
            yield running, trained
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _http(client: httpclient.InferenceServerClient, model: str, rows: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer(model, [tensor]).as_numpy("output__0")


@pytest.mark.parametrize("model", ["xgb_binary_proba", "xgb_binary_class_03", "xgb_multi_proba", "xgb_multi_class",
                                   "xgb_reg", "lgb_binary_proba2", "lgb_reg", "skl_forest_proba",
                                   "skl_forest_class", "skl_gbr"])
def test_outputs_equal_the_frameworks_own(server, model: str) -> None:  # type: ignore[no-untyped-def]
    running, trained = server
    expected = trained.expected[model]
    client = httpclient.InferenceServerClient(running.url)
    # one row (Treelite's GTIL for XGBoost models), a few, and a whole batch (XGBoost's own predictor)
    for rows in (slice(0, 1), slice(1, 4), slice(0, 64)):
        np.testing.assert_allclose(_http(client, model, X_TEST[rows]), expected[rows], rtol=1e-5, atol=1e-5)
    grpc = grpcclient.InferenceServerClient(running.grpc_url)
    tensor = grpcclient.InferInput("input__0", [16, FEATURES], "FP32")
    tensor.set_data_from_numpy(X_TEST[16:32])
    np.testing.assert_allclose(grpc.infer(model, [tensor]).as_numpy("output__0"), expected[16:32],
                               rtol=1e-5, atol=1e-5)


def test_xgboost_legacy_binary(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    rows = np.load(os.path.join(LEGACY, "legacy_inputs.npy"))
    expected = np.load(os.path.join(LEGACY, "legacy_expected.npy")).reshape(-1, 1)
    client = httpclient.InferenceServerClient(running.url)
    for part in (slice(0, 1), slice(0, 16)):
        np.testing.assert_allclose(_http(client, "xgb_legacy", rows[part]), expected[part], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_and_split(server) -> None:  # type: ignore[no-untyped-def]
    running, trained = server
    client = httpclient.InferenceServerClient(running.url, concurrency=16)
    pending = []
    for i in range(48):
        rows = X_TEST[i:i + 1 + i % 4]
        tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        pending.append((i, rows.shape[0], client.async_infer("xgb_multi_proba", [tensor])))
    for i, n, result in pending:
        np.testing.assert_allclose(result.get_result(timeout=60).as_numpy("output__0"),
                                   trained.expected["xgb_multi_proba"][i:i + n], rtol=1e-5, atol=1e-5)
    stats = client.get_inference_statistics("xgb_multi_proba")["model_stats"][0]
    assert int(stats["inference_count"]) >= sum(n for _, n, _ in pending)
    assert int(stats["inference_stats"]["compute_input"]["ns"]) > 0  # the backend's timing stamps


def test_auto_complete(server) -> None:  # type: ignore[no-untyped-def]
    running, trained = server
    client = httpclient.InferenceServerClient(running.url)
    config = client.get_model_config("xgb_auto")
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("input__0", "TYPE_FP32", [FEATURES])]
    assert [(t["name"], t["dims"]) for t in config["output"]] == [("output__0", [3])]
    assert config["max_batch_size"] == 4  # default-max-batch-size, as Triton fills it
    np.testing.assert_allclose(_http(client, "xgb_auto", X_TEST[:4]), trained.expected["xgb_multi_proba"][:4],
                               rtol=1e-5, atol=1e-5)


def test_refused_configs_fail_alone_with_reasons(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    request = urllib.request.Request(f"http://{running.url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        index = {m["name"]: m for m in json.loads(r.read())}
    for name, words in BAD.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        for word in words:
            assert word in index[name]["reason"], (name, word, index[name]["reason"])
    assert index["xgb_reg"]["state"] == "READY"  # GPU-only parameters were ignored, not refused


def test_wrong_feature_count_is_a_client_error(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    client = httpclient.InferenceServerClient(running.url)
    rows = np.zeros((2, FEATURES + 1), dtype=np.float32)
    with pytest.raises(Exception, match="input__0"):
        _http(client, "xgb_reg", rows)
    np.testing.assert_allclose(_http(client, "xgb_reg", X_TEST[:2]).shape, (2, 1))  # still serving
