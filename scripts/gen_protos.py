#!/usr/bin/env python3
"""Generate tritium's protobuf/gRPC Python modules.

Compiles every ``src/tritium/protos/*.proto`` with ``grpc_tools.protoc``
(Python messages + gRPC stubs) and rewrites the output so that:

* descriptors are added to tritium's private pool ``tritium._proto.POOL``
  instead of protobuf's process-wide default pool. ``tritonclient.grpc``
  registers its own copies of ``inference.ModelConfig`` etc. in the default
  pool, and both must be importable in one process;
* generated modules import each other as ``tritium._proto.<name>_pb2``.

The result (plus the package ``__init__.py``) is written to
``src/tritium/_proto/`` by default, or to the directory given as the first
argument. The output is committed, so running tritium needs only
``protobuf`` and ``grpcio``; this script additionally needs ``grpcio-tools``.
Output depends only on the .proto files and the grpcio-tools version, so a
test can regenerate into a temp dir and compare byte for byte.

Usage:
    .venv/bin/python scripts/gen_protos.py [OUTPUT_DIR]
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "src" / "tritium" / "protos"
DEFAULT_OUT_DIR = REPO_ROOT / "src" / "tritium" / "_proto"
PACKAGE = "tritium._proto"

INIT_PY = '''\
"""Generated protobuf/gRPC modules for tritium (do not edit by hand).

