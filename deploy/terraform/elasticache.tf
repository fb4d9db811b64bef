# Redis: the reply streams, the hot session cache, leases and the rate-limit counters.
#
# One shard (cluster mode off): Axon's stream and consumer-group commands and its rate-limit
# scripts touch several keys at once, which a sharded cluster would split. The primary and
# a replica sit in different zones; on the primary's failure (or its zone's) ElastiCache
# promotes the replica and repoints the primary endpoint, usually in well under a minute.
# Axon reconnects to the same name and its readers resume each stream from the last entry
# id they saw.

resource "random_password" "redis" {
  # ElastiCache AUTH tokens: 16 to 128 printable characters without @, " or /; letters
  # and digits also keep the URL below valid without escaping.
  length  = 64
  special = false
}

resource "aws_elasticache_subnet_group" "redis" {
  name        = "${var.name}-redis"
  description = "Axon Redis: the database subnets of both zones"
  subnet_ids  = module.vpc.database_subnets
}

resource "aws_cloudwatch_log_group" "redis" {
  for_each = toset(["slow-log", "engine-log"])

  name              = "/aws/elasticache/${var.name}-redis/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = "${var.name}-redis"
  description          = "Axon reply streams, session cache, leases and rate limits"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  parameter_group_name = "default.redis7"
  port                 = 6379

  # A primary and one replica, in different zones (the first zone holds the primary).
  num_cache_clusters          = 2
  preferred_cache_cluster_azs = local.azs
  subnet_group_name           = aws_elasticache_subnet_group.redis.name
  security_group_ids          = [aws_security_group.redis.id]

  multi_az_enabled           = true
  automatic_failover_enabled = true

  # TLS on every connection (rediss://) and a password on every command.
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = random_password.redis.result
  auth_token_update_strategy = "ROTATE"

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.data.arn

  snapshot_retention_limit   = 7
  snapshot_window            = "02:00-03:00"
  maintenance_window         = "sun:05:30-sun:06:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis["slow-log"].name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis["engine-log"].name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "engine-log"
  }
}
