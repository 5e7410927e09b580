"""The scale-out topology on loopback: a Redis Cluster (3 masters, 3 replicas), PgBouncer in transaction pooling in
front of the shared PostgreSQL, the mock model, N `copilot serve` pods and HAProxy in front of them.

`scripts/cluster.sh up|down|status` runs it under `.cluster/` on fixed ports (its processes outlive the command;
`state.json` remembers their pids, so `down` stops exactly those); the cluster tests start one of their own on free
ports in a temporary directory. Every part is a process of its own, so a test can SIGKILL a Redis master or a pod.

Choices an operator would make too:
- Redis nodes time out after `NODE_TIMEOUT_MS` (2 s): a dead master's replica is promoted about that long after.
- PgBouncer runs in transaction mode; the pods turn asyncpg's statement cache off (`COPILOT_DB_STATEMENT_CACHE_SIZE=0`,
  PgBouncer 1.18 in Debian 12 has no `max_prepared_statements`).
- HAProxy balances each request round robin (no stickiness: any pod serves any request), never buffers (SSE goes
  out frame by frame), keeps idle streams and WebSockets open for an hour, checks `/health/ready` every second and
  sends a request whose connection was refused to another pod (`option redispatch`). It names the pod that answered
  in `X-Served-By`, which the tests read to show that a reconnect landed elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import jwt
import redis
from redis.crc import key_slot

NODE_TIMEOUT_MS = 2000
REQUIRED_COMMANDS = {"redis-server": "redis-server", "redis-cli": "redis-tools", "pgbouncer": "pgbouncer"}
REQUIRED_COMMANDS["haproxy"] = "haproxy"
"""Command → the Debian package that ships it."""

POD_ENV: Mapping[str, str] = {
    "COPILOT_MODEL": "mock-model",
    "OPENAI_API_KEY": "test",
    "COPILOT_REDIS_CLUSTER": "true",
    "COPILOT_DB_STATEMENT_CACHE_SIZE": "0",
    "COPILOT_DB_POOL_MIN_SIZE": "2",
    "COPILOT_DB_POOL_MAX_SIZE": "10",
    "COPILOT_TURN_LEASE_SECONDS": "3",
    "COPILOT_LLM_IDLE_TIMEOUT_SECONDS": "5",
    "COPILOT_SHUTDOWN_GRACE_SECONDS": "5",
    "COPILOT_LOG_LEVEL": "WARNING",
    # Tests and load runs send far more than a person would.
    "COPILOT_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
    "COPILOT_RATE_LIMIT_CONCURRENT_TURNS": "0",
    "COPILOT_RATE_LIMIT_TOKENS_PER_DAY": "0",
}
"""What every pod runs with besides the URLs and the JWT secret. A 3 s lease keeps a dead pod's turns short-lived
here (production default: 30 s)."""


@dataclass
class Ports:
    balancer: int
    redis: list[int]
    pgbouncer: int
    mock: int
    pods: list[int]

    @classmethod
    def fixed(cls, base: int, pods: int) -> Ports:
        """`scripts/cluster.sh`'s ports: the balancer on `base`, Redis on base+1..6, PgBouncer on base+10, the mock
        on base+20, pods from base+31."""
        return cls(base, [base + i for i in range(1, 7)], base + 10, base + 20, [base + 31 + i for i in range(pods)])

    @classmethod
    def free(cls, pods: int) -> Ports:
        return cls(_free_port(), _free_redis_ports(6), _free_port(), _free_port(), _free_ports(pods))


@dataclass
class Topology:
    root: Path
    ports: Ports
    database: str
    """The service's database on the shared PostgreSQL (reached through PgBouncer)."""
    postgres: str = "127.0.0.1:5432"
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    pod_env: dict[str, str] = field(default_factory=dict)
    """Overrides of `POD_ENV`."""
    pids: dict[str, int] = field(default_factory=dict)
    """Process name → pid of what runs (`redis-7101`, `pgbouncer`, `mock-llm`, `pod-1`, `haproxy`)."""

    def __post_init__(self) -> None:
        self.root = self.root.resolve()  # processes run with the root as their working directory

    # --- addresses ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The balancer: what clients talk to."""
        return f"http://127.0.0.1:{self.ports.balancer}"

    def pod_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports.pods[index]}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports.redis[0]}/0"

    @property
    def database_url(self) -> str:
        """The service's database through PgBouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.ports.pgbouncer}/{self.database}"

    @property
    def direct_database_url(self) -> str:
        return f"postgresql://postgres@{self.postgres}/{self.database}"

    def token(self, user_id: str) -> str:
        now = int(time.time())
        return jwt.encode({"sub": user_id, "iat": now, "exp": now + 86_400}, self.jwt_secret, algorithm="HS256")

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def up(self) -> None:
        """Start every part (in dependency order) and wait until the balancer has every pod ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # PgBouncer runs as `postgres` when we are root: it must reach its directory
        self._create_database()
        for port in self.ports.redis:
            self.start_redis(port)
        self._create_cluster()
        self._start_pgbouncer()
        self._start(
            "mock-llm",
            [sys.executable, "-m", "backend.cli", "mock-llm", "--port", str(self.ports.mock)],
            _base_env(),
            ready=f"http://127.0.0.1:{self.ports.mock}/v1/models",
        )
        self.start_pod(0)  # the first pod migrates the database; the others find it done
        for index in range(1, len(self.ports.pods)):
            self.start_pod(index)
        self._start_haproxy()
        self.save()

    def down(self) -> None:
        """Stop what `up` started (pods first, Redis last) and forget it; the data directory stays."""
        for name in sorted(self.pids, key=_stop_order):
            self.kill(name)
        self.save()

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to one part (only if its pid still runs what we started) and reap it."""
        pid = self.pids.pop(name, None)
        if pid is None or not _runs(pid, self.root, name):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def alive(self, name: str) -> bool:
        pid = self.pids.get(name)
        return pid is not None and _runs(pid, self.root, name)

    def save(self) -> None:
        state = {
            "ports": asdict(self.ports),
            "database": self.database,
            "postgres": self.postgres,
            "jwt_secret": self.jwt_secret,
            "pod_env": self.pod_env,
            "pids": self.pids,
        }
        path = self.root / "state.json"
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)  # holds the JWT secret of this local topology

    @classmethod
    def load(cls, root: Path) -> Topology | None:
        path = root / "state.json"
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        return cls(
            root,
            Ports(**state["ports"]),
            state["database"],
            state["postgres"],
            state["jwt_secret"],
            state["pod_env"],
            {k: int(v) for k, v in state["pids"].items()},
        )

    # --- Redis Cluster -----------------------------------------------------------------------------------------
    def redis_node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)

    def start_redis(self, port: int) -> None:
        """Start (or restart) one node; a node that was in the cluster rejoins it from its `nodes.conf`."""
        directory = self.root / "redis" / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"]
        args += ["--logfile", str(directory / "redis.log")]
        self._start(f"redis-{port}", args, _base_env(), probe=lambda: self._pings(port))

    def _pings(self, port: int) -> bool:
        try:
            with self.redis_node(port) as node:
                return bool(node.ping())
        except (redis.RedisError, OSError):
            return False

    def _create_cluster(self) -> None:
        first = self.ports.redis[0]
        with self.redis_node(first) as node:
            if int(node.cluster("info").get("cluster_known_nodes", 1)) > 1:
                self.wait_cluster_ok()
                return  # restarted from its `nodes.conf`: the cluster exists
        addresses = [f"127.0.0.1:{p}" for p in self.ports.redis]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_cluster_ok()

    def cluster_nodes(self) -> list[dict[str, str]]:
        """`CLUSTER NODES` as seen by the first node that answers: id, port, role (`master`/`slave`), master id,
        and whether it is marked failed."""
        for port in self.ports.redis:
            try:
                with self.redis_node(port) as node:
                    raw = node.execute_command("CLUSTER", "NODES")
            except (redis.RedisError, OSError):
                continue
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            nodes = []
            for line in text.strip().splitlines():
                parts = line.split()
                flags = parts[2].split(",")
                nodes.append(
                    {
                        "id": parts[0],
                        "port": parts[1].split("@")[0].rsplit(":", 1)[1],
                        "role": "master" if "master" in flags else "slave",
                        "master": parts[3],
                        "failed": str("fail" in flags),
                    }
                )
            return nodes
        return []

    def master_of(self, key: str) -> int:
        """The port of the master that serves `key`'s hash slot now."""
        slot = key_slot(key.encode())
        for port in self.ports.redis:
            try:
                with self.redis_node(port) as node:
                    ranges = node.execute_command("CLUSTER", "SLOTS")
            except (redis.RedisError, OSError):
                continue
            for start, end, master, *_ in ranges:
                if start <= slot <= end:
                    return int(master[1])
        raise RuntimeError(f"no node serves slot {slot}")

    def masters(self) -> list[int]:
        return sorted(int(n["port"]) for n in self.cluster_nodes() if n["role"] == "master" and n["failed"] == "False")

    def replica_of(self, master_port: int) -> int:
        nodes = self.cluster_nodes()
        master = next(n["id"] for n in nodes if n["port"] == str(master_port))
        return int(next(n["port"] for n in nodes if n["master"] == master and n["failed"] == "False"))

    def wait_cluster_ok(self, timeout: float = 60) -> None:
        """Until every live node says `cluster_state:ok` and each master has a replica in sync."""
        deadline = time.monotonic() + timeout
        while True:
            if self._cluster_settled():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not settle: {self.cluster_nodes()}")
            time.sleep(0.1)

    def _cluster_settled(self) -> bool:
        for port in self.ports.redis:
            if not self.alive(f"redis-{port}"):
                continue
            try:
                with self.redis_node(port) as node:
                    if node.cluster("info").get("cluster_state") != "ok":
                        return False
                    info = node.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            except (redis.RedisError, OSError):
                return False
        nodes = self.cluster_nodes()
        masters = [n for n in nodes if n["role"] == "master" and n["failed"] == "False"]
        replicas = [n for n in nodes if n["role"] == "slave" and n["failed"] == "False"]
        covered = {r["master"] for r in replicas}
        return len(masters) == 3 and all(m["id"] in covered for m in masters)

    # --- PostgreSQL and PgBouncer ------------------------------------------------------------------------------
    def _create_database(self) -> None:
        host, port = self.postgres.split(":")
        found = subprocess.run(
            ["psql", "-h", host, "-p", port, "-U", "postgres", "-tAc", f"SELECT 1 FROM pg_database "
             f"WHERE datname = '{self.database}'"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        if found.stdout.strip() != "1":
            subprocess.run(
                ["createdb", "-h", host, "-p", port, "-U", "postgres", self.database], check=True, timeout=30
            )

    def _start_pgbouncer(self) -> None:
        directory = self.root / "pgbouncer"
        directory.mkdir(exist_ok=True)
        host, port = self.postgres.split(":")
        (directory / "userlist.txt").write_text('"postgres" ""\n')
        (directory / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={host} port={port} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.ports.pgbouncer}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
; 3 pods x COPILOT_DB_POOL_MAX_SIZE clients share this many server connections per database
default_pool_size = 20
max_client_conn = 1000
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {directory}/pgbouncer.log
admin_users = postgres
"""
        )
        as_postgres = os.geteuid() == 0  # PgBouncer refuses to run as root
        if as_postgres:
            user = pwd.getpwnam("postgres")
            for path in (directory, *directory.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._start(
            "pgbouncer",
            ["pgbouncer", str(directory / "pgbouncer.ini")],
            _base_env(),
            probe=lambda: _listens(self.ports.pgbouncer),
            user="postgres" if as_postgres else None,
        )

    # --- pods and the balancer ---------------------------------------------------------------------------------
    def pod_environment(self) -> dict[str, str]:
        return {
            **_base_env(),
            **POD_ENV,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{self.ports.mock}/v1",
            "COPILOT_JWT_SECRET": self.jwt_secret,
            **self.pod_env,
        }

    def start_pod(self, index: int, env: Mapping[str, str] | None = None) -> None:
        """Start pod `index` (from 0); `env` overrides its environment (another Redis, say)."""
        port = self.ports.pods[index]
        args = [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        environment = {**self.pod_environment(), **(env or {})}
        self._start(f"pod-{index + 1}", args, environment, ready=f"{self.pod_url(index)}/health/ready")

    def _start_haproxy(self) -> None:
        servers = "\n".join(f"    server pod-{i + 1} 127.0.0.1:{port} check" for i, port in enumerate(self.ports.pods))
        config = self.root / "haproxy.cfg"
        config.write_text(
            f"""global
    maxconn 4000

defaults
    mode http
    option http-no-delay
    option redispatch
    retries 2
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
    timeout http-keep-alive 10s

frontend copilot
    bind 127.0.0.1:{self.ports.balancer}
    default_backend pods

backend pods
    balance roundrobin
    http-response set-header X-Served-By %s
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}
"""
        )
        self._start("haproxy", ["haproxy", "-db", "-f", str(config)], _base_env(), ready=f"{self.url}/health/live")
        self.wait_balanced()

    def wait_balanced(self, timeout: float = 30) -> None:
        """Until HAProxy sends requests to every pod (its health checks found them all up)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                seen = set()
                for _ in range(3 * len(self.ports.pods)):
                    with contextlib.suppress(httpx.HTTPError):
                        seen.add(client.get(f"{self.url}/api/info").headers.get("x-served-by"))
                live = sum(1 for i in range(len(self.ports.pods)) if self.alive(f"pod-{i + 1}"))
                if len(seen - {None}) >= live:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"HAProxy reaches {len(seen)} of {live} pods")
                time.sleep(0.3)

    # --- processes ---------------------------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _start(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str],
        *,
        ready: str | None = None,
        probe: object = None,
        user: str | None = None,
        timeout: float = 60,
    ) -> None:
        """Start a detached process (its own session: it outlives `cluster.sh up`) and wait until it is ready."""
        if self.alive(name):
            return
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                args,
                cwd=self.root,  # a developer's `.env` in the repository must not configure a pod
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
            )
        self.pids[name] = process.pid
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{_tail(log)}")
                if ready is not None and _answers(client, ready):
                    return
                if callable(probe) and probe():
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:g}s:\n{_tail(log)}")
                time.sleep(0.1)

    def describe(self) -> str:
        """What runs where (for `cluster.sh up|status`)."""
        lines = [f"balancer (HAProxy)   {self.url}   {self._state('haproxy')}"]
        lines += [
            f"pod-{i + 1}                {self.pod_url(i)}   {self._state(f'pod-{i + 1}')}"
            for i in range(len(self.ports.pods))
        ]
        roles = {int(n["port"]): n for n in self.cluster_nodes()}
        for port in self.ports.redis:
            node = roles.get(port)
            role = "?" if node is None else ("master" if node["role"] == "master" else "replica")
            lines.append(f"redis {role:<8}       redis://127.0.0.1:{port}   {self._state(f'redis-{port}')}")
        lines.append(f"PgBouncer (txn)      {self.database_url}   {self._state('pgbouncer')}")
        lines.append(f"PostgreSQL           postgresql://postgres@{self.postgres}/{self.database}   (shared)")
        lines.append(f"mock model           http://127.0.0.1:{self.ports.mock}/v1   {self._state('mock-llm')}")
        lines.append(f"logs                 {self.root / 'logs'}")
        return "\n".join(lines)

    def _state(self, name: str) -> str:
        return f"pid {self.pids[name]}" if self.alive(name) else "DOWN"