Regenerate with ``python scripts/gen_protos.py`` after changing
``src/tritium/protos/*.proto``.

All descriptors live in the private pool ``POOL`` rather than protobuf's
default pool, so these modules can be imported in the same process as
``tritonclient.grpc``, which registers Triton's own ``inference.*`` messages
in the default pool.
"""

import threading

from google.protobuf import descriptor_pool, symbol_database
from google.protobuf.internal import api_implementation
from google.protobuf.internal import builder as _builder

POOL = descriptor_pool.DescriptorPool()
SYMBOL_DB = symbol_database.SymbolDatabase(pool=POOL)

_BUILD_LOCK = threading.Lock()


def build_top_descriptors_and_messages(file_des, module_name, module):
    """Wrapper around protobuf's builder used by the generated modules.

    With the pure-Python protobuf implementation the builder also registers
    every new message descriptor in the *default* symbol database (and hence
    the default pool), where it would replace tritonclient's descriptors of
    the same names. Point the builder at our private database while our
    classes are built. The upb/C++ implementations do not touch the pool
    there, so they use the builder unchanged.
    """
    if api_implementation.Type() != "python" or not hasattr(_builder, "_sym_db"):
        _builder.BuildTopDescriptorsAndMessages(file_des, module_name, module)
        return
    with _BUILD_LOCK:
        saved = _builder._sym_db
        _builder._sym_db = SYMBOL_DB
        try:
            _builder.BuildTopDescriptorsAndMessages(file_des, module_name, module)
        finally:
            _builder._sym_db = saved
'''

PB2_NOTE = (
    "# Post-processed by scripts/gen_protos.py: descriptors are added to the\n"
    "# private pool tritium._proto.POOL, not the default descriptor pool.\n"
)
GRPC_NOTE = (
    "# Post-processed by scripts/gen_protos.py: imports point at the\n"
    "# tritium._proto package.\n"
)


def _run_protoc(proto_files: list[Path], out_dir: Path) -> None:
    from importlib import resources

    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def _sub_exactly(pattern: str, repl: str, text: str, name: str, count: int | None = None) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n == 0 or (count is not None and n != count):
        raise SystemExit(
            f"{name}: expected pattern {pattern!r} "
            f"{'at least once' if count is None else f'{count} time(s)'}, found {n}; "
            "protoc output format changed, update scripts/gen_protos.py"
        )
    return new


def _fix_imports(text: str, local_modules: set[str]) -> str:
    """Rewrite ``import foo_pb2 as bar`` for our own modules into package imports."""

    def repl(m: re.Match[str]) -> str:
        module, alias = m.group(1), m.group(2)
        if module not in local_modules:
            return m.group(0)
        return f"from {PACKAGE} import {module} as {alias}"

    return re.sub(r"^import (\w+) as (\w+)$", repl, text, flags=re.MULTILINE)


def _postprocess_pb2(text: str, name: str, local_modules: set[str]) -> str:
    text = _sub_exactly(
        r"^from google\.protobuf import descriptor_pool as _descriptor_pool\n",
        f"from {PACKAGE} import POOL as _POOL\n",
        text,
        name,
        count=1,
    )
    text = _sub_exactly(
        r"_descriptor_pool\.Default\(\)\.AddSerializedFile\(",
        "_POOL.AddSerializedFile(",
        text,
        name,
        count=1,
    )
    text = _sub_exactly(
        r"^_builder\.BuildTopDescriptorsAndMessages\(",
        "_build_top_descriptors_and_messages(",
        text,
        name,
        count=1,
    )
    text = _sub_exactly(
        r"^(from {pkg} import POOL as _POOL)\n".format(pkg=re.escape(PACKAGE)),
        r"\1\n"
        f"from {PACKAGE} import build_top_descriptors_and_messages"
        " as _build_top_descriptors_and_messages\n",
        text,
        name,
        count=1,
    )
    if "_descriptor_pool" in text or "Default()" in text.replace("_symbol_database.Default()", ""):
        raise SystemExit(f"{name}: unexpected remaining reference to the default pool")
    text = _fix_imports(text, local_modules)
    return _add_header_note(text, name, PB2_NOTE)


def _postprocess_grpc(text: str, name: str, local_modules: set[str]) -> str:
    text = _fix_imports(text, local_modules)
    if re.search(r"^import \w+_pb2 as", text, flags=re.MULTILINE):
        raise SystemExit(f"{name}: unresolved top-level pb2 import left")
    return _add_header_note(text, name, GRPC_NOTE)


def _add_header_note(text: str, name: str, note: str) -> str:
    first_nl = text.find("\n")
    if first_nl < 0 or "DO NOT EDIT" not in text[: first_nl + 200]:
        raise SystemExit(f"{name}: unexpected header")
    # Insert after the leading comment block (before the module docstring).
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    return "".join(lines[:i]) + note + "".join(lines[i:])


def generate(out_dir: Path) -> list[Path]:
    """Generate all modules into ``out_dir``; return the files written."""
    proto_files = sorted(PROTO_DIR.glob("*.proto"))
    if not proto_files:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")

    outputs: dict[str, str] = {"__init__.py": INIT_PY}
    with tempfile.TemporaryDirectory(prefix="tritium-protoc-") as tmp:
        tmp_dir = Path(tmp)
        _run_protoc(proto_files, tmp_dir)
        produced = sorted(p for p in tmp_dir.rglob("*.py"))
        local_modules = {p.stem for p in produced}
        for path in produced:
            if path.parent != tmp_dir:
                raise SystemExit(f"unexpected nested output {path}")
            text = path.read_text(encoding="utf-8")
            if path.name.endswith("_pb2_grpc.py"):
                # protoc emits a stub module even for files without services;
                # skip those empty ones.
                if "def add_" not in text and "Stub" not in text:
                    continue
                outputs[path.name] = _postprocess_grpc(text, path.name, local_modules)
            elif path.name.endswith("_pb2.py"):
                outputs[path.name] = _postprocess_pb2(text, path.name, local_modules)
            else:
                raise SystemExit(f"unexpected protoc output {path.name}")

    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove stale generated modules (e.g. from a deleted .proto).
    for old in out_dir.glob("*_pb2*.py"):
        if old.name not in outputs:
            old.unlink()
    written = []
    for fname in sorted(outputs):
        target = out_dir / fname
        data = outputs[fname].encode("utf-8")
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[1]).resolve() if len(argv) == 2 else DEFAULT_OUT_DIR
    for path in generate(out_dir):
        try:
            shown = path.relative_to(REPO_ROOT)
        except ValueError:
            shown = path
        print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
