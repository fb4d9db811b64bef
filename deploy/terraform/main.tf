# Axon on AWS, over two availability zones: what every other file shares (the zones, the
# names, the tags and the encryption keys).
#
#   network.tf          VPC: public, private and database subnets in both zones
#   eks.tf              EKS: a CPU node group over both zones, an EFA GPU node group per zone
#   rds.tf              PostgreSQL: RDS Multi-AZ
#   elasticache.tf      Redis: a replication group with a replica in the other zone
#   mq.tf               RabbitMQ: Amazon MQ, a three-node cluster
#   observability.tf    Amazon Managed Prometheus, OpenSearch Service, Managed Grafana
#   security_groups.tf  which pods may reach which store
#   secrets.tf          the runtime secret (store, Redis and RabbitMQ URLs, admin key)
#   outputs.tf          what deploy/kubernetes/overlays/aws reads
#
# Order: `terraform apply` here, then `kubectl apply -k deploy/kubernetes/overlays/aws`
# (docs/deploy.md).

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  # Two zones, named rather than looked up: a lookup's answer changes when a zone is added
  # or impaired, and the subnets built from it would be planned for replacement. Every
  # role, node group and store spans both, so losing one zone leaves a whole service in
  # the other.
  azs = var.availability_zones

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  tags = merge(var.tags, {
    "app.kubernetes.io/part-of" = "axon"
    "managed-by"                = "terraform"
  })
}

################################################################################
# Encryption keys: one for the data Axon stores (PostgreSQL, Redis, secrets, metrics,
# search indices), one for logs and alert notifications, whose services need their own
# grants in the key policy.
################################################################################

resource "aws_kms_key" "data" {
  description             = "${var.name}: data at rest (RDS, ElastiCache, Secrets Manager, Managed Prometheus, OpenSearch)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.data_key.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

data "aws_iam_policy_document" "data_key" {
  # A key policy's resource is always "*": the key it is attached to. The account's root
  # grant hands access control to IAM policies; the services that use this key (RDS,
  # ElastiCache, Secrets Manager, Managed Prometheus, OpenSearch) go through the callers'
  # IAM permissions and their own grants.
  #checkov:skip=CKV_AWS_109:key policy: "*" is the key itself, and the root grant is what delegates to IAM
  #checkov:skip=CKV_AWS_111:key policy: "*" is the key itself, and the root grant is what delegates to IAM
  #checkov:skip=CKV_AWS_356:key policy: "*" is the key itself, and the root grant is what delegates to IAM
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "logs" {
  description             = "${var.name}: CloudWatch log groups and the alert topic"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.logs_key.json
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.name}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

data "aws_iam_policy_document" "logs_key" {
  #checkov:skip=CKV_AWS_109:key policy: "*" is the key itself, and the root grant is what delegates to IAM
  #checkov:skip=CKV_AWS_111:key policy: "*" is the key itself, and the root grant is what delegates to IAM
  #checkov:skip=CKV_AWS_356:key policy: "*" is the key itself, and the root grant is what delegates to IAM
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts a log group's events with the key only when the key policy
  # names the service; the condition limits it to this account's log groups.
  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }

  # Managed Prometheus's alert manager publishes to the encrypted SNS topic
  # (observability.tf): publishing to an encrypted topic needs the key.
  statement {
    sid       = "ManagedPrometheusPublishesAlerts"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["aps.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
