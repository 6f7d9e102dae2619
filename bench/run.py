"""``make bench``: run every benchmark in turn and print their Markdown tables.

Each benchmark is its own module (``python -m bench.<name> --help`` for its options); this
runner calls them with their defaults (and the few sizes a target is set for), one after
another, so one machine's figures come
from one run. Demo stores are built once under ``var/bench/`` and reused.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS: list[list[str]] = [
    ["bench.demo_bench"],
    ["bench.directory_bench"],
    ["bench.audit_bench"],
    ["bench.audit_writers_bench"],
    ["bench.roles_bench"],
    ["bench.scim_bench"],
    ["bench.scim_floor_bench"],
    ["bench.ldap_bench"],
    ["bench.person_bind_bench"],
    ["bench.provisioning_bench"],
    ["bench.provisioning_bench", "--size", "XL", "--rate", "10"],  # #18's XL first sync, lag
    ["bench.admin_bench"],
]


def main() -> int:
    failed = []
    for args in BENCHMARKS:
        print(f"\n## {args[0]}\n", flush=True)
        result = subprocess.run([sys.executable, "-m", *args], check=False)
        if result.returncode != 0:
            failed.append(args[0])
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
