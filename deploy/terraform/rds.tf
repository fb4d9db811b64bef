# PostgreSQL, Axon's durable store: sessions, messages, replies, API keys.
#
# RDS Multi-AZ keeps a synchronous standby in the other zone. On a failure (instance, zone
# or storage) RDS promotes the standby and moves the endpoint's DNS name to it, typically
# within one to two minutes; Axon's pool reconnects to the same name and retries its
# idempotent writes, so the single-host DSN in the runtime secret (secrets.tf) is all it
# needs.

resource "random_password" "postgres" {
  # Letters and digits only: the password goes into a URL unescaped.
  length  = 48
  special = false
}

resource "aws_db_parameter_group" "postgres" {
  name_prefix = "${var.name}-postgres${var.postgres_version}-"
  family      = "postgres${var.postgres_version}"
  description = "Axon PostgreSQL: TLS only, slow statements logged without their parameters"

  # Connections without TLS are refused.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Statements slower than a second are logged (where an AxonStoreErrors or slow-turn
  # investigation in docs/runbooks.md looks first) ...
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  # ... but never their bind parameters: those are the users' prompts and replies, which
  # Axon keeps out of every log.
  parameter {
    name  = "log_parameter_max_length"
    value = "0"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  parameter {
    name  = "log_lock_waits"
    value = "1"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Created before the instance so its logs are encrypted and expire; RDS would otherwise
# create the group itself, unencrypted and kept forever.
resource "aws_cloudwatch_log_group" "postgres" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${var.name}-postgres/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_db_instance" "postgres" {
  identifier = "${var.name}-postgres"

  engine                      = "postgres"
  engine_version              = var.postgres_version
  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false
  instance_class              = var.postgres_instance_class
  parameter_group_name        = aws_db_parameter_group.postgres.name
  ca_cert_identifier          = "rds-ca-rsa2048-g1"

  db_name  = "axon"
  username = "axon"
  password = random_password.postgres.result
  port     = 5432

  # A synchronous standby in the other zone, promoted automatically.
  multi_az               = true
  db_subnet_group_name   = module.vpc.database_subnet_group_name
  vpc_security_group_ids = [aws_security_group.postgres.id]
  publicly_accessible    = false

  storage_type          = "gp3"
  allocated_storage     = var.postgres_storage_gib.initial
  max_allocated_storage = var.postgres_storage_gib.max
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.data.arn

  # IAM authentication is available beside the password (for people and tools); Axon
  # itself connects with the password from Secrets Manager.
  iam_database_authentication_enabled = true

  # Daily snapshots and point-in-time recovery over the retention window; the backups
  # outlive the instance, and deleting it takes a final snapshot.
  backup_retention_period   = var.postgres_backup_retention_days
  backup_window             = "03:00-04:00"
  maintenance_window        = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-postgres-final"

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.data.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 30
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]

  depends_on = [aws_cloudwatch_log_group.postgres]
}

# Enhanced Monitoring: OS-level metrics (CPU steal, memory, I/O) every 30 s.
resource "aws_iam_role" "rds_monitoring" {
  name_prefix        = "${var.name}-rds-monitoring-"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_trust.json
}

data "aws_iam_policy_document" "rds_monitoring_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
