"""The NetworkPolicies of deploy/kubernetes, evaluated: each role reaches what its
configuration says it uses (its session managers, PostgreSQL, Redis, RabbitMQ, DNS), is
reached by its clients and by Prometheus, and nothing else gets through."""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.kustomize import Object, built, containers, find, of_kind, pod_template, selects

KUBERNETES = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
OVERLAYS = ["aws", "local"]
NAMESPACE = "axon"
COMPONENT = "app.kubernetes.io/component"

#: The settings naming each datastore, by the port it listens on in each overlay. On AWS
#: the stores are outside the cluster: RDS (5432), ElastiCache (6379) and Amazon MQ,
#: which speaks AMQP over TLS only (5671).
DATASTORE_SETTINGS = {
    "AXON_STORE__URL": "postgresql",
    "AXON_BACKENDS__REDIS_URL": "redis",
    "AXON_BACKENDS__RABBITMQ_URL": "rabbitmq",
}
AWS_PORTS = {"postgresql": 5432, "redis": 6379, "rabbitmq": 5671}


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (its namespace, labels and named ports), or an
    address outside the cluster (``namespace`` None)."""

    name: str
    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ip: str | None = None


KUBE_DNS = Peer("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
PROMETHEUS = Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
INGRESS_NGINX = Peer("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "nginx"})
#: The ALB's nodes and the managed datastores have addresses in the VPC (Terraform's
#: 10.0.0.0/16); the internet does not.
ALB = Peer("alb", None, ip="10.0.3.17")
MANAGED_DATASTORE = Peer("managed datastore", None, ip="10.0.21.5")
INTERNET = Peer("internet", None, ip="203.0.113.9")


def _objects(overlay: str) -> list[Object]:
    return built(KUBERNETES / "overlays" / overlay)


def _pods(objects: list[Object]) -> dict[str, Peer]:
    """Every workload's pods, by workload name."""
    pods = {}
    for workload in objects:
        template = pod_template(workload)
        if template is None:
            continue
        ports = {
            p["name"]: p["containerPort"]
            for c in containers(workload)
            for p in c.get("ports", [])
            if "name" in p
        }
        name = workload["metadata"]["name"]
        pods[name] = Peer(name, NAMESPACE, template["metadata"]["labels"], ports)
    return pods


def _peer_matches(rule_peer: Object, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        # Pod addresses are not known before scheduling: an ipBlock names outside ones.
        if peer.ip is None:
            return False
        block = rule_peer["ipBlock"]
        address = ipaddress.ip_address(peer.ip)
        excepted = any(address in ipaddress.ip_network(e) for e in block.get("except", []))
        return address in ipaddress.ip_network(block["cidr"]) and not excepted
    if peer.namespace is None:
        return False
    namespaces = rule_peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = peer.namespace == NAMESPACE
    else:
        in_namespace = selects(namespaces, {"kubernetes.io/metadata.name": peer.namespace})
    pods = rule_peer.get("podSelector")
    return in_namespace and (pods is None or selects(pods, peer.labels))


def _port_matches(rule_ports: list[Object], port: int, protocol: str, target: Peer) -> bool:
    if not rule_ports:
        return True
    for rule in rule_ports:
        if rule.get("protocol", "TCP") != protocol:
            continue
        if "port" not in rule:
            return True
        # A named port is the destination pod's.
        number = target.ports.get(rule["port"]) if isinstance(rule["port"], str) else rule["port"]
        if number is not None and number <= port <= rule.get("endPort", number):
            return True
    return False


def _side_allows(
    policies: list[Object], direction: str, owner: Peer, other: Peer, port: int, protocol: str
) -> bool:
    """Whether ``owner``'s policies let traffic out to (or in from) ``other``. A pod outside
    Axon's namespace, or selected by no policy of that direction, is not isolated."""
    if owner.namespace != NAMESPACE:
        return True
    kind, peers = ("Egress", "to") if direction == "egress" else ("Ingress", "from")
    own = [
        p
        for p in policies
        if kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], owner.labels)
    ]
    if not own:
        return True
    target = other if direction == "egress" else owner
    return any(
        (not rule.get(peers) or any(_peer_matches(peer, other) for peer in rule[peers]))
        and _port_matches(rule.get("ports", []), port, protocol, target)
        for policy in own
        for rule in policy["spec"].get(direction, [])
    )


def sends(
    objects: list[Object], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the source's own policies let the connection out (whatever the target's)."""
    policies = of_kind(objects, "NetworkPolicy")
    return _side_allows(policies, "egress", source, target, port, protocol)


def admits(
    objects: list[Object], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the target's own policies let the connection in (whatever the source's)."""
    policies = of_kind(objects, "NetworkPolicy")
    return _side_allows(policies, "ingress", target, source, port, protocol)


