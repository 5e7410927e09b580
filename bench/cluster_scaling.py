"""Scaling on the cluster topology (tests/cluster/topology.py): tokens/s and CPU per token at 1, 2 and 3 pods behind
HAProxy on a Redis Cluster with PgBouncer, at one fixed offered load, next to one pod on a single Redis and
PostgreSQL without PgBouncer (the setup of the main benchmark) under the same load.

`python -m bench.cluster_scaling [--users 60] [--per-pod-users 20] [--rounds 3] [--tokens 100] [--delay-ms 50]`
prints a table and writes `.bench/cluster-scaling.json`. Every user has a session of its own and streams `rounds`
replies back to back through the balancer. The rows "fixed load" offer the same load (`users` x tokens per second of
one stream) at every pod count; the rows "load per pod" offer `per-pod-users` per pod, so each pod serves as many
streams as one of three pods does at the fixed load: the two together tell what more pods cost from what fewer
streams per pod cost.
CPU is counted per process tree: the pods, and the topology's other parts (Redis nodes, PgBouncer, HAProxy)
apart; the mock model and the load generator are not charged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psutil

from bench.loadgen import LoadSpec, run_load
from bench.measure import pct
from bench.procs import cpu_delta, cpu_snapshot, free_port, pid_tree
from tests.cluster.topology import Ports, Topology

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    setup: str
    pods: int
    users: int
    streams: int
    errors: int
    tokens: int
    tokens_per_second: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    pods_cpu_ms_per_1k_tokens: float
    infra_cpu_ms_per_1k_tokens: dict[str, float]
    """Per part of the topology: Redis (all nodes), PgBouncer, HAProxy."""
    pods_waits_per_1k_tokens: float
    """The pods' voluntary context switches: how often an event loop went to sleep with nothing to do (fewer
    streams per loop, more wakeups per token)."""
    pods_preempted_per_1k_tokens: float
    """The pods' involuntary context switches: how often the kernel took the core away for another process."""


