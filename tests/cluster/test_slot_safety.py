"""Every Lua script of the service, run on the Redis Cluster through the code that runs it in production.

A script whose keys fall in two hash slots is refused by the cluster client (`all keys must map to the same key
slot`) or by Redis (`CROSSSLOT`), so each step below would fail. The list of scripts is read from the source (every
`register_script` call), and the test checks that each one was loaded on the cluster by the steps, so a script
added without a step here fails it too. Besides scripts the service sends no multi-key command: its pipelines are
not transactions (the cluster client splits them by node), which the source check below also holds.

After the whole cluster suite, the topology fixture asks every node how many commands it refused with CROSSSLOT.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from backend import keys
from backend.auth import Principal
from backend.chat.compaction import Compactor
from backend.chat.llm import LLMClient, RetryPolicy
from backend.chat.tokens import TokenCounter
from backend.errors import RateLimited
from backend.redis_client import open_redis
from backend.store.cache import SessionCache
from backend.store.models import NewMessage
from backend.store.pending import PendingAppend, PendingWrites
from backend.store.postgres import ChatRepository, create_pool
from backend.store.sessions import SessionStore
from backend.streams.active import ActiveTurns, Claim
from backend.streams.agui_runs import AguiRun, AguiRuns
from backend.streams.completions import Completion, publish_delivery
from backend.streams.operation_locks import OperationLocks
from backend.streams.turns import TurnRegistry, entry_id
from backend.streams.user_limits import UserLimits
from tests.cluster.topology import Topology

BACKEND = Path(__file__).resolve().parents[2] / "backend"


def registered_scripts() -> dict[str, str]:
    """`module.CONSTANT` → the Lua source, for every `register_script(CONSTANT)` call in the package."""
    found = {}
    for path in BACKEND.rglob("*.py"):
        module = ".".join(path.relative_to(BACKEND.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "register_script":
                [argument] = node.args
                assert isinstance(argument, ast.Name), f"{module}: register_script of an expression"
                found[f"{module}.{argument.id}"] = getattr(importlib.import_module(module), argument.id)
    return found


_CLIENTS = ("self._redis", "redis", "pipe", "self.redis", "runtime.redis")
"""How the package names a Redis client or pipeline."""


def test_the_service_sends_no_transaction_and_no_multi_key_command_outside_scripts() -> None:
    offending, inspected = [], 0
    for path in BACKEND.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None)
            if not isinstance(node.func, ast.Attribute) or ast.unparse(node.func.value) not in _CLIENTS:
                continue
            inspected += 1
            transaction = any(
                k.arg == "transaction" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords
            )
            if name == "pipeline" and (transaction or not node.keywords):
                offending.append(f"{path.name}:{node.lineno} pipeline() that is a transaction")
            multi_key = name in ("mget", "mset", "watch", "multi", "rename", "sinterstore", "zunionstore", "lmove")
            if multi_key or (name in ("delete", "unlink", "exists") and len(node.args) > 1):
                offending.append(f"{path.name}:{node.lineno} {name}")
    assert inspected > 50  # the package's Redis calls were seen
    assert offending == []


@pytest.fixture
async def cluster_redis(cluster: Topology) -> AsyncIterator[Redis]:
    for port in cluster.masters():  # scripts unknown everywhere: what runs below loads them again
        with cluster.redis_node(port) as node:
            node.script_flush()
    client = open_redis(cluster.redis_url, cluster=True)
    yield client
    await client.aclose()


async def test_every_lua_script_runs_on_the_cluster(cluster: Topology, cluster_redis: Redis) -> None:
    scripts = registered_scripts()
    assert len(scripts) >= 15, sorted(scripts)
    r = cluster_redis
    pool = await create_pool(cluster.database_url, min_size=1, max_size=4, statement_cache_size=0)
    pending = PendingWrites(r)
    store = SessionStore(ChatRepository(pool), SessionCache(r, ttl_seconds=60), pending)
    llm = LLMClient(
        base_url=f"http://127.0.0.1:{cluster.ports.mock}/v1",
        api_key="test",
        model="mock-model",
        retry=RetryPolicy(0, 0.1, 0.1),
        idle_timeout=5,
    )
    try:
        user = f"slots-{uuid.uuid4().hex[:8]}"
        # Session cache (created, appended, invalidated, filled again) and pending writes (kept, then stored under
        # their lock).
        session = await store.create(user, title="slots")
        await store.append(session.id, [NewMessage(role="user", content="one", client_message_id="c1")])
        await store.rename(session.id, user, "renamed")
        await store.replace_tool_result(session.id, "no-such-call", "{}", token_count=1)
        assert [m.content for m in await store.messages(session.id)] == ["one"]
        assert (await store.get(session.id, user)).title == "renamed"
        await pending.keep(session.id, PendingAppend((NewMessage(role="assistant", content="two"),)))
        await store.store_pending(session.id)
        assert [m.content for m in await store.messages(session.id)] == ["one", "two"]
        assert not await pending.any(session.id)
        await r.delete(keys.session_messages(session.id))  # the cached list expired: the next read fills it
        assert [m.content for m in await store.messages(session.id)] == ["one", "two"]
        assert await r.exists(keys.session_messages(session.id))

        # A turn: its stream, cancel flag and lease; finished once.
        registry = TurnRegistry(r, ttl_seconds=60, lease_seconds=5)
        turn = uuid.uuid4().hex
        await registry.create(turn, str(session.id), user)
        assert await registry.publish(turn, [b'{"type":"start"}'], ids=[entry_id(turn, 1)]) == "written"
        await registry.request_cancel(turn)
        assert await registry.publish(turn, [b'{"type":"abort"}'], ids=[entry_id(turn, 2)]) == "cancel_requested"
        await registry.renew([turn])
        assert await registry.finish(turn, "cancelled", [b'{"type":"finish"}'])
        assert not await registry.finish(turn, "failed")
        followed = [c async for _, c in registry.follow(turn)]
        assert followed == [b'{"type":"start"}', b'{"type":"abort"}', b'{"type":"finish"}']

        # The session's pointer to its turn, an operation's lock, the compaction lock.
        active = ActiveTurns(r, lease_seconds=5)
        assert await active.claim(session.id, turn) and await active.release(session.id, turn)
        # A turn's batches: its stream opened with the user message's cache update (its history read there), its
        # end sent with the pointer's release (one group per slot, in order).
        batched = uuid.uuid4().hex
        assert await active.claim(session.id, batched) == Claim(pending_writes=False)
        stored = await store.append(
            session.id,
            [NewMessage(role="user", content="three")],
            no_pending=True,
            read_after=0,
            along=registry.opening(batched, str(session.id), user),
        )
        assert stored.sent_along and stored.history and stored.history[-1]["content"] == "three"
        assert await registry.finish(batched, "completed", along=[active.queue_release(session.id, batched)])
        assert await active.current(session.id) is None and await registry.lease_deadline(batched) is None
        locks = OperationLocks(r)
        lock_key = f"copilot:{{{session.id}}}:op-lock:tool:digest"
        assert await locks.lock(lock_key, "op-1", ttl_seconds=5)
        assert await locks.renew_lock(lock_key, "op-1", ttl_seconds=5)
        await locks.release_lock(lock_key, "op-1")
        assert await locks.holder(lock_key) is None
        compactor = Compactor(
            llm=llm, store=store, redis=r, counter=TokenCounter("mock-model"), model=None,
            max_input_tokens=1000, max_summary_tokens=100, timeout_seconds=5,
        )  # fmt: skip
        await compactor.compact(session.id, keep_tokens=10_000)  # nothing to fold: takes and releases the lock
        assert not await r.exists(f"copilot:{{{session.id}}}:compaction")

        # An AG-UI run bound to its turn, for its user only.
        runs = AguiRuns(r)
        run = AguiRun(run_id=uuid.uuid4().hex, turn_id=turn, thread_id=str(session.id), user_id=user)
        assert await runs.bind(run)
        assert not await runs.bind(AguiRun(run.run_id, turn, run.thread_id, "someone-else"))
        assert await runs.get(run.run_id) == run

        # A webhook delivery recorded with its completion in one script, once.
        completion = Completion("op-1", True, {"ok": True})
        delivery = uuid.uuid4().hex
        assert await publish_delivery(r, completion, delivery_id=delivery, remember_seconds=60, max_len=100)
        assert await publish_delivery(r, completion, delivery_id=delivery, remember_seconds=60, max_len=100) is None

        # Per-user limits (they fail open on Redis errors, so what they refuse shows the scripts ran).
        limits = UserLimits(
            r, requests_per_minute=1, concurrent_turns=1, tokens_per_day=1000, limit_admins=True,
            lease_seconds=5, max_turn_seconds=60,
        )  # fmt: skip
        await limits.check_request(Principal(user))
        with pytest.raises(RateLimited):
            await limits.check_request(Principal(user))
        await limits.admit(user, "t1", enforce=True)
        with pytest.raises(RateLimited):
            await limits.admit(user, "t2", enforce=True)
        await limits.release(user, "t1")
        await limits.close()
    finally:
        await store.close()
        await llm.close()
        await pool.close()

    shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in scripts.items()}
    loaded = _loaded_anywhere(cluster, shas)
    assert [name for name, ok in loaded.items() if not ok] == []


def _loaded_anywhere(cluster: Topology, shas: dict[str, str]) -> dict[str, bool]:
    seen = dict.fromkeys(shas, False)
    for port in cluster.masters():
        try:
            with cluster.redis_node(port) as node:
                exists = node.script_exists(*shas.values())
        except redis.RedisError:
            continue
        for name, there in zip(shas, exists, strict=True):
            seen[name] = seen[name] or bool(there)
    return seen
