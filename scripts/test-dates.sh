#!/usr/bin/env bash
# Runs the whole test suite with the machine's date moved forward (libfaketime), once per
# offset: a test that passes today but not next month is a test that depends on the day it
# runs. Offsets are days (libfaketime has no month unit): about +1, +6, +13 and +25 months.
# Usage: scripts/test-dates.sh [DAYS ...]
#
# The libfaketime used is the one the PyPI package "libfaketime" builds (installed into the
# project's venv when missing), not Debian's 0.9.10: only the wall clock is moved
# (FAKETIME_DONT_FAKE_MONOTONIC), and Debian's build then rejects Python's sleeps (absolute
# monotonic deadlines) with EINVAL, while moving the monotonic clock too makes every lock
# or event wait with a timeout sleep for the whole offset.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
find_lib() {
  "$py" - <<'PY'
import pathlib, libfaketime
found = sorted(pathlib.Path(libfaketime.__file__).parent.rglob("libfaketime.so.1"))
print(found[0] if found else "")
PY
}
lib=$(find_lib 2>/dev/null || true)
if [ -z "$lib" ]; then
  "$py" -m pip install -q libfaketime >/dev/null 2>&1 || "$py" -m pip install libfaketime
  lib=$(find_lib)
fi
offsets=("$@")
[ ${#offsets[@]} -gt 0 ] || offsets=(31 183 396 761)
status=0
for days in "${offsets[@]}"; do
  export LD_PRELOAD="$lib" FAKETIME="+${days}d" FAKETIME_DONT_FAKE_MONOTONIC=1
  echo "== date moved by +${days} days: $(date -u +%F)"
  if ! .venv/bin/pytest -q -p no:cacheprovider; then
    echo "== FAILED with the date moved by +${days} days" >&2
    status=1
  fi
  unset LD_PRELOAD FAKETIME FAKETIME_DONT_FAKE_MONOTONIC
done
exit $status
