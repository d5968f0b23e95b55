#!/usr/bin/env bash
# Installs tritium and its test requirements into .venv (first run only) and runs the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/unit -x
#
#   ./scripts/test.sh --differential [pytest args]
# runs tests/e2e/test_against_real_triton.py against real Triton instead: it makes (once) .venv-triton with
# nvidia-pytriton and tritonclient[all] at the versions of constraints-triton.txt (the tritonserver inside
# that wheel, Python backend only; Linux x86-64) and points the tests at it. TRITIUM_TRITON_PYTHON, when set,
# names an interpreter that has them already, and nothing is installed.
TRITIUM_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
source "$ROOT/scripts/_system_packages.sh"
if [ "${1:-}" != "--differential" ]; then
    exec python -m pytest "$@"
fi
shift
if [ -z "${TRITIUM_TRITON_PYTHON:-}" ]; then
    TRITON_VENV="${TRITIUM_TRITON_VENV:-$ROOT/.venv-triton}"
    TRITON_STAMP="$TRITON_VENV/.tritium-installed"
    TRITON_DIGEST="$(python -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
        "$ROOT/constraints-triton.txt")"
    if [ "$(cat "$TRITON_STAMP" 2>/dev/null)" != "$TRITON_DIGEST" ]; then
        echo "test.sh: installing real Triton (nvidia-pytriton) into $TRITON_VENV (once; about a minute)" >&2
        [ -x "$TRITON_VENV/bin/python" ] || python3 -m venv "$TRITON_VENV"
        "$TRITON_VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints-triton.txt" nvidia-pytriton 'tritonclient[all]'
        echo "$TRITON_DIGEST" > "$TRITON_STAMP"
    fi
    export TRITIUM_TRITON_PYTHON="$TRITON_VENV/bin/python"
fi
export TRITIUM_REAL_TRITON_SCRIPT="${TRITIUM_REAL_TRITON_SCRIPT:-$ROOT/scripts/real_triton.sh}"
exec python -m pytest tests/e2e/test_against_real_triton.py "$@"
