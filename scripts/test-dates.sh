#!/usr/bin/env bash
# Runs the whole test suite with the machine's date moved forward (libfaketime), once per
# offset: a test that passes today but not next month is a test that depends on the day it
# runs. Offsets are days (libfaketime has no month unit): about +1, +6, +13 and +25 months.
# Usage: scripts/test-dates.sh [DAYS ...]   (needs Debian's faketime package; as root it is
# installed when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n1 || true)
if [ -z "$lib" ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null; }
    lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 | head -n1)
  else
    echo "libfaketime is missing: apt-get install faketime" >&2
    exit 1
  fi
fi
offsets=("$@")
[ ${#offsets[@]} -gt 0 ] || offsets=(31 183 396 761)
status=0
for days in "${offsets[@]}"; do
  echo "== date moved by +${days} days: $(LD_PRELOAD=$lib FAKETIME="+${days}d" date -u +%F)"
  # Monotonic clocks move by the same offset (FAKETIME_DONT_FAKE_MONOTONIC would break
  # time.sleep: libfaketime 0.9.10 rejects its absolute monotonic deadlines with EINVAL).
  if ! LD_PRELOAD="$lib" FAKETIME="+${days}d" .venv/bin/pytest -q -p no:cacheprovider; then
    echo "== FAILED with the date moved by +${days} days" >&2
    status=1
  fi
done
exit $status
