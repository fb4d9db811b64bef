"""deploy/terraform: every file parses, every reference names something declared, and the
settings the two-zone picture rests on are there (no Terraform binary runs here, so these
checks and checkov stand in for `terraform validate`)."""

from __future__ import annotations

import ipaddress
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
TERRAFORM = ROOT / "deploy" / "terraform"
AWS_OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "aws"
FILES = sorted(TERRAFORM.glob("*.tf"))
OPTIONS = hcl2.SerializationOptions(
    with_comments=False, strip_string_quotes=True, explicit_blocks=False
)

# GPU instance types with EFA (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa.html).
EFA_GPU_TYPES = {
    "g6e.8xlarge",
    "g6e.12xlarge",
    "g6e.16xlarge",
    "g6e.24xlarge",
    "g6e.48xlarge",
    "p4d.24xlarge",
    "p4de.24xlarge",
    "p5.48xlarge",
    "p5e.48xlarge",
    "p5en.48xlarge",
}

# A reference inside an expression: var.x, local.x, module.x, data.type.name, type.name.
_REFERENCE = re.compile(
    r"(?<![\w.])(?:(var|local|module)\.(\w+)|data\.(\w+)\.(\w+)|((?:aws|random)_\w+)\.(\w+))"
)
_EXPRESSION = re.compile(r"^\$\{(.*)\}$", re.S)


