# Shared set-up for ./scripts/demo and ./scripts/test (sourced, not run).
# Installs only what is missing, so a second run is fast; works as root or with sudo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

_sudo() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ensure_debian_packages PACKAGE:CHECK ... — CHECK is a shell test that passes when the package is usable.
ensure_debian_packages() {
    local missing=()
    for spec in "$@"; do
        local package="${spec%%:*}" check="${spec#*:}"
        eval "$check" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo ">> installing Debian packages: ${missing[*]}"
        _sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ensure_venv [EXTRAS] — .venv with the project installed in editable mode.
ensure_venv() {
    local extras="${1:-}" spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x .venv/bin/python ]; then
        echo ">> creating .venv"
        python3 -m venv .venv
    fi
    local stamp=".venv/.installed-${extras:-base}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo ">> installing Python packages into .venv"
        .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
        touch "$stamp"
    fi
}

BASE_PACKAGES=(
    "python3:command -v python3"
    "python3-venv:python3 -c 'import venv, ensurepip'"
)
