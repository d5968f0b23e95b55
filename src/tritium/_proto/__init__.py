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
