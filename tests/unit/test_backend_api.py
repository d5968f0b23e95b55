"""The public backend contract (``tritium.backends``) and how backends are found by name."""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import Sequence
from importlib import metadata
from types import SimpleNamespace

import pytest

import tritium.backends as api
from tritium._proto import model_config_pb2 as mc
from tritium.backends import registry
from tritium.backends.registry import BUILTIN, BackendRegistry, check_model, discover
from tritium.scheduler.workers import InstanceWorker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The public names: adding one is a decision, removing or renaming one breaks backends outside tritium.
PUBLIC = {
    "Backend", "ModelState", "ModelInstanceState", "ModelContext", "InstanceSpec", "InferenceHandle",
    "ExecuteDone", "ALL_INSTANCE_KINDS", "ENTRY_POINT_GROUP", "model_config",
    "InferenceRequest", "InferenceResponse", "Tensor", "DataType",
    "batch_inputs", "split_batch", "requested_union", "batch_responses",
    "TritiumError", "Status", "InvalidArgumentError", "ModelConfigError", "NotFoundError", "UnavailableError",
    "UnsupportedError", "InternalError", "CancelledError",
}


def test_public_names_are_pinned() -> None:
    assert set(api.__all__) == PUBLIC
    assert len(api.__all__) == len(PUBLIC)
    for name in api.__all__:
        assert getattr(api, name) is not None
    assert api.ENTRY_POINT_GROUP == "tritium.backends"


def test_lifecycle_methods_and_declarations_have_defaults() -> None:
    """Everything a backend may declare is an attribute or method of the base classes, with a default."""
    class Minimal(api.Backend):
        def model_initialize(self, ctx: api.ModelContext) -> api.ModelState:
            raise NotImplementedError

    class Instance(api.ModelInstanceState):
        def execute(self, requests: Sequence[api.InferenceRequest]) -> list:
            return []

    backend = Minimal()
    assert backend.instance_kinds == frozenset({"KIND_CPU"})
    assert backend.decoupled is False
    assert backend.default_instance_count("KIND_CPU") == 1
    backend.initialize({})
    backend.auto_complete_config(None)  # type: ignore[arg-type]  # the default changes nothing
    backend.finalize()
    instance = Instance(api.InstanceSpec("m_0", "KIND_CPU", 0, mc.ModelInstanceGroup()))
    assert instance.may_run_inline is True
    assert instance.executes_async is False
    assert (instance.input_end_ns, instance.infer_end_ns) == (0, 0)
    loop = asyncio.new_event_loop()
    try:
        assert instance.execute_async([], loop, lambda r, e: None) is False
    finally:
        loop.close()
    instance.finalize()
    assert api.ALL_INSTANCE_KINDS == {"KIND_CPU", "KIND_GPU", "KIND_MODEL"}


def test_worker_uses_declared_async_only() -> None:
    """An ``execute_async`` method alone does not make the worker call it: ``executes_async`` does."""
    class Undeclared(api.ModelInstanceState):
        def execute(self, requests: Sequence[api.InferenceRequest]) -> list:
            return []

        def execute_async(self, requests, loop, done) -> bool:  # type: ignore[no-untyped-def]
            raise AssertionError("not declared")

    class Declared(Undeclared):
        executes_async = True

    loop = asyncio.new_event_loop()
    spec = api.InstanceSpec("m_0", "KIND_CPU", 0, mc.ModelInstanceGroup())
    undeclared, declared = InstanceWorker(Undeclared(spec), loop), InstanceWorker(Declared(spec), loop)
    try:
        assert undeclared.queues_on_thread
        assert not declared.queues_on_thread
    finally:
        for worker in (undeclared, declared):
            worker.stop()
            worker.join(5)
        loop.close()


def test_scheduler_does_not_probe_instances() -> None:
    """The contract is declared, not discovered: no getattr/hasattr on instances in the scheduler."""
    folder = os.path.join(ROOT, "src", "tritium", "scheduler")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text = f.read()
            assert "getattr(instance" not in text and "hasattr(instance" not in text, name