def missing_commands() -> dict[str, str]:
    """Commands the topology needs that are not installed → their Debian package."""
    return {cmd: pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None}


def _stop_order(name: str) -> int:
    return ["haproxy", "pod", "mock", "pgbouncer", "redis"].index(next(p for p in _PREFIXES if name.startswith(p)))


_PREFIXES = ("haproxy", "pod", "mock", "pgbouncer", "redis")


def _runs(pid: int, root: Path, name: str) -> bool:
    """Whether `pid` is still the process we started as `name` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    marker = {"haproxy": "haproxy", "pgbouncer": "pgbouncer", "mock-llm": "mock-llm"}.get(name)
    if name.startswith("redis-"):
        marker = f"redis-server 127.0.0.1:{name.removeprefix('redis-')}"
    elif name.startswith("pod-"):
        marker = "backend.cli serve"
    return marker is not None and marker in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _free_redis_ports(count: int) -> list[int]:
    """Ports free together with their cluster bus port (+10000), which must stay below 65536."""
    found: list[int] = []
    for port in random.sample(range(20_000, 30_000), 2000):
        if len(found) == count:
            return found
        if all(_bindable(p) for p in (port, port + 10_000)):
            found.append(port)
    raise RuntimeError("no free ports for the Redis Cluster")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _base_env() -> dict[str, str]:
    """This process's environment without the service's own settings (a developer's shell must not leak in)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COPILOT_", "OPENAI_", "LANGFUSE_", "POSTHOG_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
