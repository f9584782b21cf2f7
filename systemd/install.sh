#!/usr/bin/env bash
# Install (or with --uninstall remove) the gateway as a systemd service:
#   /opt/carbon-gateway/releases/<version>/   a virtual environment holding this release
#   /opt/carbon-gateway/current               -> releases/<version> (the unit runs current/bin/python)
#   /etc/carbon-gateway/gateway.toml          the production template (kept if present), owned by the service
#   /etc/carbon-gateway/profiles/             site meter profiles (win over the shipped ones)
#   /etc/carbon-gateway/release-keys/         release public keys trusted by `carbon-gateway upgrade`
#   /var/lib/carbon-gateway                   the state directory (store, keys, certificate, backups)
#   /etc/systemd/system/carbon-gateway.service, a dedicated user in the dialout group.
#
# Where the program comes from:
#   --bundle FILE      a signed release bundle (scripts/release), checked against --release-key or the keys
#                      already trusted; installs with no network. The bundle carries this script:
#                      tar -xf FILE systemd && sudo systemd/install.sh --bundle FILE --release-key KEY.pub
#   --wheels DIR       a directory of wheels (the project's and its dependencies'); no network
#   (neither)          builds the wheel from this checkout; pip fetches the dependencies from the index
# Options:
#   --root DIR         install everything under DIR (paths in the unit too) and touch nothing of the machine:
#                      no user created, no systemctl; for tests and for trying an install
#   --prefix DIR       the program's directory (default /opt/carbon-gateway)
#   --user NAME        the service user (default carbon-gateway; with --root it must exist already)
#   --python PATH      the interpreter for the virtual environment (default /usr/bin/python3)
#   --release-key PUB  trust this Ed25519 release public key (copied to release-keys/)
#   --no-start         do not enable and start the service
#   --dry-run          print the steps instead of running them
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNIT_TEMPLATE="$SRC/systemd/carbon-gateway.service"
ROOT=""; PREFIX=/opt/carbon-gateway; SERVICE_USER=carbon-gateway; PY=/usr/bin/python3
BUNDLE=""; WHEELS=""; RELEASE_KEYS=(); START=yes; DRY=""; MODE=install
[ -x "$PY" ] || PY="$(command -v python3)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=echo ;;
    --uninstall) MODE=uninstall ;;
    --no-start) START=no ;;
    --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
    --user) SERVICE_USER="${2:?--user needs a name}"; shift ;;
    --python) PY="${2:?--python needs a path}"; shift ;;
    --bundle) BUNDLE="$(realpath "${2:?--bundle needs a file}")"; shift ;;
    --wheels) WHEELS="$(realpath "${2:?--wheels needs a directory}")"; shift ;;
    --release-key) RELEASE_KEYS+=("$(realpath "${2:?--release-key needs a file}")"); shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
  esac
  shift
done
run() { if [ -n "$DRY" ]; then echo "+ $*"; else "$@"; fi; }
die() { echo "install.sh: $*" >&2; exit 1; }

OPT="$ROOT$PREFIX"; ETC="$ROOT/etc/carbon-gateway"; STATE="$ROOT/var/lib/carbon-gateway"
UNIT="$ROOT/etc/systemd/system/carbon-gateway.service"

if [ "$MODE" = uninstall ]; then
  [ -z "$ROOT" ] && run systemctl disable --now carbon-gateway.service carbon-gateway-upgrade.path || true
  run rm -f "$UNIT" "${UNIT%.service}-upgrade.path" "${UNIT%.service}-upgrade.service"
  [ -z "$ROOT" ] && run systemctl daemon-reload
  run rm -rf "$OPT"
  echo "kept $ETC and $STATE (config, data, keys); remove them by hand if wanted"
  exit 0
fi

# --- the service user: created on a real install only -------------------------------------------------------
OWNER=""
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
  [ -z "$ROOT" ] && run usermod -aG dialout "$SERVICE_USER"
  OWNER="$SERVICE_USER:$(id -gn "$SERVICE_USER")"
elif [ -z "$ROOT" ]; then
  # `id` only looks, so it runs in --dry-run too (run would always succeed and hide the useradd step).
  run useradd --system --home-dir /var/lib/carbon-gateway --shell /usr/sbin/nologin --groups dialout "$SERVICE_USER"
  OWNER="$SERVICE_USER:$SERVICE_USER"
else
  echo "note: user $SERVICE_USER does not exist; with --root none is created and files keep their owner" >&2
fi
[ "$(id -u)" -eq 0 ] || OWNER=""    # only root can give files away

