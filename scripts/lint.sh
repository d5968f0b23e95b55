#!/usr/bin/env bash
# Lint (ruff: pyflakes, pycodestyle, import order, pyupgrade, bugbear, complexity; rules in pyproject.toml) the
# code, tests, benchmarks and scripts, and type-check src/ (mypy).  Both run; the exit status fails if either did.
# Extra arguments go to ruff, e.g. ./scripts/lint.sh --statistics
TRITIUM_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
status=0
ruff check src tests benchmarks scripts "$@" || status=1
mypy || status=1
exit $status
