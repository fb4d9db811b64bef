"""The pods of deploy/kubernetes, as each overlay builds them: every role spread over zones
and hosts with a disruption budget of its own, probed on /healthz and /readyz, unprivileged
on a read-only root, with requests and limits, secrets only by reference, every ``AXON_*``
variable a real setting, and a grace period that covers Axon's own shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from axon.cli.run import SHUTDOWN_S
from axon.cli.server import server_config
from axon.config import Settings
from axon.gateway.routes.ops import CHECK_TIMEOUT_S
from support.kustomize import (
    Object,
    built,
    containers,
    environment,
    find,
    of_kind,
    pod_template,
    quantity,
    selects,
    settings_from,
)

KUBERNETES = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
OVERLAYS = ["aws", "local"]
ROLES = ("gateway", "session-manager", "worker")
COMPONENT = "app.kubernetes.io/component"
ZONE = "topology.kubernetes.io/zone"
HOST = "kubernetes.io/hostname"
#: What the build shows in place of a value read from a Secret.
FROM_SECRET = "from-a-secret"


def _objects(overlay: str) -> list[Object]:
    return built(KUBERNETES / "overlays" / overlay)


def _labels(workload: Object) -> dict[str, str]:
    template = pod_template(workload)
    assert template is not None
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def _roles(objects: list[Object]) -> list[Object]:
    """The Deployments of Axon's serving roles (one per model for the workers)."""
    return [d for d in of_kind(objects, "Deployment") if _labels(d).get(COMPONENT) in ROLES]


def _axon_workloads(objects: list[Object]) -> list[Object]:
    """Everything that runs Axon's image: the roles and the migration Job."""
    return [
        o
        for o in objects
        if pod_template(o) is not None and _labels(o).get("app.kubernetes.io/name") == "axon"
    ]


def _container_settings(objects: list[Object], workload: Object) -> Settings:
    [container] = containers(workload)
    return settings_from(environment(objects, container, FROM_SECRET))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_role_runs_and_every_model_has_workers(overlay: str) -> None:
    objects = _objects(overlay)
    roles = _roles(objects)
    assert {_labels(d)[COMPONENT] for d in roles} == set(ROLES)
    manager = next(d for d in roles if _labels(d)[COMPONENT] == "session-manager")
    served = {m.model for m in _container_settings(objects, manager).served_models}
    workers = [d for d in roles if _labels(d)[COMPONENT] == "worker"]
    run = {_container_settings(objects, w).engine.model for w in workers}
    assert run == served
    # One Deployment per model: a model's workers are one autoscaled group.
    assert len(run) == len(workers)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_role_spreads_over_zones_and_hosts_counting_only_its_own_pods(
    overlay: str,
) -> None:
    roles = _roles(_objects(overlay))
    for deployment in roles:
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]["template"]["spec"]
        constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
        assert set(constraints) >= {ZONE, HOST}, name
        for constraint in constraints.values():
            assert constraint["maxSkew"] == 1, name
            assert selects(constraint["labelSelector"], _labels(deployment)), name
            others = [d for d in roles if d is not deployment]
            assert not any(selects(constraint["labelSelector"], _labels(d)) for d in others), name
        if overlay == "aws":
            # A hard rule in production: both zones always hold each role.
            assert constraints[ZONE]["whenUnsatisfiable"] == "DoNotSchedule", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_role_has_a_disruption_budget_of_its_own(overlay: str) -> None:
    objects = _objects(overlay)
    budgets = of_kind(objects, "PodDisruptionBudget")
    for deployment in _roles(objects):
        name = deployment["metadata"]["name"]
        own = [b for b in budgets if selects(b["spec"]["selector"], _labels(deployment))]
        assert len(own) == 1, name
        # One pod at a time, whatever the replica count: a drain never deadlocks on a
        # role scaled down to its floor.
        assert own[0]["spec"]["maxUnavailable"] == 1, name
        assert selects(deployment["spec"]["selector"], _labels(deployment)), name