def allowed(
    objects: list[Object], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    return sends(objects, source, target, port, protocol) and admits(
        objects, source, target, port, protocol
    )


def _workload(objects: list[Object], name: str) -> Object:
    [workload] = [o for o in objects if o["metadata"]["name"] == name and pod_template(o)]
    return workload


def _uses(workload: Object) -> set[str]:
    """The datastores a workload is configured to use (the DSNs it reads)."""
    names = {var["name"] for c in containers(workload) for var in c.get("env", [])}
    return {store for setting, store in DATASTORE_SETTINGS.items() if setting in names}


def _datastore_endpoints(objects: list[Object], overlay: str) -> dict[str, tuple[Peer, int]]:
    """Where each datastore is, as the overlay's DSNs say."""
    if overlay == "aws":
        return {store: (MANAGED_DATASTORE, port) for store, port in AWS_PORTS.items()}
    secret = find(objects, "Secret", "axon-secrets")["data"]
    pods = _pods(objects)
    keys = {"postgresql": "store-url", "redis": "redis-url", "rabbitmq": "rabbitmq-url"}
    endpoints = {}
    for store, key in keys.items():
        url = urlsplit(base64.b64decode(secret[key]).decode())
        assert url.hostname is not None
        service = find(objects, "Service", url.hostname)
        [pod] = [p for p in pods.values() if selects(service["spec"]["selector"], p.labels)]
        endpoints[store] = (pod, url.port or 0)
    return endpoints


def _axon_pods(objects: list[Object]) -> dict[str, Peer]:
    return {
        name: pod
        for name, pod in _pods(objects).items()
        if pod.labels.get("app.kubernetes.io/name") == "axon"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_policy_selects_pods_that_exist(overlay: str) -> None:
    objects = _objects(overlay)
    pods = _pods(objects)
    for policy in of_kind(objects, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        spec = policy["spec"]
        assert any(selects(spec["podSelector"], p.labels) for p in pods.values()), name
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selects(peer["podSelector"], p.labels) for p in pods.values()), (
                        name,
                        peer,
                    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_isolated_both_ways(overlay: str) -> None:
    objects = _objects(overlay)
    for pod in _pods(objects).values():
        assert not allowed(objects, pod, INTERNET, 443), pod.name
        assert not allowed(objects, INTERNET, pod, 8000), pod.name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_role_reaches_the_datastores_it_uses_and_no_other(overlay: str) -> None:
    objects = _objects(overlay)
    endpoints = _datastore_endpoints(objects, overlay)
    for name, pod in _axon_pods(objects).items():
        uses = _uses(_workload(objects, name))
        assert uses, name
        for store, (target, port) in endpoints.items():
            if store in uses:
                assert allowed(objects, pod, target, port), (name, store)
            else:
                # Refused on the way out already, whatever the datastore's own policy.
                assert not sends(objects, pod, target, port), (name, store)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_axon_pod_resolves_names(overlay: str) -> None:
    objects = _objects(overlay)
    for name, pod in _axon_pods(objects).items():
        assert allowed(objects, pod, KUBE_DNS, 53, "UDP"), name
        assert allowed(objects, pod, KUBE_DNS, 53, "TCP"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_flow_client_to_gateway_to_session_manager_only(overlay: str) -> None:
    objects = _objects(overlay)
    pods = _pods(objects)
    gateway = pods["axon-gateway"]
    manager = pods["axon-session-manager"]
    port = gateway.ports["http"]
    client = ALB if overlay == "aws" else INGRESS_NGINX
    assert allowed(objects, client, gateway, port)
    assert allowed(objects, gateway, manager, manager.ports["http"])
    # Each side refuses on its own, whatever the other's policies: a session manager admits
    # only gateways, a worker no pod at all (workers take jobs from the queue), and no pod
    # but a gateway admits client traffic.
    for name, pod in pods.items():
        if name != "axon-gateway":
            assert not admits(objects, pod, manager, manager.ports["http"]), name
            assert not admits(objects, client, pod, port), name
        for worker in (p for p in pods.values() if p.labels.get(COMPONENT) == "worker"):
            assert not admits(objects, pod, worker, worker.ports["http"]), (name, worker.name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_every_role_on_its_metrics_port(overlay: str) -> None:
    objects = _objects(overlay)
    for name, pod in _axon_pods(objects).items():
        if pod.labels.get(COMPONENT) == "migration":
            continue
        assert allowed(objects, PROMETHEUS, pod, pod.ports["http"]), name


def test_the_local_datastores_admit_only_the_roles_that_use_them() -> None:
    objects = _objects("local")
    endpoints = _datastore_endpoints(objects, "local")
    users = {
        store: {
            name
            for name, pod in _axon_pods(objects).items()
            if store in _uses(_workload(objects, name))
        }
        for store in endpoints
    }
    assert users == {
        "postgresql": {"axon-gateway", "axon-session-manager", "axon-db-upgrade"},
        "redis": {"axon-gateway", "axon-session-manager", "axon-worker-smollm2-135m-instruct"},
        "rabbitmq": {"axon-session-manager", "axon-worker-smollm2-135m-instruct"},
    }
    pods = _pods(objects)
    for store, (target, port) in endpoints.items():
        for name, pod in pods.items():
            assert admits(objects, pod, target, port) == (name in users[store]), (store, name)
        assert not admits(objects, PROMETHEUS, target, port), store
        assert not admits(objects, INGRESS_NGINX, target, port), store