def test_builtins_are_registered_as_entry_points() -> None:
    """pyproject.toml registers the built-in backends in the same entry-point group as any package."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["tritium.backends"] == BUILTIN
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="tritium.backends")
                 if ep.dist is not None and ep.dist.name == "tritium"}
    if installed:  # tritium's metadata is installed (not a bare source checkout)
        assert installed == BUILTIN


def _entry_points(*items: tuple[str, str, str]):  # type: ignore[no-untyped-def]
    return lambda group: [SimpleNamespace(name=n, value=v, dist=SimpleNamespace(name=d)) for n, v, d in items]


def test_discovery_of_installed_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.metadata, "entry_points", _entry_points(
        ("mine", "pkg_a.mod:Mine", "pkg-a"),
        ("onnxruntime", "pkg_b:Shadow", "pkg-b"),  # a built-in name: tritium's own wins
        ("twice", "pkg_c:One", "pkg-c"),
        ("twice", "pkg_d:Two", "pkg-d"),
    ))
    found = discover()
    assert found["mine"] == "pkg_a.mod:Mine"
    assert found["onnxruntime"] == BUILTIN["onnxruntime"]
    with pytest.raises(api.UnavailableError, match=r"'twice' is registered by several packages.*pkg-c.*pkg-d"):
        BackendRegistry().get("twice")


def test_entry_point_that_is_not_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.metadata, "entry_points", _entry_points(
        ("notone", "collections:OrderedDict", "pkg"), ("gone", "no_such_module_xyz:Cls", "pkg"),
        ("noattr", "collections:NoSuchClass", "pkg")))
    backends = BackendRegistry()
    with pytest.raises(api.UnavailableError, match="'notone'.*is not a tritium.backends.Backend"):
        backends.get("notone")
    with pytest.raises(api.UnavailableError, match="'gone' cannot be imported.*no_such_module_xyz"):
        backends.get("gone")
    with pytest.raises(api.UnavailableError, match="'noattr'.*NoSuchClass"):
        backends.get("noattr")


def test_unknown_backend_reason(tmp_path: str) -> None:
    with pytest.raises(api.InvalidArgumentError, match=r"unable to find backend 'nosuch'.*tritium\.backends.*"
                                                        r"no --backend-directory"):
        BackendRegistry().get("nosuch")
    with pytest.raises(api.InvalidArgumentError, match=rf"no {tmp_path}/nosuch/model.py"):
        BackendRegistry(backend_directory=str(tmp_path)).get("nosuch")
    with pytest.raises(api.UnavailableError, match="no tensorrt backend"):
        BackendRegistry().get("tensorrt")


def test_python_based_backend_names_stay_in_the_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "model.py").write_text("class TritonPythonModel: pass\n")
    outside = tmp_path.parent / "outside_backend_dir"
    outside.mkdir(exist_ok=True)
    (outside / "model.py").write_text("class TritonPythonModel: pass\n")
    backends = BackendRegistry(backend_directory=str(tmp_path))
    assert backends.get("ok").name == "ok"
    for name in ("../outside_backend_dir", "..", ".", "a/b", ""):
        with pytest.raises(api.TritiumError):
            backends.get(name)
    with pytest.raises(api.InvalidArgumentError, match=r"runtime 'model.py' for backend 'onnxruntime'"):
        backends.get("onnxruntime", "model.py")  # Triton: runtime model.py means the Python-based one
    assert backends.get("ok", "model.py").name == "ok"
    backends.finalize()


def test_backend_config_reaches_initialize(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class Recording(api.Backend):
        def initialize(self, backend_config):  # type: ignore[no-untyped-def]
            seen.update(backend_config)

        def model_initialize(self, ctx):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    monkeypatch.setattr(registry.metadata, "entry_points", _entry_points(("rec", f"{__name__}:Recording", "pkg")))
    globals()["Recording"] = Recording
    backends = BackendRegistry({"*": {"g": "1", "k": "global"}, "rec": {"k": "mine"}, "other": {"x": "y"}})
    backend = backends.get("rec")
    assert backend.name == "rec"
    assert seen == {"g": "1", "k": "mine"}
    assert backends.get("rec") is backend  # initialized once


def test_check_model_refuses_undeclared_kinds_and_decoupled() -> None:
    class CpuOnly(api.Backend):
        name = "cpuonly"

        def model_initialize(self, ctx):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    config = mc.ModelConfig(name="m")
    config.instance_group.add(name="g", kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    check_model(CpuOnly(), config, "m")
    config.instance_group.add(name="gpu", kind=mc.ModelInstanceGroup.KIND_GPU, count=1, gpus=[0])
    with pytest.raises(api.InvalidArgumentError, match="'gpu' has kind KIND_GPU.*'cpuonly'.*KIND_CPU"):
        check_model(CpuOnly(), config, "m")
    config = mc.ModelConfig(name="m")
    config.model_transaction_policy.decoupled = True
    with pytest.raises(api.UnavailableError, match="'cpuonly' does not serve decoupled"):
        check_model(CpuOnly(), config, "m")


@pytest.mark.parametrize("path", [
    os.path.join("src", "tritium", "backends", "fil.py"),
    os.path.join("examples", "backends", "tritium-example-backend", "src", "tritium_example_backend", "__init__.py"),
])
def test_third_party_style_backends_use_only_the_public_contract(path: str) -> None:
    """The fil backend and the example package import nothing of tritium but ``tritium.backends``'s public
    names, as a backend written outside tritium would."""
    import ast

    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tritium":
            assert node.module == "tritium.backends", (path, node.module)
            assert {alias.name for alias in node.names} <= PUBLIC, (path, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            assert all(alias.name.split(".")[0] != "tritium" for alias in node.names), path


class _Kinds(api.Backend):
    """Records the instance specs it is given; ``instance_kinds`` set per subclass."""

    def model_initialize(self, ctx):  # type: ignore[no-untyped-def]
        backend = self

        class State(api.ModelState):
            def instance_initialize(self, spec):  # type: ignore[no-untyped-def]
                backend.kinds.append(spec.kind)

                class Instance(api.ModelInstanceState):
                    may_run_inline = False

                    def execute(self, requests):  # type: ignore[no-untyped-def]
                        return []

                return Instance(spec)

        return State(ctx)

    def __init__(self) -> None:
        self.kinds: list[str] = []


class CpuOnlyBackend(_Kinds):
    pass


class AnyKindBackend(_Kinds):
    instance_kinds = api.ALL_INSTANCE_KINDS


def test_kind_auto_follows_the_backends_declared_kinds(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """On a machine with a GPU, KIND_AUTO (or no instance_group) places a CPU-only backend's instances on the
    CPU, and a backend that declares KIND_GPU on the GPU."""
    from tritium.options import ServerOptions
    from tritium.repository.manager import ModelRepositoryManager

    monkeypatch.setattr(registry.metadata, "entry_points", _entry_points(
        ("cpu_only", f"{__name__}:CpuOnlyBackend", "pkg"), ("any_kind", f"{__name__}:AnyKindBackend", "pkg")))
    for name, backend in (("m_cpu", "cpu_only"), ("m_any", "any_kind")):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(
            f'backend: "{backend}"\nmax_batch_size: 0\n'
            'input [{ name: "I" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            'output [{ name: "O" data_type: TYPE_FP32 dims: [ 1 ] }]\n')

    async def load() -> dict[str, str]:
        manager = ModelRepositoryManager(ServerOptions(model_repositories=[str(tmp_path)]), backends)
        manager._builder.gpus = (0,)  # as on a machine with one GPU
        try:
            assert await manager.load_startup_models() == []
            return {name: mc.ModelInstanceGroup.Kind.Name(manager.get(name).config.instance_group[0].kind)
                    for name in ("m_cpu", "m_any")}
        finally:
            await manager.unload_all()

    backends = BackendRegistry()
    try:
        kinds = asyncio.run(load())
    finally:
        backends.finalize()
    assert kinds == {"m_cpu": "KIND_CPU", "m_any": "KIND_GPU"}
