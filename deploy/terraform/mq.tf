# RabbitMQ: the per-model job queues (quorum queues) the workers consume.
#
# CLUSTER_MULTI_AZ: three broker nodes spread over the region's zones behind one endpoint.
# Amazon MQ's active/standby deployment (ACTIVE_STANDBY_MULTI_AZ) exists for ActiveMQ
# only; for RabbitMQ the choice is a single instance or this cluster. Axon's queues are
# quorum queues, replicated by Raft over the three nodes: a job the broker has confirmed
# survives the loss of any one node (or zone), and clients reconnect through the same
# endpoint to a surviving node.

resource "random_password" "rabbitmq" {
  # Amazon MQ: 12 to 250 characters, no commas, colons or equals signs; letters and digits
  # keep the URL below valid without escaping.
  length  = 48
  special = false
}

resource "aws_mq_broker" "rabbitmq" {
  #checkov:skip=CKV_AWS_209:Amazon MQ for RabbitMQ encrypts at rest only with an AWS-owned key; customer-managed keys exist for ActiveMQ brokers alone
  #checkov:skip=CKV_AWS_197:audit logging exists for ActiveMQ brokers alone; the RabbitMQ broker's general log is on
  broker_name = "${var.name}-rabbitmq"

  engine_type                = "RabbitMQ"
  engine_version             = var.rabbitmq_engine_version
  auto_minor_version_upgrade = true
  host_instance_type         = var.rabbitmq_instance_type
  deployment_mode            = "CLUSTER_MULTI_AZ"

  # Private endpoints in both zones' database subnets; nothing outside the VPC connects.
  publicly_accessible = false
  subnet_ids          = module.vpc.database_subnets
  security_groups     = [aws_security_group.rabbitmq.id]

  # The one administrative user Amazon MQ creates with a RabbitMQ broker. Changing it
  # replaces the broker: further users are managed through the RabbitMQ management API.
  user {
    username = "axon"
    password = random_password.rabbitmq.result
  }

  logs {
    general = true
  }

  maintenance_window_start_time {
    day_of_week = "SUNDAY"
    time_of_day = "06:30"
    time_zone   = "UTC"
  }

  apply_immediately = false
}
