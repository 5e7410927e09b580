"""Sending the commands of several modules (and several cluster slots) in one round trip, in order.

A turn's steps each touch keys of one slot: the session's (`{<session id>}`), the turn's (`{<turn id>}`), the
global lease set. One script cannot span them on a Redis Cluster, but one pipeline can carry them: `send` takes
groups of commands, each group on one slot, and sends them as one non-transactional pipeline on a single server
(one round trip, run in the order queued). On a cluster a pipeline reaches its nodes concurrently, which would
lose that order, so there each group is sent on its own, one after the other.

Scripts are called by sha (`call`) without the `SCRIPT EXISTS` round trip redis-py's pipeline would add. A group
that called a script Redis had lost (a restart) is sent once more after loading its scripts, so a group that calls
one must be safe to send twice; the others are not sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Group:
    """Commands whose keys share one cluster slot."""

    queue: Callable[[Pipeline], object]
    """Queues the commands on a pipeline."""
    scripts: tuple[AsyncScript, ...] = ()
    """The scripts it calls (loaded when Redis lost them)."""


def call(pipe: Pipeline, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue a call of `script` by its sha (`send` loads it if Redis lost it)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def send(redis: Redis, *groups: Group, raise_on_error: bool = True, ordered: bool = True) -> list[list[Any]]:
    """Send `groups` in order, in one round trip on a single server; the replies of each group. Raises the first
    error reply once every command has run, as a non-transactional pipeline does (`raise_on_error=False`: errors
    are left among the replies). `ordered=False`: the groups do not depend on each other's order, and a cluster
    sends them in one pipeline too (its nodes concurrently, one round trip each)."""
    if isinstance(redis, RedisCluster) and ordered:
        replies = [await _send_one(redis, group) for group in groups]
    else:
        replies = await _send(redis, groups)
        # A server loses all its scripts at once (a restart): the groups that called one are sent again, in order.
        missing = [i for i, group in enumerate(replies) if _lacked_script(group)]
        if missing:
            await _load(redis, [groups[i] for i in missing])
            for i, group_replies in zip(missing, await _send(redis, [groups[i] for i in missing]), strict=True):
                replies[i] = group_replies
    if raise_on_error:
        raise_first_error(replies)
    return replies


def raise_first_error(replies: list[list[Any]]) -> None:
    for group in replies:
        for reply in group:
            if isinstance(reply, Exception):
                raise reply


async def _send_one(redis: Redis, group: Group) -> list[Any]:
    """One group on its own (on a cluster: one node), sent again at once if it called a script its node lacked."""
    for attempt in (1, 2):
        async with redis.pipeline(transaction=False) as pipe:
            group.queue(pipe)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if attempt == 2 or not _lacked_script(replies):
            break
        await _load(redis, [group])
    return replies


async def _send(redis: Redis, groups: Sequence[Group]) -> list[list[Any]]:
    sizes = []
    async with redis.pipeline(transaction=False) as pipe:
        for group in groups:
            before = len(pipe)
            group.queue(pipe)
            sizes.append(len(pipe) - before)
        flat = await pipe.execute(raise_on_error=False)
    out, start = [], 0
    for size in sizes:
        out.append(flat[start : start + size])
        start += size
    return out


def _lacked_script(replies: list[Any]) -> bool:
    return any(isinstance(r, NoScriptError) for r in replies)


async def _load(redis: Redis, groups: Sequence[Group]) -> None:
    for script in {id(s): s for g in groups for s in g.scripts}.values():
        script.sha = await redis.script_load(script.script)
