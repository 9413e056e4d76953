#!/usr/bin/env bash
# Install everything callsgw's test suite needs, then run the whole suite.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh -k srtp -x      # extra arguments go to pytest
#
# - Debian packages (a C compiler, OpenSSL and Python headers, Chromium, tshark, PostgreSQL, Redis, nginx) are installed
#   with apt-get when missing (as root, or through sudo).
# - Python packages go into a virtual environment, .venv/ (CALLSGW_VENV
#   overrides the path), with callsgw installed editable so native/ is built.
# - Tests run in a private network namespace (unshare -n, only `lo` up) when
#   the kernel allows it, so that no test packet can leave the machine.
# - pytest's exit code 5 (no tests collected) is reported and treated as success.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------
debs=()
command -v gcc >/dev/null 2>&1 || debs+=(gcc)
dpkg -s libssl-dev >/dev/null 2>&1 || debs+=(libssl-dev)
python3 - <<'PY' || debs+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
command -v ip >/dev/null 2>&1 || debs+=(iproute2)
# nftables: tests kill a media path inside the test namespace (tests/media/test_ice_restart.py)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || debs+=(nftables)
# a real browser for the browser tests (GUIDE section 3)
[ -x /usr/bin/chromium ] || debs+=(chromium)
# tshark: the independent reading of RTP captures that loadtest analyze is checked against
command -v tshark >/dev/null 2>&1 || debs+=(tshark)
# PostgreSQL: the security-record tests run against it as well as SQLite
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || debs+=(postgresql)
# redis-server: the cluster tests (tests/cluster) run a real Redis on loopback
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || debs+=(redis-server)
# nginx: the TLS-terminating proxy in front of a cluster (tests/cluster/test_nginx.py, deploy/nginx/)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || debs+=(nginx)
# coturn: the TURN tests run a real turnserver with use-auth-secret (tests/connectivity/test_turn.py)
command -v turnserver >/dev/null 2>&1 || [ -x /usr/bin/turnserver ] || debs+=(coturn)
# GStreamer's webrtcbin, driven from Debian's python3 (tests/whip: WHIP/WHEP with a second WebRTC stack)
/usr/bin/python3 -c "import gi; gi.require_version('GstWebRTC', '1.0'); gi.require_version('Nice', '0.1')" \
  >/dev/null 2>&1 && gst-inspect-1.0 vp8enc >/dev/null 2>&1 && gst-inspect-1.0 nicesrc >/dev/null 2>&1 \
  || debs+=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice
            gstreamer1.0-tools python3-gi python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1)
if [ ${#debs[@]} -gt 0 ]; then
  log "installing Debian packages: ${debs[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q
  $sudo_cmd apt-get install -y -q --no-install-recommends "${debs[@]}"
fi

# --- Python packages ---------------------------------------------------------
venv="${CALLSGW_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
log "installing callsgw (editable, builds native/) with its test dependencies"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -e '.[test]'

# --- Run ---------------------------------------------------------------------
runner=("$py" -m pytest "$@")
if unshare -n true >/dev/null 2>&1; then
  log "running tests in a private network namespace (only lo is up)"
  set +e
  unshare -n -- sh -c 'ip link set lo up && exec "$@"' sh "${runner[@]}"
  rc=$?
else
  log "unshare -n is not permitted here: running tests in the host network namespace"
  set +e
  "${runner[@]}"
  rc=$?
fi
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): nothing ran, treated as success"
  rc=0
fi
exit "$rc"
