"""Fixtures of the cluster suite: one topology (`topology.py`: Redis Cluster, PgBouncer, 3 pods, HAProxy) for the
whole run, started on free ports in a directory of its own, and a client that talks to it through the balancer.

Every test here is marked `cluster` (and `slow`); they skip where the topology cannot start (no `pgbouncer`,
`haproxy` or `redis-server`: `apt-get install pgbouncer haproxy redis-server`, or `scripts/cluster.sh up` installs
them). After the last test, every Redis node is asked how many commands it refused with CROSSSLOT: none may have.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from tests.cluster.client import ClusterClient
from tests.cluster.topology import Ports, Topology, missing_commands
from tests.conftest import ADMIN_DSN, TEST_DB

WEBHOOK_SECRET = "cluster-webhook-secret-for-the-tests"
TEST_POD_ENV = {
    # Sessions of more than 8 live messages are summarised after their turn: the compaction test needs a few turns,
    # not 400.
    "COPILOT_CONTEXT_MAX_LIVE_MESSAGES": "8",
    "COPILOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    missing = missing_commands()
    if missing:
        pytest.skip(f"the cluster topology needs {', '.join(missing)} (apt-get install {' '.join(missing.values())})")
    if shutil.which("psql") is None:
        pytest.skip("the cluster topology needs psql (apt-get install postgresql-client)")
    root = Path(tempfile.mkdtemp(prefix="copilot-cluster-"))
    host_port = ADMIN_DSN.split("@", 1)[1].rsplit("/", 1)[0]
    started = Topology(root, Ports.free(3), f"{TEST_DB}_cluster", host_port, pod_env=TEST_POD_ENV)
    asyncio.run(_drop_database(started.database))
    try:
        started.up()
        yield started
        assert _crossslot_errors(started) == {}, "commands refused with CROSSSLOT (node port -> count)"
    finally:
        started.down()
        asyncio.run(_drop_database(started.database))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(topology: Topology) -> Iterator[Topology]:
    """The topology with every part running, whatever an earlier test killed; the pods' log tails printed after (shown
    when the test fails)."""
    for port in topology.ports.redis:
        if not topology.alive(f"redis-{port}"):
            topology.start_redis(port)
    topology.wait_cluster_ok()
    for index in range(len(topology.ports.pods)):
        if not topology.alive(f"pod-{index + 1}"):
            topology.start_pod(index)
    topology.wait_balanced()
    yield topology
    for index in range(len(topology.ports.pods)):
        print(f"--- pod-{index + 1} ---\n{topology.log_path(f'pod-{index + 1}').read_text(errors='replace')[-3000:]}")


@pytest.fixture
async def client(cluster: Topology) -> AsyncIterator[ClusterClient]:
    async with ClusterClient(cluster, user=f"cluster-{uuid.uuid4().hex[:8]}") as c:
        yield c


@pytest.fixture
async def db(cluster: Topology) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the topology's database (not through PgBouncer), to count what was stored."""
    conn = await asyncpg.connect(cluster.direct_database_url)
    yield conn
    await conn.close()


def kill_pod(topology: Topology, index: int) -> float:
    """SIGKILL a pod (what an OOM kill or a lost node does); when it happened (monotonic)."""
    topology.kill(f"pod-{index + 1}", signal.SIGKILL)
    return time.monotonic()


def _crossslot_errors(topology: Topology) -> dict[int, int]:
    """Per node, the commands Redis refused with CROSSSLOT since it started (its `errorstats`)."""
    found = {}
    for port in topology.ports.redis:
        try:
            with topology.redis_node(port) as node:
                stats = node.info("errorstats")
        except (redis.RedisError, OSError):
            continue
        count = int(stats.get("errorstat_CROSSSLOT", {}).get("count", 0))
        if count:
            found[port] = count
    return found


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
