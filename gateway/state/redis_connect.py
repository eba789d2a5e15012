"""The `state:` URL as a redis-py client: one server, a Redis Cluster, or a Sentinel-managed primary.

    redis://[user:pass@]host:6379/0       one server (also rediss:// for TLS, unix:///path.sock)
    redis+cluster://host1:7000,host2:7001 a Redis Cluster: any reachable nodes; the rest are found
    redis+sentinel://host1:26379,host2:26379/mymaster/0
                                          the primary that the Sentinels name `mymaster`, db 0
    valkey://..., valkey+cluster://..., valkey+sentinel://...  the same for Valkey (same protocol)

TLS: `rediss` / `valkeys` in place of `redis` / `valkey`, with any of the three forms. Every key
the gateway writes carries its tenant in a hash tag (`rg:{acme}:...`), so each script's keys share
one cluster slot and every operation works unchanged on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

Client = aioredis.Redis | RedisCluster
# What a call may raise when the server (or the cluster) is unreachable, slow or reconfiguring;
# RedisClusterException ("cluster down", "slots not covered") is not a RedisError.
CLIENT_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
_SINGLE = {"redis": "redis", "rediss": "rediss", "unix": "unix", "valkey": "redis", "valkeys": "rediss"}
_FAMILIES = ("redis", "rediss", "valkey", "valkeys")
_TLS = ("rediss", "valkeys")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    max_connections: int
    socket_timeout_s: float
    pool_timeout_s: float = 5.0  # waiting for a free connection under load (single server only)
    health_check_interval_s: int = 30


@dataclass(frozen=True, slots=True)
class StateURL:
    kind: str  # "single", "cluster" or "sentinel"
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    service: str | None  # the Sentinel service name
    db: int
    single_url: str | None  # for "single": the URL redis-py parses itself

    def redacted(self) -> str:
        """Where, for logs and /readyz: never the password."""
        if self.single_url is not None:
            return self.single_url.rpartition("@")[2]
        where = ",".join(f"{host}:{port}" for host, port in self.hosts)
        return f"{self.kind} {where}" + (f" service {self.service}" if self.service else "")


def parse(url: str) -> StateURL:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"state: expected 'memory' or a redis:// URL, got {url!r}")
    family, _, mode = scheme.lower().partition("+")
    if not mode and family in _SINGLE:
        single = _SINGLE[family] + "://" + rest
        return StateURL("single", family in _TLS, (), None, None, None, 0, single)
    if family not in _FAMILIES or mode not in ("cluster", "sentinel"):
        raise ValueError(
            f"state: unknown URL scheme {scheme!r}: use redis://, rediss://, unix://, redis+cluster://, "
            "redis+sentinel:// (or the valkey forms)"
        )
    userinfo, _, location = rest.rpartition("@")
    hosts_part, _, path = location.partition("/")
    username, password = None, None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if has_password else None)
    hosts = tuple(_host_port(item, 26379 if mode == "sentinel" else 6379) for item in hosts_part.split(","))
    segments = [s for s in path.split("/") if s]
    service, db = None, 0
    if mode == "sentinel":
        if not segments:
            raise ValueError(f"state: {scheme}:// needs the service name: {scheme}://host:26379/mymaster/0")
        service = segments.pop(0)
    if segments:
        if not segments[0].isdigit():
            raise ValueError(f"state: expected a database number after the hosts, got {segments[0]!r}")
        db = int(segments[0])
    if mode == "cluster" and db != 0:
        raise ValueError("state: a Redis Cluster has only database 0")
    return StateURL(mode, family in _TLS, hosts, username, password, service, db, None)


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
    if not host:
        raise ValueError(f"state: expected host:port, got {item!r}")
    try:
        return host.strip("[]"), int(port) if port else default_port
    except ValueError:
        raise ValueError(f"state: {item!r} has no valid port") from None


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):  # type: ignore[misc]
    """The Sentinel's pool (it asks the Sentinels where the primary is), queueing for a connection
    when all are busy like the single-server pool, instead of failing with 'Too many connections'."""


def connect(url: str, options: ClientOptions) -> Client:
    """A client that never retries a timeout on its own (see the backends for why)."""
    target = parse(url)
    # One immediate retry heals a connection the server closed; a timeout is never retried here.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    common: dict[str, Any] = {
        "socket_timeout": options.socket_timeout_s,
        "socket_connect_timeout": options.socket_timeout_s,
        "health_check_interval": options.health_check_interval_s,
    }
    if target.single_url is not None:
        # A blocking pool caps the connections the server sees from this process: under a burst,
        # requests queue for a connection instead of opening thousands.
        pool = aioredis.BlockingConnectionPool.from_url(
            target.single_url,
            max_connections=options.max_connections,
            timeout=options.pool_timeout_s,
            retry=retry,
            **common,
        )
        return aioredis.Redis(connection_pool=pool)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            max_connections=options.max_connections,
            retry=retry,
            ssl=target.tls,
            **auth,
            **common,
        )
    sentinel = Sentinel(
        list(target.hosts),
        # Each new connection to the primary asks a Sentinel where it is: as many at once as the pool.
        sentinel_kwargs={
            "socket_timeout": options.socket_timeout_s,
            "ssl": target.tls,
            "max_connections": options.max_connections,
        },
        ssl=target.tls,
        **common,
    )
    assert target.service is not None
    return sentinel.master_for(
        target.service,
        connection_pool_class=BlockingSentinelPool,
        db=target.db,
        max_connections=options.max_connections,
        timeout=options.pool_timeout_s,
        retry=retry,
        **auth,
    )


async def close(client: Client) -> None:
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect()
