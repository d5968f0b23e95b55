"""Loading a 100 MB model from an S3-compatible server (moto's ``moto_server`` on loopback), against the same
model from a local folder.

An ONNX model whose file holds a 100 MB initializer, in explicit mode, timed from the load request to its
answer (tritonclient.http ``load_model``):

* local folder: the model loads in place (the baseline);
* S3, cold: the objects are listed, downloaded into the cache, checked, published, then loaded (unload removes
  the copy, so every cold load downloads again);
* S3, unchanged: a second load of the loaded model (one listing; nothing downloaded or rebuilt);
* S3, config edited: the config changes in the bucket; the 100 MB file is hard-linked from the previous copy
  rather than downloaded, and the model is rebuilt.

    python benchmarks/object_storage.py [--repeat 3] [--megabytes 100]

moto keeps objects in memory, in Python: its throughput bounds the cold numbers (a real S3 or MinIO serves
faster); loopback has no network latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from s3server import ENV, MotoServer, sync  # noqa: E402

from server import RunningServer  # noqa: E402

CONFIG = """
backend: "onnxruntime"
max_batch_size: {batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
"""


def write_big_model(repo: str, megabytes: int) -> str:
    """``big``: OUTPUT0 = INPUT0 + W[:16], W a float32 initializer of ``megabytes`` MB (stored in the file)."""
    count = megabytes * 1_000_000 // 4
    weights = numpy_helper.from_array(np.random.default_rng(0).random(count, dtype=np.float32), "W")
    nodes = [
        helper.make_node("Slice", ["W", "starts", "ends"], ["W16"]),
        helper.make_node("Add", ["INPUT0", "W16"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])],
        [weights, numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([16], np.int64), "ends")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = os.path.join(repo, "big")
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    onnx.save(model, os.path.join(folder, "1", "model.onnx"))
    with open(os.path.join(folder, "config.pbtxt"), "w") as f:
        f.write(CONFIG.format(batch=8))
    return folder


def timed_load(client: httpclient.InferenceServerClient, name: str) -> float:
    start = time.perf_counter()
    client.load_model(name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    os.environ.update(ENV)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        folder = write_big_model(repo, args.megabytes)
        size = os.path.getsize(os.path.join(folder, "1", "model.onnx"))
        explicit = ["--model-control-mode=explicit", "--allow-grpc=false", "--allow-metrics=false",
                    f"--repository-cache-dir={tmp}"]
        with RunningServer([repo], explicit, timeout=120) as server:
            client = httpclient.InferenceServerClient(server.url, network_timeout=600)
            for _ in range(args.repeat):
                results.setdefault("local folder", []).append(timed_load(client, "big"))
                client.unload_model("big")
                time.sleep(0.5)
        with MotoServer() as s3:
            bucket = s3.client()
            bucket.create_bucket(Bucket="bench")
            start = time.perf_counter()
            sync(bucket, repo, "bench", "models")
            upload = time.perf_counter() - start
            with RunningServer([s3.repository("bench")], explicit, timeout=120) as server:
                client = httpclient.InferenceServerClient(server.url, network_timeout=600)
                for i in range(args.repeat):
                    results.setdefault("S3, cold (download + load)", []).append(timed_load(client, "big"))
                    results.setdefault("S3, unchanged (listing only)", []).append(timed_load(client, "big"))
                    with open(os.path.join(folder, "config.pbtxt"), "w") as f:
                        f.write(CONFIG.format(batch=8 - (i % 2 + 1)))
                    bucket.upload_file(os.path.join(folder, "config.pbtxt"), "bench", "models/big/config.pbtxt")
                    results.setdefault("S3, config edited (file reused)", []).append(timed_load(client, "big"))
                    client.unload_model("big")
                    time.sleep(0.5)
    print(f"model file: {size / 1e6:.1f} MB; upload to moto_server: {upload:.2f} s; {args.repeat} loads each")
    print(f"{'load':34s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for label, times in results.items():
        print(f"{label:34s} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f}")


if __name__ == "__main__":
    main()
