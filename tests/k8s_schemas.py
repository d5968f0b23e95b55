"""Kubernetes manifests checked against schemas, without a cluster.

Built-in kinds (Deployment, Service, Secret, HorizontalPodAutoscaler, ...) and the Kubernetes types that custom
resources embed (a Container) are validated by kubernetes-validate against the published Kubernetes OpenAPI
schemas, strictly (an unknown field is an error, as ``kubectl apply --validate=strict`` makes it).  Custom kinds
(the Prometheus Operator's ServiceMonitor, KServe's ServingRuntime and InferenceService) have no schema there: their
fields, as those projects' CRDs declared them in 2026 (prometheus-operator, KServe), are written out below for
the parts tritium's manifests use, and checked as strictly."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT = {"type": "object"}
ARRAY = {"type": "array"}
METADATA = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                   "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP},
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA,
                           "spec": spec}}


SERVICE_MONITOR = _resource("monitoring.coreos.com/v1", "ServiceMonitor", {
    "type": "object", "required": ["endpoints", "selector"], "additionalProperties": False,
    "properties": {
        "selector": {"type": "object", "additionalProperties": False,
                     "properties": {"matchLabels": STRING_MAP, "matchExpressions": ARRAY}},
        "namespaceSelector": {"type": "object", "additionalProperties": False,
                              "properties": {"any": {"type": "boolean"},
                                             "matchNames": {"type": "array", "items": {"type": "string"}}}},
        "jobLabel": {"type": "string"}, "targetLabels": ARRAY, "podTargetLabels": ARRAY,
        "sampleLimit": {"type": "integer", "minimum": 0}, "attachMetadata": OBJECT,
        "endpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "port": {"type": "string"}, "targetPort": {}, "path": {"type": "string"},
                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                "interval": {"type": "string", "pattern": DURATION},
                "scrapeTimeout": {"type": "string", "pattern": DURATION},
                "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                "relabelings": ARRAY, "metricRelabelings": ARRAY, "tlsConfig": OBJECT, "params": OBJECT,
                "authorization": OBJECT, "basicAuth": OBJECT, "bearerTokenSecret": OBJECT,
            }}},
    },
})

# KServe checks protocolVersions in its webhook (the CRD leaves them free strings): these are the ones it knows.
PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
SERVING_RUNTIME = _resource("serving.kserve.io/v1alpha1", "ServingRuntime", {
    "type": "object", "required": ["containers"], "additionalProperties": False,
    "properties": {
        "supportedModelFormats": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                           "autoSelect": {"type": "boolean"}, "priority": {"type": "integer", "minimum": 1}}}},
        "protocolVersions": {"type": "array", "items": PROTOCOLS},
        "containers": {"type": "array", "minItems": 1, "items": OBJECT},  # each: a core/v1 Container (below)
        "annotations": STRING_MAP, "labels": STRING_MAP, "multiModel": {"type": "boolean"},
        "disabled": {"type": "boolean"}, "grpcEndpoint": {"type": "string"}, "grpcDataEndpoint": {"type": "string"},
        "httpDataEndpoint": {"type": "string"}, "nodeSelector": STRING_MAP, "tolerations": ARRAY,
        "affinity": OBJECT, "volumes": ARRAY, "imagePullSecrets": ARRAY, "replicas": {"type": "integer"},
        "storageHelper": OBJECT, "builtInAdapter": OBJECT, "workerSpec": OBJECT,
    },
})

# The fields KServe adds to a Container in an InferenceService's predictor.model (the rest: a core/v1 Container).
MODEL_FIELDS = {
    "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
    "runtime": {"type": "string"}, "runtimeVersion": {"type": "string"},
    "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
    "storageUri": {"type": "string"}, "storage": OBJECT,
}
INFERENCE_SERVICE = _resource("serving.kserve.io/v1beta1", "InferenceService", {
    "type": "object", "required": ["predictor"], "additionalProperties": False,
    "properties": {
        "predictor": {"type": "object", "required": ["model"], "additionalProperties": False, "properties": {
            "model": {"type": "object", "required": ["modelFormat"]},
            "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
            "scaleTarget": {"type": "integer"}, "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
            "containerConcurrency": {"type": "integer"}, "timeout": {"type": "integer"},
            "serviceAccountName": {"type": "string"}, "nodeSelector": STRING_MAP, "tolerations": ARRAY,
            "affinity": OBJECT, "annotations": STRING_MAP, "labels": STRING_MAP,
            "deploymentStrategy": OBJECT, "volumes": ARRAY,
        }},
        "transformer": OBJECT, "explainer": OBJECT,
    },
})

CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
          ("serving.kserve.io/v1alpha1", "ServingRuntime"): SERVING_RUNTIME,
          ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE}


def validate_core_type(obj: dict[str, Any], type_file: str, version: str) -> None:
    """Validate ``obj`` against one Kubernetes type's strict schema (e.g. ``container-v1``), as kubernetes-validate
    validates a whole resource; raises jsonschema.ValidationError."""
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv_utils.schema_contents(f"{schema_dir}/{type_file}.json", version)
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(obj)


def validate_resource(resource: dict[str, Any]) -> None:
    """Validate one manifest against every supported Kubernetes version; raises with the offending path."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    for version in KUBERNETES_VERSIONS:
        if key not in CUSTOM:
            kubernetes_validate.validate(resource, version, strict=True)
            continue
        jsonschema.Draft7Validator(CUSTOM[key]).validate(resource)
        if key[1] == "ServingRuntime":
            for container in resource["spec"]["containers"]:
                validate_core_type(container, "container-v1", version)
        elif key[1] == "InferenceService":
            model = dict(resource["spec"]["predictor"]["model"])
            jsonschema.Draft7Validator({"type": "object", "properties": MODEL_FIELDS}).validate(model)
            container = {k: v for k, v in model.items() if k not in MODEL_FIELDS}
            validate_core_type({"name": "kserve-container", **container}, "container-v1", version)


def load_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest file."""
    return [d for d in yaml.safe_load_all(text) if d]
