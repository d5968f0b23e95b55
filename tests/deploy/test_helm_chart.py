"""deploy/helm/tritium: rendered by Helm's own template engine (Helm's Go SDK through helm-python-sdk, as
``helm template`` renders it), linted by Helm, every manifest validated against Kubernetes' schemas, and the
promises of the chart checked on the rendered objects: probes, graceful termination matching
``--exit-timeout-secs``, the server's command line (parsed by tritium's own parser), ports, ServiceMonitor, the
autoscaler's metric (one the adapter rules serve) and object-storage credentials kept in a Secret."""

from __future__ import annotations

import os
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from tritium.cli import parse_args

from k8s_schemas import load_documents, validate_resource
from server import ROOT

CHART = os.path.join(ROOT, "deploy", "helm", "tritium")
ADAPTER_VALUES = os.path.join(ROOT, "deploy", "prometheus", "adapter-values.yaml")
DEPLOY_README = os.path.join(ROOT, "deploy", "README.md")

CREDENTIAL_FILE = '{"s3": {"": {"secret_key": "s3cr3t-file", "key_id": "AKIAFILE", "region": "us-east-1"}}}'
EVERYTHING = {
    "replicaCount": 2,
    "image": {"repository": "registry.example/tritium", "tag": "0.1.0-fil"},
    "server": {"modelRepository": "s3://minio.storage:9000/models/repo", "modelControlMode": "poll",
               "repositoryPollSecs": 30, "exitTimeoutSecs": 60, "extraArgs": ["--log-verbose=1", "--strict-readiness=true"]},
    "objectStorage": {"env": {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s3cr3t-env",
                              "AWS_DEFAULT_REGION": "us-east-1"},
                      "credentialFile": CREDENTIAL_FILE, "gcsServiceAccountJson": '{"type": "service_account"}'},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
    "podAnnotations": {"team": "vision"},
    "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "2"}],
    "extraVolumes": [{"name": "cache", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
SCENARIOS = {
    "defaults": {},
    "everything": EVERYTHING,
    "existing-secret": {"objectStorage": {"existingSecret": "my-s3-credentials"}, "server": {"preStopSleepSeconds": 0}},
    "local-volume": {"server": {"modelRepository": "/models", "modelControlMode": "explicit",
                                "extraArgs": ["--load-model=*"]},
                     "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
                     "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]},
}


def render(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``helm template demo deploy/helm/tritium -n prod`` with ``values``: kind -> the one object of that kind."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name="demo", namespace="prod")
    objects: dict[str, dict[str, Any]] = {}
    for name, text in files.items():
        if name.endswith(".yaml"):
            for doc in load_documents(text):
                assert doc["kind"] not in objects, f"two {doc['kind']} objects"
                objects[doc["kind"]] = doc
    return objects


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_helm_lint_finds_nothing_wrong():
    result = helm.lint(CHART)
    assert result["errors"] == []
    # severity 1 is INFO (e.g. "icon is recommended"); warnings and errors are 2 and up
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_manifest_is_valid_kubernetes(scenario):
    objects = render(SCENARIOS[scenario])
    assert {"Deployment", "Service"} <= set(objects)
    for obj in objects.values():
        validate_resource(obj)


def test_what_each_scenario_renders():
    assert set(render({})) == {"Deployment", "Service", "ServiceAccount"}
    assert set(render(EVERYTHING)) == {"Deployment", "Service", "ServiceAccount", "Secret", "ServiceMonitor",
                                       "HorizontalPodAutoscaler"}
    assert "Secret" not in render(SCENARIOS["existing-secret"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_command_line_is_one_tritium_accepts(scenario):
    """The container runs tritium with tritonserver's flags; tritium's own parser takes them, and the ports the
    flags name are the container's named ports."""
    values = SCENARIOS[scenario]
    c = container(render(values))
    assert "command" not in c  # the image's entrypoint (tini, PID 1) runs the args
    assert c["args"][0] == "tritium"
    options = parse_args(c["args"][1:])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": options.http_port, "grpc": options.grpc_port, "metrics": options.metrics_port}
    assert options.model_repositories == [values.get("server", {}).get("modelRepository",
                                                                       "s3://my-bucket/model_repository")]
    assert options.exit_timeout_secs == values.get("server", {}).get("exitTimeoutSecs", 30)


def test_probes_use_triton_health_endpoints():
    c = container(render({}))
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # a first load from object storage may take minutes: the startup probe covers it before liveness counts
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize(("server", "grace"), [({}, 5 + 30 + 10), ({"exitTimeoutSecs": 120}, 5 + 120 + 10),
                                               ({"preStopSleepSeconds": 0, "exitTimeoutSecs": 0}, 10)])
def test_termination_grace_covers_prestop_and_exit_timeout(server, grace):
    """Kubernetes sends SIGTERM after the preStop hook, and SIGKILL terminationGracePeriodSeconds after the pod began
    stopping; tritium drains for up to --exit-timeout-secs after SIGTERM.  The grace period is derived from the same
    value the flag gets, so the kill never lands while requests are still draining."""
    objects = render({"server": server})
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    c = container(objects)
    exit_timeout = parse_args(c["args"][1:]).exit_timeout_secs
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] == grace
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + exit_timeout
    if server.get("preStopSleepSeconds") == 0:
        assert "lifecycle" not in c


def test_service_exposes_the_three_ports_and_selects_the_pods():
    objects = render({})
    service, pod_labels = objects["Service"], objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_service_monitor_scrapes_the_metrics_port():
    objects = render(EVERYTHING)
    monitor, service = objects["ServiceMonitor"], objects["Service"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["prod"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


def test_autoscaler_scales_the_deployment_on_a_metric_the_adapter_serves():
    objects = render(EVERYTHING)
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": objects["Deployment"]["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert "replicas" not in objects["Deployment"]["spec"]  # the autoscaler owns the count
    with open(ADAPTER_VALUES) as f:
        served = {rule["name"]["as"] for rule in yaml.safe_load(f)["rules"]["custom"]}
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served


def test_storage_credentials_come_from_a_secret_never_the_pod_spec():
    objects = render(EVERYTHING)
    secret, deployment = objects["Secret"], objects["Deployment"]
    c = container(objects)
    assert secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-env"
    assert secret["stringData"]["triton-cloud-credential.json"] == CREDENTIAL_FILE
    assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    deployment_text = yaml.safe_dump(deployment)
    for value in ("s3cr3t-env", "AKIAENV", "s3cr3t-file"):
        assert value not in deployment_text
    # the credential files: mounted from the Secret, and the variables Triton documents point at them
    env = {e["name"]: e.get("value") for e in c["env"]}
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "storage-credentials"]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "storage-credentials"]
    assert mount["readOnly"] is True and volume["secret"]["secretName"] == secret["metadata"]["name"]
    files = {os.path.join(mount["mountPath"], item["path"]): item["key"] for item in volume["secret"]["items"]}
    assert files[env["TRITON_CLOUD_CREDENTIAL_PATH"]] == "triton-cloud-credential.json"
    assert files[env["GOOGLE_APPLICATION_CREDENTIALS"]] == "gcs-service-account.json"
    # changed credentials roll the pods
    assert re.fullmatch(r"[0-9a-f]{64}",
                        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/storage-secret"])


def test_existing_secret_is_used_as_is():
    objects = render(SCENARIOS["existing-secret"])
    c = container(objects)
    assert c["envFrom"] == [{"secretRef": {"name": "my-s3-credentials"}}]
    assert "TRITON_CLOUD_CREDENTIAL_PATH" not in {e["name"] for e in c["env"]}


def test_runs_as_the_images_non_root_user_with_a_read_only_root():
    objects = render({})
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    c = container(objects)
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        [user] = re.findall(r"^USER (\d+):(\d+)$", f.read(), re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == tuple(map(int, user))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # what must be writable is: /tmp (model cache, Python environments) and /dev/shm (Python models' tensors)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_bad_values_are_refused_by_the_schema():
    """values.schema.json: Helm refuses a values file with a wrong type or an unknown key, naming it."""
    for bad, word in [({"server": {"exitTimeoutSecs": "thirty"}}, "exitTimeoutSecs"),
                      ({"server": {"modelControlMode": "sometimes"}}, "modelControlMode"),
                      ({"serverr": {}}, "serverr")]:
        with pytest.raises(helm.HelmError) as info:
            render(bad)
        assert word in str(info.value)


def test_every_value_is_documented():
    """Each key of values.yaml has a comment in values.yaml, and each top-level key is in deploy/README.md's table."""
    with open(os.path.join(CHART, "values.yaml")) as f:
        lines = f.read().splitlines()
    with open(DEPLOY_README) as f:
        readme = f.read()
    values = yaml.safe_load("\n".join(lines))
    for key in values:
        assert f"`{key}" in readme, f"{key} is not in deploy/README.md"
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        # a comment on the line before, or the key is a child of a commented block
        above = [lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()][:1]
        if not (above and above[0].strip().startswith("#")) and not m.group(1):
            undocumented.append(m.group(2))
    assert undocumented == []
