"""Two availability zones on one machine. Zone "a" holds the Redis primary, one Sentinel, the
PostgreSQL primary and one RabbitMQ node; zone "b" the Redis replica, two Sentinels, the
PostgreSQL standby and two RabbitMQ nodes, so that what survives the loss of zone "a" keeps a
quorum everywhere (two Sentinels of three, two queue members of three). The stack's member
``i`` of each role (one gateway, session manager and worker per zone) is in zone ``i``.

Each process lists its own zone's datastore nodes first, as a zone-aware deployment does."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from support.clusters import PostgresPair, RabbitCluster, RedisSentinelGroup

if TYPE_CHECKING:
    from .datastores import Datastores

ZONES = ("a", "b")
#: Which RabbitMQ nodes and which Sentinels (by index) are in each zone.
RABBITMQ_NODES = {"a": (0,), "b": (1, 2)}
SENTINELS = {"a": (0,), "b": (1, 2)}


class Zones:
    def __init__(self, stores: Datastores) -> None:
        if stores.rabbitmq is None or stores.sentinels is None or stores.pair is None:
            raise ValueError("zones need a RabbitMQ cluster, Sentinels and a standby")
        if stores.rabbitmq.size != 3:
            raise ValueError("zones need three RabbitMQ nodes")
        self.rabbitmq: RabbitCluster = stores.rabbitmq
        self.sentinels: RedisSentinelGroup = stores.sentinels
        self.pair: PostgresPair = stores.pair

    @staticmethod
    def of(index: int) -> str:
        """The zone of a stack member by its index in its role."""
        return ZONES[index % len(ZONES)]

    def member_env(self, role: str, index: int) -> dict[str, str]:
        zone = self.of(index)
        nodes = list(RABBITMQ_NODES[zone]) + [
            n for z in ZONES if z != zone for n in RABBITMQ_NODES[z]
        ]
        sentinels = list(SENTINELS[zone]) + [n for z in ZONES if z != zone for n in SENTINELS[z]]
        return {
            "AXON_BACKENDS__RABBITMQ_URLS": json.dumps([self.rabbitmq.url(n) for n in nodes]),
            "AXON_BACKENDS__RABBITMQ_URL": self.rabbitmq.url(nodes[0]),
            "AXON_BACKENDS__REDIS_SENTINELS": json.dumps(
                [self.sentinels.sentinel_addresses[n] for n in sentinels]
            ),
        }

    def datastore_kills(self, zone: str) -> list[tuple[str, Callable[[], object]]]:
        """Each of the zone's datastore processes, by name, with the SIGKILL that ends it."""
        if zone != "a":
            raise ValueError("only zone a holds primaries to lose")
        kills: list[tuple[str, Callable[[], object]]] = [
            (f"rabbitmq node {n + 1}", partial(self.rabbitmq.kill_node, n))
            for n in RABBITMQ_NODES[zone]
        ]
        kills += [
            (f"sentinel {n + 1}", partial(self.sentinels.kill_sentinel, n)) for n in SENTINELS[zone]
        ]
        kills.append(("redis primary", self.sentinels.kill_primary))
        kills.append(("postgres primary", self.pair.kill_primary))
        return kills