@dataclass
class Config:
    """Every block of every .tf file, by kind, type and name."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources[kind][name]  # type: ignore[no-any-return]

    def of_kind(self, kind: str) -> dict[str, Any]:
        return self.resources.get(kind, {})

    def default(self, variable: str) -> Any:
        return self.variables[variable]["default"]


def _parse(path: Path) -> dict[str, Any]:
    return hcl2.loads(path.read_text(), serialization_options=OPTIONS)  # type: ignore[no-any-return]


def _load() -> Config:
    config = Config()
    for path in FILES:
        parsed = _parse(path)
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                config.resources.setdefault(kind, {}).update(named)
        for block in parsed.get("data", []):
            for kind, named in block.items():
                config.data.setdefault(kind, {}).update(named)
        for block in parsed.get("module", []):
            config.modules.update(block)
        for block in parsed.get("variable", []):
            config.variables.update(block)
        for block in parsed.get("output", []):
            config.outputs.update(block)
        for block in parsed.get("locals", []):
            config.locals.update(block)
    return config


@pytest.fixture(scope="module")
def config() -> Config:
    return _load()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _expression(value: Any) -> str:
    """The text of an expression attribute (``${...}``), or the value itself."""
    match = _EXPRESSION.match(value) if isinstance(value, str) else None
    return match.group(1) if match else str(value)


def _cidrsubnet(prefix: str, newbits: int, netnum: int) -> ipaddress.IPv4Network:
    network = ipaddress.IPv4Network(prefix)
    size = network.num_addresses >> newbits
    address = ipaddress.IPv4Address(int(network.network_address) + netnum * size)
    return ipaddress.IPv4Network(f"{address}/{network.prefixlen + newbits}")


def _subnets(expression: str, zones: int, vpc_cidr: str) -> list[ipaddress.IPv4Network]:
    """Evaluates the one form the VPC's subnet lists take: one subnet per zone,
    ``[for i, az in local.azs : cidrsubnet(var.vpc_cidr, NEWBITS, i + OFFSET)]``."""
    match = re.fullmatch(
        r"\[for i, az in local\.azs : cidrsubnet\(var\.vpc_cidr, (\d+), i(?: \+ (\d+))?\)\]",
        _expression(expression),
    )
    assert match, f"a subnet list is not one cidrsubnet per zone: {expression}"
    newbits, offset = int(match.group(1)), int(match.group(2) or 0)
    return [_cidrsubnet(vpc_cidr, newbits, i + offset) for i in range(zones)]


def _security_group(reference: Any) -> str:
    """``aws_security_group.NAME`` or ``module.eks.node_security_group_id`` from an id."""
    text = _expression(reference)
    match = re.fullmatch(r"aws_security_group\.(\w+)\.id", text)
    return match.group(1) if match else text


# --- parsing and references -----------------------------------------------------------


def test_the_module_has_its_files() -> None:
    names = {path.name for path in FILES}
    for expected in (
        "versions.tf",
        "variables.tf",
        "main.tf",
        "network.tf",
        "eks.tf",
        "rds.tf",
        "elasticache.tf",
        "mq.tf",
        "observability.tf",
        "security_groups.tf",
        "outputs.tf",
    ):
        assert expected in names


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_every_file_parses(path: Path) -> None:
    assert _parse(path), f"{path.name} is empty"


def _declared(config: Config, reference: re.Match[str]) -> bool:
    kind, name, data_kind, data_name, resource_kind, resource_name = reference.groups()
    if data_kind:
        return data_name in config.data.get(data_kind, {})
    if resource_kind:
        return resource_name in config.of_kind(resource_kind)
    declared = {"var": config.variables, "local": config.locals, "module": config.modules}
    return name in declared[kind]


def test_every_reference_names_a_declaration(config: Config) -> None:
    blocks = [config.resources, config.data, config.modules, config.variables]
    unresolved = {
        reference.group(0)
        for text in _strings([*blocks, config.outputs, config.locals])
        for reference in _REFERENCE.finditer(text)
        if not _declared(config, reference)
    }
    assert not unresolved, f"references to nothing declared: {sorted(unresolved)}"


def test_modules_are_pinned(config: Config) -> None:
    # A registry version resolves to a git tag, which can be moved; a commit cannot.
    for name, module in config.modules.items():
        assert re.fullmatch(
            r"git::https://github\.com/terraform-aws-modules/[\w-]+\.git\?ref=[0-9a-f]{40}",
            module["source"],
        ), f"module {name}: {module['source']} is not pinned to a commit"


# --- network --------------------------------------------------------------------------


def test_the_vpc_spans_two_zones_with_a_subnet_per_zone_and_tier(config: Config) -> None:
    zones = config.default("availability_zones")
    assert len(zones) == len(set(zones)) == 2
    conditions = [v["condition"] for v in config.variables["availability_zones"]["validation"]]
    assert any("length(var.availability_zones) == 2" in c for c in conditions)
    assert _expression(config.locals["azs"]) == "var.availability_zones"

    vpc = config.modules["vpc"]
    assert "terraform-aws-vpc" in vpc["source"]
    assert _expression(vpc["azs"]) == "local.azs"
    vpc_cidr = config.default("vpc_cidr")
    tiers = {
        tier: _subnets(vpc[tier], len(zones), vpc_cidr)
        for tier in ("public_subnets", "private_subnets", "database_subnets")
    }
    subnets = [subnet for tier in tiers.values() for subnet in tier]
    assert all(subnet.subnet_of(ipaddress.IPv4Network(vpc_cidr)) for subnet in subnets)
    for i, subnet in enumerate(subnets):
        for other in subnets[i + 1 :]:
            assert not subnet.overlaps(other), f"{subnet} overlaps {other}"
    # One NAT gateway per zone: a zone outage must not take the other zone's egress.
    assert vpc["one_nat_gateway_per_az"] is True
    assert vpc["single_nat_gateway"] is False


# --- EKS ------------------------------------------------------------------------------


def _node_groups(config: Config) -> dict[str, Any]:
    return config.modules["eks"]["eks_managed_node_groups"]  # type: ignore[no-any-return]


def _gpu_groups(config: Config) -> dict[str, Any]:
    return {name: g for name, g in _node_groups(config).items() if "NVIDIA" in g["ami_type"]}


def test_the_cpu_node_group_spans_both_zones(config: Config) -> None:
    cpu = _node_groups(config)["cpu"]
    assert _expression(cpu["subnet_ids"]) == "module.vpc.private_subnets"
    assert config.default("cpu_nodes")["min"] >= 2


def test_the_gpu_node_groups_cover_both_zones_with_efa(config: Config) -> None:
    groups = _gpu_groups(config)
    zones: list[int] = []
    for name, group in groups.items():
        # EFA needs a cluster placement group, which lives in one zone: one group per zone.
        assert group["enable_efa_support"] is True, name
        assert _expression(group["instance_types"]) == "var.gpu_instance_types", name
        [subnet] = group["subnet_ids"]
        match = re.fullmatch(r"module\.vpc\.private_subnets\[(\d)\]", _expression(subnet))
        assert match, f"{name}: {subnet}"
        zones.append(int(match.group(1)))
    assert sorted(zones) == list(range(len(config.default("availability_zones"))))
    assert config.default("gpu_nodes_per_zone")["min"] >= 1

    assert set(config.default("gpu_instance_types")) <= EFA_GPU_TYPES
    validation = config.variables["gpu_instance_types"]["validation"][0]["condition"]
    allowed = set(re.findall(r'"([a-z0-9]+\.[a-z0-9]+)"', validation))
    assert allowed
    assert allowed <= EFA_GPU_TYPES


def test_gpu_nodes_are_labelled_and_tainted_as_the_outputs_say(config: Config) -> None:
    label = config.outputs["gpu_node_label"]["value"]
    taint = config.outputs["gpu_node_taint"]["value"]
    assert taint == {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
    for name, group in _gpu_groups(config).items():
        assert label.items() <= group["labels"].items(), name
        assert list(group["taints"].values()) == [
            {"key": taint["key"], "value": taint["value"], "effect": "NO_SCHEDULE"}
        ], name
    # Nothing else lands on the CPU nodes' label.
    assert _node_groups(config)["cpu"]["labels"] != label


# --- datastores -----------------------------------------------------------------------


def test_postgres_is_multi_az_encrypted_backed_up_and_protected(config: Config) -> None:
    db = config.resource("aws_db_instance", "postgres")
    assert db["engine"] == "postgres"
    assert db["multi_az"] is True
    assert db["storage_encrypted"] is True
    assert _expression(db["kms_key_id"]) == "aws_kms_key.data.arn"
    assert db["deletion_protection"] is True
    assert db["skip_final_snapshot"] is False
    assert db["publicly_accessible"] is False
    assert db["performance_insights_enabled"] is True
    assert _expression(db["backup_retention_period"]) == "var.postgres_backup_retention_days"
    assert config.default("postgres_backup_retention_days") >= 7
    [validation] = config.variables["postgres_backup_retention_days"]["validation"]
    assert "var.postgres_backup_retention_days >= 7" in validation["condition"]

    group_name = re.fullmatch(
        r"aws_db_parameter_group\.(\w+)\.name", _expression(db["parameter_group_name"])
    )
    assert group_name, db["parameter_group_name"]
    group = config.resource("aws_db_parameter_group", group_name.group(1))
    parameters = {p["name"]: p["value"] for p in group["parameter"]}
    assert parameters["rds.force_ssl"] == "1"
    # Slow statements are logged, their bind parameters (prompts, replies) never.
    assert parameters["log_parameter_max_length"] == "0"


def test_redis_fails_over_between_zones_over_tls_with_auth(config: Config) -> None:
    redis = config.resource("aws_elasticache_replication_group", "redis")
    assert redis["multi_az_enabled"] is True
    assert redis["automatic_failover_enabled"] is True
    assert redis["transit_encryption_enabled"] is True
    assert redis["transit_encryption_mode"] == "required"
    assert redis["at_rest_encryption_enabled"] is True
    assert _expression(redis["auth_token"]) == "random_password.redis.result"
    token = config.resource("random_password", "redis")
    assert 16 <= token["length"] <= 128
    # Primary and replica in the two zones.
    assert redis["num_cache_clusters"] >= 2
    assert _expression(redis["preferred_cache_cluster_azs"]) == "local.azs"


def test_rabbitmq_is_a_private_three_node_cluster(config: Config) -> None:
    broker = config.resource("aws_mq_broker", "rabbitmq")
    assert broker["engine_type"] == "RabbitMQ"
    assert broker["deployment_mode"] == "CLUSTER_MULTI_AZ"
    assert broker["publicly_accessible"] is False
    assert _expression(broker["subnet_ids"]) == "module.vpc.database_subnets"


# --- observability --------------------------------------------------------------------


def test_managed_prometheus_evaluates_the_tested_rules_and_alerts_to_sns(config: Config) -> None:
    assert "axon" in config.of_kind("aws_prometheus_workspace")
    namespace = config.resource("aws_prometheus_rule_group_namespace", "axon")
    match = re.fullmatch(r'file\("\$\{path\.module\}/(.+)"\)', _expression(namespace["data"]))
    assert match, namespace["data"]
    rules = (TERRAFORM / match.group(1)).resolve()
    assert rules == ROOT / "deploy" / "prometheus" / "axon-rules.yml"
    assert yaml.safe_load(rules.read_text())["groups"]

    definition = config.resource("aws_prometheus_alert_manager_definition", "axon")["definition"]
    body = re.fullmatch(r"<<-EOT\n(.*)\n\s*EOT", definition, re.S)
    assert body, definition
    alertmanager = yaml.safe_load(
        yaml.safe_load(textwrap.dedent(body.group(1)))["alertmanager_config"]
    )
    receiver = alertmanager["route"]["receiver"]
    [target] = [r for r in alertmanager["receivers"] if r["name"] == receiver]
    assert target["sns_configs"][0]["topic_arn"] == "${aws_sns_topic.alerts.arn}"


def test_opensearch_spreads_over_two_zones_encrypted_and_private(config: Config) -> None:
    domain = config.resource("aws_opensearch_domain", "logs")
    [cluster] = domain["cluster_config"]
    assert cluster["zone_awareness_enabled"] is True
    assert cluster["zone_awareness_config"][0]["availability_zone_count"] == 2
    data_nodes = config.default("opensearch_data_nodes")
    assert data_nodes >= 2
    assert data_nodes % 2 == 0
    assert domain["encrypt_at_rest"][0]["enabled"] is True
    assert domain["node_to_node_encryption"][0]["enabled"] is True
    assert domain["domain_endpoint_options"][0]["enforce_https"] is True
    [security] = domain["advanced_security_options"]
    assert security["enabled"] is True
    assert security["anonymous_auth_enabled"] is False
    assert _expression(domain["vpc_options"][0]["subnet_ids"]) == "module.vpc.database_subnets"


def test_grafana_reads_metrics_and_logs(config: Config) -> None:
    workspace = config.resource("aws_grafana_workspace", "axon")
    assert {"PROMETHEUS", "AMAZON_OPENSEARCH_SERVICE"} <= set(workspace["data_sources"])


# --- security groups ------------------------------------------------------------------

# Who may reach each store: security groups for pods per role (security_groups.tf).
ADMITTED = {
    "postgres": {"gateway_pods", "session_manager_pods"},
    "redis": {"gateway_pods", "session_manager_pods", "worker_pods"},
    "rabbitmq": {"session_manager_pods", "worker_pods", "keda_pods"},
    "opensearch": {"module.eks.node_security_group_id", "grafana"},
}
PORTS = {"postgres": 5432, "redis": 6379, "rabbitmq": 5671, "opensearch": 443}


def test_each_store_admits_only_the_roles_that_use_it(config: Config) -> None:
    assert not config.of_kind("aws_security_group_rule"), "rules belong in aws_vpc_* resources"
    for name, group in config.of_kind("aws_security_group").items():
        assert not {"ingress", "egress"} & set(group), f"{name}: inline rules"

    admitted: dict[str, set[str]] = {}
    for name, rule in config.of_kind("aws_vpc_security_group_ingress_rule").items():
        store = _security_group(rule["security_group_id"])
        assert set(rule) & {"cidr_ipv4", "cidr_ipv6", "prefix_list_id"} == set(), name
        assert rule["from_port"] == rule["to_port"] == PORTS[store], name
        admitted.setdefault(store, set()).add(_security_group(rule["referenced_security_group_id"]))
    assert admitted == ADMITTED

    # Each store sits behind its own group and no other.
    attached = {
        "postgres": config.resource("aws_db_instance", "postgres")["vpc_security_group_ids"],
        "redis": config.resource("aws_elasticache_replication_group", "redis")[
            "security_group_ids"
        ],
        "rabbitmq": config.resource("aws_mq_broker", "rabbitmq")["security_groups"],
        "opensearch": config.resource("aws_opensearch_domain", "logs")["vpc_options"][0][
            "security_group_ids"
        ],
    }
    for store, groups in attached.items():
        assert [_security_group(g) for g in groups] == [store]


def test_pod_security_groups_are_output_for_the_overlay(config: Config) -> None:
    value = config.outputs["pod_security_group_ids"]["value"]
    roles = {_security_group(v) for v in value.values()}
    admitted_roles = {source for sources in ADMITTED.values() for source in sources}
    assert roles == {r for r in admitted_roles if r.endswith("_pods")}


# --- outputs and the aws overlay ------------------------------------------------------


def _named_outputs(text: str) -> set[str]:
    """Output names an overlay file cites: ``output NAME`` / ``outputs NAME, NAME`` in its
    comments, and the first word of each indented line of a comment block introduced as
    Terraform's outputs (``NAME -> where it goes``)."""
    names: set[str] = set()
    for listed in re.findall(r"\boutputs?\s+([a-z][a-z0-9_]+(?:,\s*[a-z][a-z0-9_]+)*)", text):
        names.update(name.strip() for name in listed.split(","))
    in_block = False
    for line in text.splitlines():
        if "Terraform's outputs" in line:
            in_block = True
        elif in_block and (entry := re.match(r"#\s{3,}(\S+)", line)):
            names.add(entry.group(1))
        else:
            in_block = False
    return {name for name in names if re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+", name)}


def test_every_output_the_aws_overlay_cites_exists(config: Config) -> None:
    cited = {
        name: path.name
        for path in sorted(AWS_OVERLAY.glob("*.yaml"))
        for name in _named_outputs(path.read_text())
    }
    assert cited, f"{AWS_OVERLAY} names no Terraform output"
    unknown = {name: where for name, where in cited.items() if name not in config.outputs}
    assert not unknown, f"outputs cited in overlays/aws but not in outputs.tf: {unknown}"


def _runtime_secret_properties(config: Config) -> set[str]:
    version = config.resource("aws_secretsmanager_secret_version", "runtime")
    body = _expression(version["secret_string"])
    assert body.startswith("jsonencode({"), body
    # Top-level keys only: the values' own text never has "word = " in it.
    return set(re.findall(r"(?:\{|, )(\w+) = ", body))


def test_the_overlay_reads_the_runtime_secret_terraform_writes(config: Config) -> None:
    from support.kustomize import build

    secret_name = config.resource("aws_secretsmanager_secret", "runtime")["name"]
    expected_key = secret_name.replace("${var.name}", config.default("name"))
    properties = _runtime_secret_properties(config)
    external = [o for o in build(AWS_OVERLAY) if o["kind"] == "ExternalSecret"]
    refs = [entry["remoteRef"] for o in external for entry in o["spec"].get("data", [])]
    assert refs, "the aws overlay has no ExternalSecret data"
    for ref in refs:
        if ref["key"] == expected_key:
            assert ref["property"] in properties, ref
    assert any(ref["key"] == expected_key for ref in refs), (expected_key, refs)


def test_the_overlay_puts_workers_on_the_gpu_nodes(config: Config) -> None:
    from support.kustomize import build

    label = config.outputs["gpu_node_label"]["value"]
    taint = config.outputs["gpu_node_taint"]["value"]
    workers = [
        o
        for o in build(AWS_OVERLAY)
        if o["kind"] == "Deployment"
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "worker"
    ]
    assert workers, "the aws overlay has no worker Deployment"
    for worker in workers:
        pod = worker["spec"]["template"]["spec"]
        assert label.items() <= pod.get("nodeSelector", {}).items(), worker["metadata"]["name"]
        assert any(
            t.get("key") == taint["key"]
            and t.get("effect") == taint["effect"]
            and (t.get("operator") == "Exists" or t.get("value") == taint["value"])
            for t in pod.get("tolerations", [])
        ), worker["metadata"]["name"]
