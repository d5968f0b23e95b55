#!/usr/bin/env bash
# Installs tritium into .venv (first run only) and serves examples/model_repository on HTTP port 8000.
# Extra arguments go to tritium, e.g. ./scripts/serve_example.sh --http-port=9000
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec tritium --model-repository="$ROOT/examples/model_repository" "$@"