# --- the wheels to install ----------------------------------------------------------------------------------
SCRATCH="$(mktemp -d)"; trap 'rm -rf "$SCRATCH"' EXIT
INDEX=(--no-index)
if [ -n "$BUNDLE" ]; then
  # Verified with openssl and sha256sum, so nothing of the bundle runs before it is trusted.
  tar -xf "$BUNDLE" -C "$SCRATCH" MANIFEST.json MANIFEST.json.sig 2>/dev/null \
    || die "$BUNDLE: refused, not a signed release bundle (no MANIFEST.json and MANIFEST.json.sig)"
  KEYS=("${RELEASE_KEYS[@]}")
  [ -d "$ETC/release-keys" ] && for k in "$ETC"/release-keys/*.pub; do [ -f "$k" ] && KEYS+=("$k"); done
  [ "${#KEYS[@]}" -gt 0 ] || die "no release key to check $BUNDLE against: pass --release-key FILE.pub"
  TRUSTED=""
  for k in "${KEYS[@]}"; do
    if openssl pkeyutl -verify -pubin -inkey "$k" -rawin -in "$SCRATCH/MANIFEST.json" \
         -sigfile "$SCRATCH/MANIFEST.json.sig" >/dev/null 2>&1; then TRUSTED="$k"; break; fi
  done
  [ -n "$TRUSTED" ] || die "$BUNDLE: refused, the signature is by no trusted release key"
  tar -xf "$BUNDLE" -C "$SCRATCH"
  "$PY" - "$SCRATCH" <<'CHECK' || die "$BUNDLE: refused, tampered (a file differs from the signed manifest)"
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
listed = json.loads((root / "MANIFEST.json").read_text())["files"]
present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {"MANIFEST.json", "MANIFEST.json.sig"}
bad = sorted(present ^ set(listed)) + sorted(n for n in listed if n in present
                                               and hashlib.sha256((root / n).read_bytes()).hexdigest() != listed[n])
if bad:
    print("differs from the manifest:", bad[0], file=sys.stderr)
    sys.exit(1)
CHECK
  WHEELS="$SCRATCH/wheels"
  # the release's own unit (the running script may come from an older checkout)
  [ -f "$SCRATCH/systemd/carbon-gateway.service" ] && UNIT_TEMPLATE="$SCRATCH/systemd/carbon-gateway.service"
  echo "bundle signature checked with $TRUSTED"
elif [ -z "$WHEELS" ]; then
  echo "building the wheel from $SRC (dependencies come from the package index)"
  run "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$SCRATCH" "$SRC"
  WHEELS="$SCRATCH"; INDEX=()
fi
WHEEL="$(ls "$WHEELS"/carbon_edge_gateway-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$WHEEL" ]; then
  [ -n "$DRY" ] && WHEEL="carbon_edge_gateway-<version>-py3-none-any.whl" || die "no carbon_edge_gateway wheel in $WHEELS"
fi
VERSION="$(basename "$WHEEL" | cut -d- -f2)"
RELEASE="$OPT/releases/$VERSION"

# --- the release, the link, the config ----------------------------------------------------------------------
run mkdir -p "$OPT/releases" "$ETC/profiles" "$ETC/release-keys" "$STATE" "$(dirname "$UNIT")"
run rm -rf "$RELEASE"      # a reinstall of the same version starts clean
run "$PY" -m venv "$RELEASE"
run "$RELEASE/bin/python" -m pip install --quiet --disable-pip-version-check "${INDEX[@]}" \
    --find-links "$WHEELS" "$WHEEL"
run ln -sfn "releases/$VERSION" "$OPT/current"
for k in "${RELEASE_KEYS[@]}"; do run install -m 0644 "$k" "$ETC/release-keys/$(basename "$k")"; done
if [ ! -f "$ETC/gateway.toml" ]; then
  # The production template from the installed package: no simulated bus, no demo key, HTTPS web UI.
  TEMPLATE="(the release's gateway/shipped/production.toml)"
  [ -n "$DRY" ] || TEMPLATE="$("$RELEASE/bin/python" -c 'from gateway.paths import CONFIG_DIR; print(CONFIG_DIR / "production.toml")')"
  run install -m 0640 "$TEMPLATE" "$ETC/gateway.toml"
fi
run chmod 0750 "$ETC"
run chmod 0700 "$STATE"
if [ -n "$OWNER" ]; then
  run chown "$OWNER" "$ETC" "$ETC/gateway.toml" "$STATE"
fi
GROUP="${OWNER#*:}"
# The unit names the installed paths. Under --root the state directory is not systemd's StateDirectory=
# (always /var/lib/<name>), so it is listed in ReadWritePaths= as well.
ROOTED=()
[ -n "$ROOT" ] && ROOTED=(-e 's#^ReadWritePaths=/etc/carbon-gateway$#ReadWritePaths=/etc/carbon-gateway /var/lib/carbon-gateway#')
run sed "${ROOTED[@]}" -e "s#/opt/carbon-gateway#$OPT#g" -e "s#/etc/carbon-gateway#$ETC#g" \
  -e "s#/var/lib/carbon-gateway#$STATE#g" -e "s#^User=.*#User=$SERVICE_USER#" \
  -e "s#^Group=.*#Group=${GROUP:-$SERVICE_USER}#" -e "w $UNIT" -n "$UNIT_TEMPLATE"
run chmod 0644 "$UNIT"
# The upgrade requested in the web UI: a path unit starts the root service that runs it.
for extra in carbon-gateway-upgrade.path carbon-gateway-upgrade.service; do
  run sed -e "s#/opt/carbon-gateway#$OPT#g" -e "s#/etc/carbon-gateway#$ETC#g" -e "s#/var/lib/carbon-gateway#$STATE#g" \
    -e "w $(dirname "$UNIT")/$extra" -n "$(dirname "$UNIT_TEMPLATE")/$extra"
done
if [ -z "$ROOT" ]; then
  run systemctl daemon-reload
  [ "$START" = yes ] && run systemctl enable --now carbon-gateway.service carbon-gateway-upgrade.path
  echo "installed $VERSION; first boot: open https://$(hostname -f 2>/dev/null || hostname):8443/ and set the admin password"
else
  echo "installed $VERSION under $ROOT (unit: $UNIT); nothing on this machine was changed outside it"
fi
