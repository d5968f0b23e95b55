#!/usr/bin/env bash
# Lint (ruff: pyflakes, pycodestyle, import order, pyupgrade, bugbear, complexity) and type-check (mypy) src/.
TRITIUM_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ruff check src "$@"
mypy