def _port_number(container: Object, port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_healthz_and_readyz_on_the_server_port(overlay: str) -> None:
    objects = _objects(overlay)
    for deployment in _roles(objects):
        name = deployment["metadata"]["name"]
        [container] = containers(deployment)
        port = _container_settings(objects, deployment).server.port
        live = container["livenessProbe"]["httpGet"]
        ready = container["readinessProbe"]["httpGet"]
        assert live["path"] == "/healthz", name
        assert ready["path"] == "/readyz", name
        assert _port_number(container, live["port"]) == port, name
        assert _port_number(container, ready["port"]) == port, name
        # /readyz runs each dependency's check for up to CHECK_TIMEOUT_S.
        assert container["readinessProbe"]["timeoutSeconds"] > CHECK_TIMEOUT_S, name
        if _labels(deployment)[COMPONENT] == "worker":
            # The server answers only once the model is loaded: liveness waits for this.
            startup = container["startupProbe"]
            assert startup["httpGet"]["path"] == "/healthz", name
            assert _port_number(container, startup["httpGet"]["port"]) == port, name
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, name


def _effective(pod: Object, container: Object) -> Object:
    """A container's security context with the pod's defaults under it."""
    return {**pod.get("securityContext", {}), **container.get("securityContext", {})}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_axon_runs_unprivileged_on_a_read_only_root(overlay: str) -> None:
    objects = _objects(overlay)
    workloads = _axon_workloads(objects)
    assert len(workloads) == len(_roles(objects)) + 1, "the roles and the migration Job"
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for container in containers(workload, init=True):
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = _effective(pod, container)
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] == 10001, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert "ALL" in context["capabilities"]["drop"], where
            assert not context["capabilities"].get("add"), where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_axon_writes_only_to_empty_dirs(overlay: str) -> None:
    """With a read-only root, /tmp and the data directory must be volumes (emptyDir:
    nothing on them outlives the pod, which Axon never relies on)."""
    objects = _objects(overlay)
    for workload in _axon_workloads(objects):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        data_dir = str(_container_settings(objects, workload).data_dir)
        for container in containers(workload):
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            for path in ("/tmp", data_dir):
                assert "emptyDir" in mounts[path], (workload["metadata"]["name"], path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for workload in _objects(overlay):
        for container in containers(workload, init=True):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            for name in ("cpu", "memory"):
                request = quantity(resources["requests"][name])
                limit = quantity(resources["limits"][name])
                assert 0 < request <= limit, (where, name)


#: Settings whose values are credentials (or carry them): never in a ConfigMap or inline.
SECRET_SETTINGS = {
    "AXON_STORE__URL",
    "AXON_BACKENDS__REDIS_URL",
    "AXON_BACKENDS__RABBITMQ_URL",
    "AXON_BACKENDS__RABBITMQ_URLS",
    "AXON_BACKENDS__REDIS_SENTINEL_PASSWORD",
    "AXON_AUTH__ADMIN_KEY",
    "AXON_ENGINE__OPENAI__API_KEY",
}


def _looks_secret(name: str, value: str) -> bool:
    credentials_in_url = "://" in value and "@" in value.split("://", 1)[1]
    return name in SECRET_SETTINGS or credentials_in_url or "PASS" in name or "TOKEN" in name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_read_only_by_reference(overlay: str) -> None:
    objects = _objects(overlay)
    inline = [
        f"{w['metadata']['name']}/{c['name']}: {var['name']}"
        for w in objects
        for c in containers(w, init=True)
        for var in c.get("env", [])
        if "value" in var and _looks_secret(var["name"], var["value"])
    ]
    in_config_maps = [
        f"ConfigMap {m['metadata']['name']}: {key}"
        for m in of_kind(objects, "ConfigMap")
        for key, value in m.get("data", {}).items()
        if _looks_secret(key, value)
    ]
    assert inline == []
    assert in_config_maps == []
    # And every Axon process that needs one does read it, from a Secret.
    for workload in _axon_workloads(objects):
        [container] = containers(workload)
        env = environment(objects, container, FROM_SECRET)
        for name in SECRET_SETTINGS & set(env):
            assert env[name] == FROM_SECRET, (workload["metadata"]["name"], name)


def test_the_secret_settings_list_names_every_secret_field() -> None:
    """SECRET_SETTINGS above must grow with the settings: every field typed SecretStr is in
    it (the DSNs are strings, listed by hand)."""
    from pydantic import BaseModel, SecretStr

    def secret_fields(model: type[BaseModel], prefix: str) -> set[str]:
        found = set()
        for name, info in model.model_fields.items():
            full = f"{prefix}{name.upper()}"
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found |= secret_fields(annotation, f"{full}__")
            elif SecretStr in getattr(annotation, "__args__", (annotation,)):
                found.add(full)
        return found

    fields = secret_fields(Settings, "AXON_")
    assert fields
    assert fields <= SECRET_SETTINGS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_axon_variable_is_a_setting_with_a_valid_value(overlay: str) -> None:
    """Built into settings exactly as `axon` builds them: a misspelled name, or a value that
    does not parse, would stop the process at start."""
    objects = _objects(overlay)
    checked = 0
    for workload in _axon_workloads(objects):
        for container in containers(workload, init=True):
            env = environment(objects, container, FROM_SECRET)
            settings = settings_from(env)
            checked += len([n for n in env if n.startswith("AXON_")])
            if settings.server.host != "127.0.0.1":
                # Reachable from other pods: authentication is on.
                assert settings.auth.required, workload["metadata"]["name"]
    assert checked > 30


def _pre_stop_s(container: Object) -> float:
    hook = container["lifecycle"]["preStop"]
    return float(hook["sleep"]["seconds"])


#: How many shutdown steps, each bounded at SHUTDOWN_S, a role runs after its HTTP server
#: has stopped (src/axon/cli/roles.py): the gateway closes its clients; the session manager
#: stops its background loops and closes its clients; the worker closes its clients after
#: its running replies had their grace (counted apart).
BOUNDED_STEPS = {"gateway": 1, "session-manager": 2, "worker": 1}
#: Room left over for the process's own exit and the kubelet's timing.
MARGIN_S = 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_axons_graceful_shutdown(overlay: str) -> None:
    objects = _objects(overlay)
    for deployment in _roles(objects):
        name = deployment["metadata"]["name"]
        role = _labels(deployment)[COMPONENT]
        [container] = containers(deployment)
        settings = _container_settings(objects, deployment)
        server_stop_s = server_config(FastAPI(), settings).timeout_graceful_shutdown
        assert server_stop_s is not None
        needed = (
            # The grace period starts with the preStop hook, before SIGTERM.
            _pre_stop_s(container)
            + settings.server.drain_s
            + server_stop_s
            + BOUNDED_STEPS[role] * SHUTDOWN_S
            + (settings.worker.stop_grace_s if role == "worker" else 0)
        )
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= needed + MARGIN_S, (name, grace, needed)
        assert _pre_stop_s(container) > 0, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_send_to_existing_pods_on_existing_ports(overlay: str) -> None:
    objects = _objects(overlay)
    workloads = [o for o in objects if pod_template(o) is not None]
    for service in of_kind(objects, "Service"):
        name = service["metadata"]["name"]
        backends = [w for w in workloads if selects(service["spec"]["selector"], _labels(w))]
        assert len(backends) == 1, name
        names = {p.get("name") for c in containers(backends[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (name, port)
    # The gateways' upstream is the session managers' Service, on their port.
    gateway = find(objects, "Deployment", "axon-gateway")
    manager = find(objects, "Deployment", "axon-session-manager")
    upstreams = _container_settings(objects, gateway).gateway.upstreams
    port = _container_settings(objects, manager).server.port
    assert upstreams == [f"http://axon-session-manager:{port}"]
    service = find(objects, "Service", "axon-session-manager")
    assert selects(service["spec"]["selector"], _labels(manager))
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
