#!/usr/bin/env bash
# Install (or with --uninstall remove) the gateway as a systemd service:
# a virtual environment under /opt/carbon-gateway, a dedicated user in the dialout group,
# /etc/carbon-gateway/gateway.toml (kept if present), /var/lib/carbon-gateway, and the unit.
# --dry-run prints the steps instead of running them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/carbon-gateway
DRY=""; MODE=install
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=echo ;;
    --uninstall) MODE=uninstall ;;
    *) echo "usage: $0 [--dry-run] [--uninstall]" >&2; exit 2 ;;
  esac
done
run() { if [ -n "$DRY" ]; then echo "+ $*"; else "$@"; fi; }

if [ "$MODE" = uninstall ]; then
  run systemctl disable --now carbon-gateway.service || true
  run rm -f /etc/systemd/system/carbon-gateway.service
  run systemctl daemon-reload
  run rm -rf "$PREFIX"
  echo "kept /etc/carbon-gateway and /var/lib/carbon-gateway (config, data, keys); remove them by hand if wanted"
  exit 0
fi

# `id` only looks, so it runs in --dry-run too (run would always succeed and hide the useradd step).
if id -u carbon-gateway >/dev/null 2>&1; then
  run usermod -aG dialout carbon-gateway
else
  run useradd --system --home-dir /var/lib/carbon-gateway --shell /usr/sbin/nologin --groups dialout carbon-gateway
fi
run rm -rf "$PREFIX/app"      # an upgrade must not leave modules of the previous release behind
run mkdir -p "$PREFIX/app" /etc/carbon-gateway
run cp -r "$ROOT/gateway" "$ROOT/drivers" "$ROOT/local_store" "$ROOT/sync" "$ROOT/webui" "$ROOT/config" "$ROOT/pyproject.toml" "$ROOT/README.md" "$PREFIX/app/"
run python3 -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --quiet "$PREFIX/app"
# The same version number does not reinstall by itself; replace the app, keep the dependencies.
run "$PREFIX/venv/bin/pip" install --quiet --no-deps --force-reinstall "$PREFIX/app"
[ -f /etc/carbon-gateway/gateway.toml ] || run cp "$ROOT/config/gateway.toml" /etc/carbon-gateway/gateway.toml
run install -m 0644 "$ROOT/systemd/carbon-gateway.service" /etc/systemd/system/carbon-gateway.service
run systemctl daemon-reload
run systemctl enable --now carbon-gateway.service
echo "installed; edit /etc/carbon-gateway/gateway.toml and run: systemctl restart carbon-gateway"