async def _sessions(url: str, token: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:

        async def one() -> str:
            r = await client.post("/api/chat/sessions", json={"title": "bench"})
            r.raise_for_status()
            return str(r.json()["id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


def _measure(
    topology: Topology,
    setup: str,
    pods: int,
    port: int,
    infra: dict[str, list[int]],
    args: argparse.Namespace,
    user: str,
    users: int,
) -> Row:
    sessions = asyncio.run(_sessions(f"http://127.0.0.1:{port}", topology.token(user), users))
    body = orjson.dumps({"message": f"[[mock:text tokens={args.tokens} delay_ms={args.delay_ms:g}]]"})
    paths = tuple(f"/api/chat/sessions/{sid}/stream" for sid in sessions for _ in range(args.rounds))
    spec = LoadSpec(
        host="127.0.0.1",
        port=port,
        wire="ui",
        method="POST",
        headers=(("Authorization", f"Bearer {topology.token(user)}"),),
        body=body,
        paths=paths,
        users=tuple(range(users)),
        total_users=users,
        rounds=args.rounds,
        start_at=time.time() + 0.5,
        ramp_seconds=1.0,
        timeout_seconds=60,
        expected_tokens=args.tokens,
        pause_seconds=0.15,
    )
    pod_procs = [p for i in range(pods) for p in pid_tree(topology.pids[f"pod-{i + 1}"])]
    infra_procs = {part: [psutil.Process(pid) for pid in pids] for part, pids in infra.items()}
    before_pods = cpu_snapshot(pod_procs)
    before_switches = _switches(pod_procs)
    before_infra = {part: cpu_snapshot(procs) for part, procs in infra_procs.items()}
    with ProcessPoolExecutor(1) as pool:
        result = pool.submit(run_load, spec).result()
    pods_cpu = cpu_delta(before_pods, cpu_snapshot(pod_procs))
    waits, preempted = (after - before for after, before in zip(_switches(pod_procs), before_switches, strict=True))
    infra_cpu = {part: cpu_delta(before_infra[part], cpu_snapshot(procs)) for part, procs in infra_procs.items()}
    records = result.streams
    ok = [r for r in records if r.error is None]
    tokens = sum(r.tokens for r in records)
    wall = max(r.ended for r in records) - min(r.started for r in records)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    p50, p99 = pct(ttfts, 0.5), pct(ttfts, 0.99)
    return Row(
        setup=setup,
        pods=pods,
        users=users,
        streams=len(records),
        errors=len(records) - len(ok),
        tokens=tokens,
        tokens_per_second=round(tokens / wall, 1),
        ttft_p50_ms=None if p50 is None else round(p50 * 1000, 1),
        ttft_p99_ms=None if p99 is None else round(p99 * 1000, 1),
        pods_cpu_ms_per_1k_tokens=round(pods_cpu / tokens * 1e6, 1) if tokens else 0.0,
        infra_cpu_ms_per_1k_tokens={part: round(cpu / max(1, tokens) * 1e6, 1) for part, cpu in infra_cpu.items()},
        pods_waits_per_1k_tokens=round(waits / max(1, tokens) * 1000, 1),
        pods_preempted_per_1k_tokens=round(preempted / max(1, tokens) * 1000, 1),
    )


def _switches(procs: list[psutil.Process]) -> tuple[int, int]:
    """Voluntary and involuntary context switches of `procs`, summed."""
    counts = [p.num_ctx_switches() for p in procs]
    return sum(c.voluntary for c in counts), sum(c.involuntary for c in counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--per-pod-users", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="copilot-cluster-bench-"))
    topology = Topology(
        root,
        Ports.free(3),
        "copilot_bench_cluster",
        pod_env={"COPILOT_TURN_LEASE_SECONDS": "30", "COPILOT_DB_POOL_MAX_SIZE": "20"},
    )
    rows: list[Row] = []
    single: subprocess.Popen[bytes] | None = None
    try:
        topology.up()
        redis_pids = [topology.pids[f"redis-{p}"] for p in topology.ports.redis]
        infra = {"redis": redis_pids, "pgbouncer": [topology.pids["pgbouncer"]], "haproxy": [topology.pids["haproxy"]]}
        for pods in (3, 2, 1):
            while len([i for i in range(3) if topology.alive(f"pod-{i + 1}")]) > pods:
                topology.kill(f"pod-{pods + 1}")
            topology.wait_balanced()
            time.sleep(2.5)  # HAProxy's checks take the stopped pod out
            balancer = topology.ports.balancer
            rows.append(_measure(topology, "cluster, fixed load", pods, balancer, infra, args, f"bench-{pods}",
                                 args.users))  # fmt: skip
            print(rows[-1], flush=True)
            if args.per_pod_users * pods != args.users:
                rows.append(_measure(topology, "cluster, load per pod", pods, balancer, infra, args,
                                     f"bench-{pods}-per-pod", args.per_pod_users * pods))  # fmt: skip
                print(rows[-1], flush=True)
        # The baseline: one pod straight on one Redis and on PostgreSQL, no balancer.
        topology.kill("pod-1")
        redis_port = free_port()
        single = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        topology.start_pod(
            0,
            {
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "COPILOT_REDIS_CLUSTER": "false",
                "DATABASE_URL": topology.direct_database_url,
                "COPILOT_DB_STATEMENT_CACHE_SIZE": "100",
            },
        )
        alone = {"redis": [single.pid]}
        rows.append(_measure(topology, "single Redis, direct PostgreSQL", 1, topology.ports.pods[0], alone, args,
                             "bench-single", args.users))  # fmt: skip
        print(rows[-1], flush=True)
    finally:
        topology.down()
        if single is not None:
            single.kill()
            single.wait()
    offered = args.users * 1000 / args.delay_ms
    print(f"\noffered load: {args.users} streams x {1000 / args.delay_ms:g} tokens/s = {offered:g} tokens/s")
    print("| setup | pods | users | streams | errors | tokens/s | TTFT p50 / p99 (ms) | pods | Redis | PgBouncer "
          "| HAProxy | pods' waits | pods preempted |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spent = r.infra_cpu_ms_per_1k_tokens
        parts = " | ".join(str(spent.get(part, "-")) for part in ("redis", "pgbouncer", "haproxy"))
        print(f"| {r.setup} | {r.pods} | {r.users} | {r.streams} | {r.errors} | {r.tokens_per_second} | "
              f"{r.ttft_p50_ms} / {r.ttft_p99_ms} | {r.pods_cpu_ms_per_1k_tokens} | {parts} | "
              f"{r.pods_waits_per_1k_tokens} | {r.pods_preempted_per_1k_tokens} |")  # fmt: skip
    print("(pods to HAProxy: CPU ms per 1,000 tokens; the last two: context switches per 1,000 tokens)")
    out = ROOT / ".bench" / "cluster-scaling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "offered_tokens_per_s": offered, "rows": [vars(r) for r in rows]}))
    print(f"saved to {out}")


if __name__ == "__main__":
    main()
