# Sourced by the scripts here: makes (once) and activates the project's virtual environment
# and installs the project into it with the extras named in $TRITIUM_EXTRAS, at the exact versions
# of constraints.txt (what CI uses; pyproject.toml itself declares ranges).  $TRITIUM_VENV and
# $TRITIUM_CONSTRAINTS name another environment and its versions (scripts/test_ray.sh: .venv-ray,
# constraints-ray.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRITIUM_VENV:-$ROOT/.venv}"
CONSTRAINTS="${TRITIUM_CONSTRAINTS:-$ROOT/constraints.txt}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Reinstall only when the requirements (pyproject.toml, the constraints) or the extras changed since the
# last install: the stamp holds a digest of them.
STAMP="$VENV/.tritium-installed-${TRITIUM_EXTRAS:-base}"
DIGEST="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | "$VENV/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$DIGEST" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" -e "$ROOT${TRITIUM_EXTRAS:+[$TRITIUM_EXTRAS]}"
    echo "$DIGEST" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
