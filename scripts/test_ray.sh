#!/usr/bin/env bash
# The Ray Serve tests, in an environment of their own: Ray is heavy (about 240 MB of its own, 670 MB for the
# whole venv) and brings protobuf 7, so the main test environment does not carry it.  Makes (once, and again
# when pyproject.toml or constraints-ray.txt change) .venv-ray with tritium[test-ray] at the versions of
# constraints-ray.txt, then runs tests/e2e/test_ray_serve.py (a real two-node Ray cluster on loopback) and the
# tests that check tritium under protobuf 7 (generated code, config parsing, the gRPC frontend).
# Extra arguments go to pytest.  For CI, after ./scripts/test.sh:  ./scripts/test_ray.sh -p no:cacheprovider
export TRITIUM_VENV="${TRITIUM_RAY_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv-ray}"
export TRITIUM_CONSTRAINTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/constraints-ray.txt"
TRITIUM_EXTRAS=test-ray
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
python -m pip check
exec python -m pytest \
    tests/e2e/test_ray_serve.py \
    tests/unit/test_protos.py tests/unit/test_config.py tests/unit/test_grpc_codec.py tests/e2e/test_grpc.py \
    "$@"
