#!/usr/bin/env bash
# Install the checkers of scripts/deploy-check.sh and scripts/api-check.sh, when missing:
# promtool (Debian's prometheus), systemd-analyze (systemd), and, in a virtualenv kept outside
# the clone ($MIRRORKV_TOOLS_VENV, default ~/.cache/mirrorkv-tools-venv), Schemathesis and
# kubernetes-validate at pinned versions. Prints nothing when everything is there.
set -euo pipefail
venv=${MIRRORKV_TOOLS_VENV:-$HOME/.cache/mirrorkv-tools-venv}
schemathesis_version=4.32.5
kubernetes_validate_version=1.37.0

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# systemd-analyze verify looks up the unit's Documentation=man: page.
command -v man >/dev/null 2>&1 || missing+=(man-db)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "tools.sh: run: sudo apt-get install -y ${missing[*]}" >&2; exit 1; }
  echo "tools.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

want="schemathesis==$schemathesis_version kubernetes-validate==$kubernetes_validate_version"
if ! "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qx "schemathesis==$schemathesis_version" ||
   ! "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qx "kubernetes-validate==$kubernetes_validate_version"; then
  echo "tools.sh: installing $want into $venv" >&2
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # two requirements, split on purpose
  "$venv/bin/python" -m pip install -q $want
fi
