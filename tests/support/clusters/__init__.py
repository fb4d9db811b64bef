"""Private, clustered datastores for fault-injection tests: a Redis primary with a replica
watched by three Sentinels, a PostgreSQL primary with a streaming standby, a three-node
RabbitMQ cluster, and a TCP proxy that can partition a client from a server; and the single
servers and helpers they are built from (``base``), which the chaos suite's own private
datastores use too.

Each cluster is a context manager that starts its processes on free ports, in its own
temporary directory, and on exit kills exactly the processes it started and removes the
directory. The shared services of the machine (PostgreSQL on 5432, Redis on 6379, RabbitMQ
on 5672 and Erlang's port mapper) are never touched: a failure test is free to kill what it
is given.

Only the standard library is used, and every method is synchronous, so a test drives these
from a plain fixture or, for the slower calls, from ``asyncio.to_thread``::

    with RedisSentinelGroup() as redis, BlackholeProxy(redis.primary_port) as link:
        ...                                   # clients use redis.sentinel_addresses
        redis.kill_primary()
        new_port = redis.wait_promoted(timeout=30)

Start-up on two cores: Redis with Sentinels about 2 s, PostgreSQL about 2 s, RabbitMQ
(three nodes) 10-16 s. Missing binaries or OS accounts raise ``ClusterUnavailable``.
"""

from .base import (
    LOCALHOST,
    STARTUP_TIMEOUT_S,
    Account,
    Cluster,
    ClusterError,
    ClusterUnavailable,
    Service,
    free_port,
    kill_tree,
    port_open,
    run_tool,
    wait_for,
)
from .postgres import PostgresPair, PostgresServer, postgres_bin
from .proxy import BlackholeProxy
from .rabbitmq import RABBITMQ_BIN, RabbitCluster
from .redis import RedisSentinelGroup, RedisServer, RespError, redis_command, try_redis

__all__ = [
    "LOCALHOST",
    "RABBITMQ_BIN",
    "STARTUP_TIMEOUT_S",
    "Account",
    "BlackholeProxy",
    "Cluster",
    "ClusterError",
    "ClusterUnavailable",
    "PostgresPair",
    "PostgresServer",
    "RabbitCluster",
    "RedisSentinelGroup",
    "RedisServer",
    "RespError",
    "Service",
    "free_port",
    "kill_tree",
    "port_open",
    "postgres_bin",
    "redis_command",
    "run_tool",
    "try_redis",
    "wait_for",
]
