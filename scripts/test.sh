#!/usr/bin/env bash
# Installs tritium and its test requirements into .venv (first run only) and runs the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/unit -x
TRITIUM_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec python -m pytest "$@"
