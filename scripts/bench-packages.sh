#!/usr/bin/env bash
# The load generators `make bench` compares with: wrk (HTTP) from Debian's packages, and
# ldclt (LDAP) unpacked from Debian's 389-ds-base package into var/bench/389 (only the
# client is used; installing the whole directory server would start services).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing wrk (apt-get install wrk)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; }
fi
if ! command -v ldclt >/dev/null && [ ! -x var/bench/389/usr/bin/ldclt ]; then
  mkdir -p var/bench/389
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download 389-ds-base >/dev/null 2>&1)
  dpkg-deb -x "$tmp"/389-ds-base_*.deb var/bench/389
  rm -rf "$tmp"
fi
