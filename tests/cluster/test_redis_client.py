"""The Redis Cluster client the pods build (`backend.redis_client.open_redis(cluster=True)`)."""

from __future__ import annotations

import asyncio

from backend.redis_client import open_redis
from tests.cluster.topology import Topology


async def test_the_cluster_client_does_not_cap_connections_per_node(cluster: Topology) -> None:
    # Every follower of a turn holds a connection to its stream's node in a blocking XREAD. redis-py's cluster client
    # caps connections at 100 per node by default: the 101st follower on one node failed with MaxConnectionsError.
    client = open_redis(cluster.redis_url, cluster=True)
    try:
        stream = "copilot:turn:{one-node}:events"
        reads = await asyncio.gather(
            *(client.xread({stream: "$"}, block=1500) for _ in range(150)), return_exceptions=True
        )
    finally:
        await client.aclose()
    failures = [f"{type(r).__name__}: {r}" for r in reads if isinstance(r, BaseException)]
    assert failures == []
