# The runtime secret: everything secret Axon's roles read, as one Secrets Manager secret
# (JSON) that the aws overlay's ExternalSecret
# (deploy/kubernetes/overlays/aws/external-secret.yaml) copies into the `axon-secrets`
# Kubernetes Secret:
#
#   store_url     AXON_STORE__URL            PostgreSQL over TLS (asyncpg's ssl=require;
#                                            rds.force_ssl refuses anything else anyway)
#   redis_url     AXON_BACKENDS__REDIS_URL   TLS (rediss) with the AUTH token
#   rabbitmq_url  AXON_BACKENDS__RABBITMQ_URL  AMQP over TLS (amqps, port 5671)
#   admin_key     AXON_AUTH__ADMIN_KEY       key management over HTTP
#
# Each URL names the store's failover-following endpoint (RDS and ElastiCache move their
# DNS names to the promoted node; Amazon MQ's endpoint fronts all three nodes), so a
# failover changes nothing here.

resource "random_password" "admin_key" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "runtime" {
  #checkov:skip=CKV2_AWS_57:Axon reads these at start-up, so a rotation behind its back would fail new connections; rotate by replacing a random_password, applying, and rolling the pods
  name                    = "${var.name}/runtime"
  description             = "Axon runtime secrets: store, Redis and RabbitMQ URLs, admin key"
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "runtime" {
  secret_id = aws_secretsmanager_secret.runtime.id
  secret_string = jsonencode({
    store_url    = "postgresql+asyncpg://${aws_db_instance.postgres.username}:${random_password.postgres.result}@${aws_db_instance.postgres.address}:${aws_db_instance.postgres.port}/${aws_db_instance.postgres.db_name}?ssl=require"
    redis_url    = "rediss://:${random_password.redis.result}@${aws_elasticache_replication_group.redis.primary_endpoint_address}:${aws_elasticache_replication_group.redis.port}/0"
    rabbitmq_url = "${replace(aws_mq_broker.rabbitmq.instances[0].endpoints[0], "amqps://", "amqps://axon:${random_password.rabbitmq.result}@")}/"
    admin_key    = random_password.admin_key.result
  })
}
