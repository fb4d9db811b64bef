"""The Kubernetes manifests in deploy/kubernetes as each overlay builds them: valid against
the Kubernetes 1.30 API, every file in use, everything in Axon's namespace, images pinned,
the custom resources well formed, and the dashboards and alert rules shipped as they are
in deploy/."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support.kustomize import CLUSTER_SCOPED, Object, built, containers, find, of_kind, selects

ROOT = Path(__file__).resolve().parents[3]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["aws", "local"]
NAMESPACE = "axon"

#: kubernetes-validate carries the schemas of the built-in API only. These custom resources
#: (KEDA, the Prometheus Operator, the External Secrets Operator) are checked field by field
#: in the tests below, by what their operators read.
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("external-secrets.io/v1", "ExternalSecret"),
    ("vpcresources.k8s.aws/v1beta1", "SecurityGroupPolicy"),
}
#: Resources that act on an add-on's pods, and so live in the add-on's namespace.
ELSEWHERE = {("SecurityGroupPolicy", "keda-operator"): "keda"}


def _objects(overlay: str) -> list[Object]:
    return built(KUBERNETES / "overlays" / overlay)


def _name(obj: Object) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_resource_validates_against_the_kubernetes_api(overlay: str) -> None:
    failures = []
    checked = 0
    for obj in _objects(overlay):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue
        # A kind with no schema raises SchemaNotFoundError: it must be added above, with
        # its own checks, rather than pass unchecked.
        try:
            kubernetes_validate.validate(obj, "1.30", strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            failures.append(f"{_name(obj)}: {path}: {exc.message}")
        checked += 1
    assert failures == []
    assert checked > 20


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_axons_namespace(overlay: str) -> None:
    objects = _objects(overlay)
    find(objects, "Namespace", NAMESPACE)
    misplaced = [
        _name(o)
        for o in objects
        if o["kind"] not in CLUSTER_SCOPED
        and o["metadata"].get("namespace")
        != ELSEWHERE.get((o["kind"], o["metadata"]["name"]), NAMESPACE)
    ]
    assert misplaced == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(overlay: str) -> None:
    """A moving tag would run a different release on each node that pulls it."""
    unpinned = [
        f"{_name(obj)}: {c['image']}"
        for obj in _objects(overlay)
        for c in containers(obj, init=True)
        if "@" not in c["image"]
        and (":" not in c["image"].rsplit("/", 1)[-1] or c["image"].endswith(":latest"))
    ]
    assert unpinned == []


def _referenced_files(directory: Path) -> set[Path]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = {directory / "kustomization.yaml"}
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        files |= _referenced_files(target) if target.is_dir() else {target}
    files |= {(directory / p["path"]).resolve() for p in spec.get("patches", []) if "path" in p}
    return files


def test_every_manifest_file_is_part_of_an_overlay() -> None:
    """A file no kustomization lists is never applied, however right it looks."""
    used = _referenced_files(KUBERNETES / "overlays" / "aws") | _referenced_files(
        KUBERNETES / "overlays" / "local"
    )
    on_disk = {p.resolve() for p in KUBERNETES.rglob("*.yaml")}
    assert on_disk - used == set()


def test_the_dashboards_and_alert_rules_ship_as_they_are_in_deploy() -> None:
    for overlay in OVERLAYS:
        objects = _objects(overlay)
        dashboards = find(objects, "ConfigMap", "axon-grafana-dashboards")
        expected = {
            p.name: p.read_text()
            for p in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")
        }
        assert dashboards["data"] == expected
        # Grafana's dashboard sidecar loads ConfigMaps by this label.
        assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
        rules = find(objects, "ConfigMap", "axon-prometheus-rules")
        assert rules["data"] == {
            "axon-rules.yml": (ROOT / "deploy/prometheus/axon-rules.yml").read_text()
        }


# The custom resources, checked by hand (see CUSTOM_RESOURCES).


def _deployment_pods(objects: list[Object]) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in of_kind(objects, "Deployment")
    }


def test_scaled_objects_are_well_formed() -> None:
    objects = _objects("aws")
    scaled = of_kind(objects, "ScaledObject")
    assert scaled, "the aws overlay scales workers with KEDA"
    for obj in scaled:
        spec = obj["spec"]
        assert set(spec) <= {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "advanced",
            "triggers",
        }, _name(obj)
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert isinstance(spec["minReplicaCount"], int)
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert set(behavior) <= {"scaleUp", "scaleDown"}
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq"
            metadata = trigger["metadata"]
            assert metadata["protocol"] in ("amqp", "http")
            assert metadata["mode"] in ("QueueLength", "MessageRate")
            # KEDA reads every metadata value as a string.
            assert all(isinstance(v, str) for v in metadata.values()), metadata
            assert int(metadata["value"]) > 0
            find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_trigger_authentications_read_existing_secret_keys() -> None:
    objects = _objects("aws")
    provided = _external_secret_keys(objects)
    for auth in of_kind(objects, "TriggerAuthentication"):
        assert set(auth["spec"]) == {"secretTargetRef"}
        for ref in auth["spec"]["secretTargetRef"]:
            # The RabbitMQ scaler takes the broker's URL as its `host` parameter.
            assert ref["parameter"] == "host"
            assert ref["key"] in provided[ref["name"]], ref


def _external_secret_keys(objects: list[Object]) -> dict[str, set[str]]:
    return {
        e["spec"]["target"]["name"]: {d["secretKey"] for d in e["spec"]["data"]}
        for e in of_kind(objects, "ExternalSecret")
    }


def test_external_secrets_are_well_formed() -> None:
    for secret in of_kind(_objects("aws"), "ExternalSecret"):
        spec = secret["spec"]
        assert set(spec) <= {"refreshInterval", "secretStoreRef", "target", "data"}
        assert spec["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
        assert spec["secretStoreRef"]["name"]
        for item in spec["data"]:
            assert set(item) == {"secretKey", "remoteRef"}
            assert set(item["remoteRef"]) <= {"key", "property", "version"}
            assert item["remoteRef"]["key"]


RULES = (ROOT / "deploy" / "prometheus" / "axon-rules.yml").read_text()


def test_pod_monitors_name_the_jobs_the_alert_rules_expect() -> None:
    objects = _objects("aws")
    pods = _deployment_pods(objects)
    jobs: dict[str, list[str]] = {}
    for monitor in of_kind(objects, "PodMonitor"):
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "podMetricsEndpoints", "jobLabel", "namespaceSelector"}
        selected = [name for name, labels in pods.items() if selects(spec["selector"], labels)]
        assert selected, f"{_name(monitor)} selects no pods"
        for endpoint in spec["podMetricsEndpoints"]:
            assert endpoint["path"] == "/metrics"
            for deployment in selected:
                ports = {
                    p.get("name")
                    for c in containers(find(objects, "Deployment", deployment))
                    for p in c["ports"]
                }
                assert endpoint["port"] in ports, (
                    f"{_name(monitor)}: {deployment} has no {endpoint['port']}"
                )
            # The operator names the job `<namespace>/<name>` unless relabelled.
            [job] = [
                r["replacement"]
                for r in endpoint["relabelings"]
                if r["targetLabel"] == "job" and r.get("action", "replace") == "replace"
            ]
            jobs[job] = selected
    named = set(re.findall(r'job="([^"]+)"', RULES))
    patterns = set(re.findall(r'job=~"([^"]+)"', RULES))
    assert named
    assert patterns
    assert named <= set(jobs)
    assert all(re.fullmatch(p, job) for p in patterns for job in jobs)
    assert set(jobs) == {"axon-gateway", "axon-session-manager", "axon-worker"}
    # Each process is scraped under one job only.
    scraped = [d for selected in jobs.values() for d in selected]
    assert len(scraped) == len(set(scraped))


def test_each_axon_pod_on_aws_carries_one_store_identity() -> None:
    """RDS, ElastiCache and Amazon MQ admit a role by its security group (deploy/terraform):
    every Axon pod gets exactly one role group, and the node group for cluster traffic."""
    objects = _objects("aws")
    policies = of_kind(objects, "SecurityGroupPolicy")
    for policy in policies:
        assert set(policy["spec"]) == {"podSelector", "securityGroups"}, _name(policy)
        ids = policy["spec"]["securityGroups"]["groupIds"]
        assert len(ids) == 2, _name(policy)
        assert all(re.fullmatch(r"sg-[0-9a-f]{8,17}", i) for i in ids), ids
    node_groups = {p["spec"]["securityGroups"]["groupIds"][1] for p in policies}
    role_groups = [p["spec"]["securityGroups"]["groupIds"][0] for p in policies]
    assert len(node_groups) == 1
    assert len(set(role_groups)) == len(role_groups)
    axon = [p for p in policies if p["metadata"]["namespace"] == NAMESPACE]
    for workload in objects:
        if workload["kind"] not in ("Deployment", "Job"):
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        owners = [p for p in axon if selects(p["spec"]["podSelector"], labels)]
        assert len(owners) == 1, _name(workload)
