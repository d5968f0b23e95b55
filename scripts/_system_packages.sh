# Sourced by scripts/test.sh: the programs some tests run as real servers (a Redis, a Prometheus, ...),
# installed from Debian when missing.  scripts/system-packages.txt lists them, one "<command> <package>" a line.
# Only as root with apt-get (CI, a fresh machine); elsewhere the tests that need a missing program say so.
_SYSPKG_LIST="$ROOT/scripts/system-packages.txt"
_missing=()
while read -r _cmd _pkg; do
    case "$_cmd" in ''|'#'*) continue ;; esac
    command -v "$_cmd" >/dev/null 2>&1 || _missing+=("$_pkg")
done < "$_SYSPKG_LIST"
if [ "${#_missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${_missing[*]} from Debian (once)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${_missing[@]}" >/dev/null
fi
