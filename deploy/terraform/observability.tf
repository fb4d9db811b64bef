# Metrics, logs and dashboards. None of it is on a request's path: while any of it is down
# Axon keeps serving, Prometheus buffers its remote writes and Fluent Bit keeps log chunks
# on disk until the service is back.

################################################################################
# Amazon Managed Prometheus: the in-cluster Prometheus (agent) scrapes the PodMonitors of
# the Kustomize base and remote-writes here; the recording and alerting rules of
# deploy/prometheus/axon-rules.yml are evaluated here, and alerts go to an SNS topic.
################################################################################

resource "aws_cloudwatch_log_group" "prometheus" {
  name              = "/aws/prometheus/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_prometheus_workspace" "axon" {
  alias       = var.name
  kms_key_arn = aws_kms_key.data.arn

  # Rule evaluation and alert manager errors (a rule AMP rejects, a failed notification).
  logging_configuration {
    log_group_arn = "${aws_cloudwatch_log_group.prometheus.arn}:*"
  }
}

# The same file promtool tests (deploy/prometheus/tests/): what is tested is what runs.
resource "aws_prometheus_rule_group_namespace" "axon" {
  name         = "axon"
  workspace_id = aws_prometheus_workspace.axon.id
  data         = file("${path.module}/../prometheus/axon-rules.yml")
}

resource "aws_sns_topic" "alerts" {
  name              = "${var.name}-alerts"
  kms_master_key_id = aws_kms_key.logs.id
}

resource "aws_sns_topic_policy" "alerts" {
  arn    = aws_sns_topic.alerts.arn
  policy = data.aws_iam_policy_document.alerts_topic.json
}

data "aws_iam_policy_document" "alerts_topic" {
  statement {
    sid       = "ManagedPrometheusPublishes"
    actions   = ["sns:Publish", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.alerts.arn]

    principals {
      type        = "Service"
      identifiers = ["aps.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_prometheus_workspace.axon.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Every alert to the topic (subscribe the on-call tool to it), grouped as the rules label
# them; `severity` (page or ticket) travels as a message attribute for filtering.
resource "aws_prometheus_alert_manager_definition" "axon" {
  workspace_id = aws_prometheus_workspace.axon.id
  definition   = <<-EOT
    alertmanager_config: |
      route:
        receiver: sns
        group_by: [alertname, severity, model]
        group_wait: 30s
        group_interval: 5m
        repeat_interval: 4h
      receivers:
        - name: sns
          sns_configs:
            - topic_arn: ${aws_sns_topic.alerts.arn}
              sigv4:
                region: ${var.region}
              attributes:
                severity: '{{ .CommonLabels.severity }}'
  EOT

  depends_on = [aws_sns_topic_policy.alerts]
}

# The in-cluster Prometheus signs its remote writes with this role (SigV4), which may
# write to and query this workspace only.
module "prometheus_pod_identity" {
  # terraform-aws-modules/eks-pod-identity/aws 2.8.1, pinned to its release commit.
  source = "git::https://github.com/terraform-aws-modules/terraform-aws-eks-pod-identity.git?ref=2cbd87e243fcbf74385331dcf983e273eeb7aa36"

  name = "${var.name}-prometheus"

  attach_amazon_managed_service_prometheus_policy  = true
  amazon_managed_service_prometheus_workspace_arns = [aws_prometheus_workspace.axon.arn]

  associations = {
    prometheus = {
      cluster_name    = module.eks.cluster_name
      namespace       = var.service_accounts.prometheus.namespace
      service_account = var.service_accounts.prometheus.name
    }
  }
}

################################################################################
# OpenSearch Service: Axon's JSON logs, shipped by deploy/logging/fluent-bit-opensearch.yaml
# into daily axon-logs-* indices.
#
# Zone awareness over the two zones puts each shard's replica in the other zone from its
# primary. The three dedicated masters cannot split evenly over two zones: losing the
# zone that holds two of them stops indexing (searches of what is indexed go on) until it
# returns, while Fluent Bit holds the logs on disk. A third zone removes that gap.
#
# The first VPC domain of an account needs OpenSearch's service-linked role
# (`aws iam create-service-linked-role --aws-service-name opensearchservice.amazonaws.com`).
################################################################################

resource "random_password" "opensearch" {
  # Fine-grained access control asks for upper and lower case, a digit and a symbol.
  length           = 40
  special          = true
  override_special = "-_.+!*"
  min_upper        = 2
  min_lower        = 2
  min_numeric      = 2
  min_special      = 2
}

resource "aws_cloudwatch_log_group" "opensearch" {
  for_each = toset(["INDEX_SLOW_LOGS", "SEARCH_SLOW_LOGS", "ES_APPLICATION_LOGS", "AUDIT_LOGS"])

  name              = "/aws/opensearch/${var.name}-logs/${lower(each.key)}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_cloudwatch_log_resource_policy" "opensearch" {
  policy_name     = "${var.name}-opensearch-logs"
  policy_document = data.aws_iam_policy_document.opensearch_logs.json
}

data "aws_iam_policy_document" "opensearch_logs" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for group in aws_cloudwatch_log_group.opensearch : "${group.arn}:*"]

    principals {
      type        = "Service"
      identifiers = ["es.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_opensearch_domain" "logs" {
  domain_name    = "${var.name}-logs"
  engine_version = var.opensearch_engine_version

  cluster_config {
    instance_type  = var.opensearch_instance_type
    instance_count = var.opensearch_data_nodes

    zone_awareness_enabled = true
    zone_awareness_config {
      availability_zone_count = 2
    }

    dedicated_master_enabled = true
    dedicated_master_type    = var.opensearch_master_instance_type
    dedicated_master_count   = 3
  }

  # One subnet per zone; the domain is reachable from inside the VPC only.
  vpc_options {
    subnet_ids         = module.vpc.database_subnets
    security_group_ids = [aws_security_group.opensearch.id]
  }

  ebs_options {
    ebs_enabled = true
    volume_type = "gp3"
    volume_size = var.opensearch_volume_gib
  }

  encrypt_at_rest {
    enabled    = true
    kms_key_id = aws_kms_key.data.arn
  }

  node_to_node_encryption {
    enabled = true
  }

  domain_endpoint_options {
    enforce_https       = true
    tls_security_policy = "Policy-Min-TLS-1-2-PFS-2023-10"
  }

  # Fine-grained access control: every request authenticates as an OpenSearch user (Fluent
  # Bit with the login in the secret below) or a mapped IAM role (Grafana's), and its
  # permissions come from OpenSearch roles.
  advanced_security_options {
    enabled                        = true
    anonymous_auth_enabled         = false
    internal_user_database_enabled = true

    master_user_options {
      master_user_name     = "axon-admin"
      master_user_password = random_password.opensearch.result
    }
  }

  access_policies = data.aws_iam_policy_document.opensearch_access.json

  log_publishing_options {
    enabled                  = true
    log_type                 = "AUDIT_LOGS"
    cloudwatch_log_group_arn = aws_cloudwatch_log_group.opensearch["AUDIT_LOGS"].arn
  }

  log_publishing_options {
    enabled                  = true
    log_type                 = "ES_APPLICATION_LOGS"
    cloudwatch_log_group_arn = aws_cloudwatch_log_group.opensearch["ES_APPLICATION_LOGS"].arn
  }

  log_publishing_options {
    enabled                  = true
    log_type                 = "INDEX_SLOW_LOGS"
    cloudwatch_log_group_arn = aws_cloudwatch_log_group.opensearch["INDEX_SLOW_LOGS"].arn
  }

  log_publishing_options {
    enabled                  = true
    log_type                 = "SEARCH_SLOW_LOGS"
    cloudwatch_log_group_arn = aws_cloudwatch_log_group.opensearch["SEARCH_SLOW_LOGS"].arn
  }

  depends_on = [aws_cloudwatch_log_resource_policy.opensearch]
}

data "aws_iam_policy_document" "opensearch_access" {
  # The domain policy admits any caller that reaches the VPC endpoint (through its security
  # group) to the HTTP API; fine-grained access control then authenticates and authorises
  # each request. A policy naming IAM principals would refuse Fluent Bit's basic-auth
  # (unsigned) requests before fine-grained access control sees them.
  #checkov:skip=CKV_AWS_283:a VPC-only domain with fine-grained access control, which authenticates every request; an IAM-only policy would refuse Fluent Bit's basic auth
  statement {
    actions   = ["es:ESHttp*"]
    resources = ["arn:${local.partition}:es:${var.region}:${local.account_id}:domain/${var.name}-logs/*"]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
  }
}

# The login deploy/logging/fluent-bit-opensearch.yaml reads (OPENSEARCH_HOST, _PORT, _USER,
# _PASSWORD). It starts as the master user; once a user limited to writing axon-logs-*
# exists in OpenSearch, store that one here instead.
resource "aws_secretsmanager_secret" "opensearch" {
  #checkov:skip=CKV2_AWS_57:the password lives in OpenSearch's internal user database, which Secrets Manager rotation cannot change; rotate it in OpenSearch, then here
  name                    = "${var.name}/opensearch"
  description             = "Axon log search login for Fluent Bit"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "opensearch" {
  secret_id = aws_secretsmanager_secret.opensearch.id
  secret_string = jsonencode({
    host     = aws_opensearch_domain.logs.endpoint
    port     = 443
    username = "axon-admin"
    password = random_password.opensearch.result
  })
}

################################################################################
# Managed Grafana: the dashboards of deploy/grafana over Managed Prometheus (metrics) and
# OpenSearch (logs). Users sign in through IAM Identity Center.
################################################################################

resource "aws_grafana_workspace" "axon" {
  name        = var.name
  description = "Axon dashboards: metrics from Managed Prometheus, logs from OpenSearch"

  account_access_type      = "CURRENT_ACCOUNT"
  authentication_providers = ["AWS_SSO"]
  permission_type          = "CUSTOMER_MANAGED"
  role_arn                 = aws_iam_role.grafana.arn
  data_sources             = ["PROMETHEUS", "AMAZON_OPENSEARCH_SERVICE"]
  grafana_version          = "10.4"

  # In the VPC, to reach the VPC-only OpenSearch domain; Managed Prometheus through the
  # NAT gateways.
  vpc_configuration {
    subnet_ids         = module.vpc.private_subnets
    security_group_ids = [aws_security_group.grafana.id]
  }
}

resource "aws_iam_role" "grafana" {
  name_prefix        = "${var.name}-grafana-"
  assume_role_policy = data.aws_iam_policy_document.grafana_trust.json
}

data "aws_iam_policy_document" "grafana_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["grafana.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Reads this workspace's metrics and this domain's indices, nothing else. In OpenSearch,
# map this role to a read-only role (fine-grained access control's role mapping).
resource "aws_iam_role_policy" "grafana" {
  name   = "read-axon-metrics-and-logs"
  role   = aws_iam_role.grafana.id
  policy = data.aws_iam_policy_document.grafana.json
}

data "aws_iam_policy_document" "grafana" {
  statement {
    sid       = "QueryMetrics"
    actions   = ["aps:QueryMetrics", "aps:GetSeries", "aps:GetLabels", "aps:GetMetricMetadata", "aps:DescribeWorkspace"]
    resources = [aws_prometheus_workspace.axon.arn]
  }

  statement {
    sid       = "SearchLogs"
    actions   = ["es:ESHttpGet", "es:ESHttpPost", "es:DescribeDomain"]
    resources = [aws_opensearch_domain.logs.arn, "${aws_opensearch_domain.logs.arn}/*"]
  }
}
