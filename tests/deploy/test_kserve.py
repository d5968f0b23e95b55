"""deploy/kserve: the ServingRuntime and InferenceService validated against schemas (KServe's CRD fields, and
Kubernetes' Container for the runtime's container), the pair consistent with each other, and the command line KServe
runs (Triton's flags: --model-store, --grpc-port=9000, --http-port=8080) one that tritium takes.
tests/e2e/test_prometheus.py starts a real tritium with that exact command line."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tritium.cli import parse_args

from k8s_schemas import load_documents, validate_resource
from server import ROOT

KSERVE = os.path.join(ROOT, "deploy", "kserve")


def manifest(name: str) -> dict[str, Any]:
    with open(os.path.join(KSERVE, name)) as f:
        [doc] = load_documents(f.read())
    return doc


@pytest.mark.parametrize("name", ["servingruntime.yaml", "inferenceservice.yaml"])
def test_manifest_is_valid(name):
    validate_resource(manifest(name))


def test_runtime_runs_tritium_with_the_flags_kserve_passes_to_triton():
    [container] = manifest("servingruntime.yaml")["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe's controller looks for
    assert "command" not in container and container["args"][0] == "tritium"  # as KServe's Triton runtime does
    assert {"--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080"} <= set(container["args"])
    options = parse_args(container["args"][1:])
    assert options.model_repositories == ["/mnt/models"]  # where KServe's storage initializer puts storageUri
    assert (options.http_port, options.grpc_port) == (8080, 9000)
    assert options.allow_http and options.allow_grpc
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}


def test_runtime_metrics_annotation_names_tritiums_metrics_port():
    runtime = manifest("servingruntime.yaml")
    [container] = runtime["spec"]["containers"]
    port = runtime["spec"]["annotations"]["prometheus.kserve.io/port"]
    assert int(port) == parse_args(container["args"][1:]).metrics_port


def test_inference_service_uses_the_runtime_and_a_format_it_supports():
    runtime, isvc = manifest("servingruntime.yaml"), manifest("inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].startswith("s3://")


def test_every_kserve_container_arg_is_a_tritonserver_flag_spelling():
    """KServe's stock Triton runtime passes `tritonserver` then its flags; each of the runtime's flags is one
    tritium parses in the --flag=value form (no positional leftovers)."""
    [container] = manifest("servingruntime.yaml")["spec"]["containers"]
    for arg in container["args"][1:]:
        assert arg.startswith("--") and "=" in arg, arg
        parse_args(["--model-repository=/m", arg])
