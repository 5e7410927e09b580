"""`python -m tests.cluster.control up|down|status` (what `scripts/cluster.sh` runs): the topology of
`topology.py` under `.cluster/` on fixed ports, left running between commands.

Environment: `CLUSTER_BASE_PORT` (7100: the balancer; the other parts above it), `CLUSTER_PODS` (3),
`CLUSTER_DATABASE` (`copilot_cluster`, created on the PostgreSQL at `CLUSTER_POSTGRES`, default 127.0.0.1:5432).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.cluster.topology import Ports, Topology, missing_commands

ROOT = Path(__file__).resolve().parents[2] / ".cluster"


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command not in ("up", "down", "status"):
        print("usage: cluster.sh up|down|status", file=sys.stderr)
        return 2
    topology = Topology.load(ROOT)
    if command == "status":
        if topology is None:
            print("not started (scripts/cluster.sh up)")
            return 1
        print(topology.describe())
        return 0
    if command == "down":
        if topology is not None:
            topology.down()
        print("stopped")
        return 0
    missing = missing_commands()
    if missing:
        print(f"missing commands: {', '.join(missing)} (apt-get install {' '.join(set(missing.values()))})")
        return 1
    if topology is None:
        base = int(os.environ.get("CLUSTER_BASE_PORT", "7100"))
        pods = int(os.environ.get("CLUSTER_PODS", "3"))
        topology = Topology(
            ROOT,
            Ports.fixed(base, pods),
            os.environ.get("CLUSTER_DATABASE", "copilot_cluster"),
            os.environ.get("CLUSTER_POSTGRES", "127.0.0.1:5432"),
        )
    try:
        topology.up()
    finally:
        topology.save()  # whatever started is remembered, so `down` stops it even after a failed `up`
    print(topology.describe())
    print(f"\ntry: curl -s {topology.url}/health/ready   (tokens: HS256 with jwt_secret in {ROOT}/state.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
