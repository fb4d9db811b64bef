# Who may reach which store. Each store admits only the roles that use it:
#
#   PostgreSQL  5432  session managers, gateways (which check API keys against the key
#                     table) and the `axon db upgrade` migration Job
#   Redis       6379  gateways, session managers, workers
#   RabbitMQ    5671  session managers, workers, and KEDA, which reads the queue depth the
#                     workers scale on
#   OpenSearch   443  every node (Fluent Bit runs as a DaemonSet) and Managed Grafana
#
# Why security groups for pods, not the node groups' security groups: every node carries the
# same node security group and gateways share the CPU nodes with session managers, so a
# node-level rule would let a gateway reach RabbitMQ, a worker reach PostgreSQL, and any pod
# on any node (an add-on, a debug shell) reach all three stores.
# With ENABLE_POD_ENI (eks.tf) a pod matched by a SecurityGroupPolicy gets a branch network
# interface carrying the security groups the policy names. The aws overlay gives each
# role's pods two: the role's group below, which is its identity at the stores, and the
# node security group, which keeps ordinary cluster traffic working (DNS, kubelet probes,
# gateway to session manager, load balancer to gateway). A role's group holds no rules of
# its own: the stores' groups name it as a source, and nothing else does.
#
# The stores' groups have no egress rules: they answer connections, they never open them.

################################################################################
# Pod identities (attached by the aws overlay's SecurityGroupPolicy objects)
################################################################################

resource "aws_security_group" "gateway_pods" {
  #checkov:skip=CKV2_AWS_5:attached to gateway pods by a SecurityGroupPolicy in deploy/kubernetes/overlays/aws, not by Terraform
  name_prefix = "${var.name}-gateway-pods-"
  description = "Axon gateway pods: identity admitted by PostgreSQL and Redis"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-gateway-pods"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "session_manager_pods" {
  #checkov:skip=CKV2_AWS_5:attached to session-manager and migration pods by a SecurityGroupPolicy in deploy/kubernetes/overlays/aws, not by Terraform
  name_prefix = "${var.name}-session-manager-pods-"
  description = "Axon session-manager and migration pods: identity admitted by PostgreSQL, Redis and RabbitMQ"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-session-manager-pods"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "worker_pods" {
  #checkov:skip=CKV2_AWS_5:attached to worker pods by a SecurityGroupPolicy in deploy/kubernetes/overlays/aws, not by Terraform
  name_prefix = "${var.name}-worker-pods-"
  description = "Axon worker pods: identity admitted by Redis and RabbitMQ"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-worker-pods"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "keda_pods" {
  #checkov:skip=CKV2_AWS_5:attached to the KEDA operator's pods by a SecurityGroupPolicy in deploy/kubernetes/overlays/aws, not by Terraform
  name_prefix = "${var.name}-keda-pods-"
  description = "KEDA operator pods: identity admitted by RabbitMQ to read queue depth"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-keda-pods"
  }

  lifecycle {
    create_before_destroy = true
  }
}

################################################################################
# PostgreSQL
################################################################################

resource "aws_security_group" "postgres" {
  name_prefix = "${var.name}-postgres-"
  description = "Axon PostgreSQL (RDS): session managers, gateways and migrations"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-postgres"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "postgres_from_gateway" {
  security_group_id            = aws_security_group.postgres.id
  referenced_security_group_id = aws_security_group.gateway_pods.id
  description                  = "PostgreSQL from gateway pods: API keys, checked at the edge"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_ingress_rule" "postgres_from_session_manager" {
  security_group_id            = aws_security_group.postgres.id
  referenced_security_group_id = aws_security_group.session_manager_pods.id
  description                  = "PostgreSQL from session-manager and migration pods"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

################################################################################
# Redis
################################################################################

resource "aws_security_group" "redis" {
  name_prefix = "${var.name}-redis-"
  description = "Axon Redis (ElastiCache): gateways, session managers and workers"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-redis"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_gateway" {
  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = aws_security_group.gateway_pods.id
  description                  = "Redis (TLS) from gateway pods: rate limits and stream counts"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_session_manager" {
  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = aws_security_group.session_manager_pods.id
  description                  = "Redis (TLS) from session-manager pods: reply streams and session cache"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_worker" {
  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = aws_security_group.worker_pods.id
  description                  = "Redis (TLS) from worker pods: reply streams"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

################################################################################
# RabbitMQ
################################################################################

resource "aws_security_group" "rabbitmq" {
  name_prefix = "${var.name}-rabbitmq-"
  description = "Axon RabbitMQ (Amazon MQ): session managers, workers and KEDA"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-rabbitmq"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "rabbitmq_from_session_manager" {
  security_group_id            = aws_security_group.rabbitmq.id
  referenced_security_group_id = aws_security_group.session_manager_pods.id
  description                  = "AMQPS from session-manager pods: publishing jobs, reading queue depth"
  ip_protocol                  = "tcp"
  from_port                    = 5671
  to_port                      = 5671
}

resource "aws_vpc_security_group_ingress_rule" "rabbitmq_from_worker" {
  security_group_id            = aws_security_group.rabbitmq.id
  referenced_security_group_id = aws_security_group.worker_pods.id
  description                  = "AMQPS from worker pods: consuming jobs"
  ip_protocol                  = "tcp"
  from_port                    = 5671
  to_port                      = 5671
}

resource "aws_vpc_security_group_ingress_rule" "rabbitmq_from_keda" {
  security_group_id            = aws_security_group.rabbitmq.id
  referenced_security_group_id = aws_security_group.keda_pods.id
  description                  = "AMQPS from the KEDA operator: the queue depth workers scale on"
  ip_protocol                  = "tcp"
  from_port                    = 5671
  to_port                      = 5671
}

################################################################################
# OpenSearch and Grafana
################################################################################

resource "aws_security_group" "opensearch" {
  name_prefix = "${var.name}-opensearch-"
  description = "Axon log search (OpenSearch): Fluent Bit on every node, and Managed Grafana"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-opensearch"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "opensearch_from_nodes" {
  security_group_id            = aws_security_group.opensearch.id
  referenced_security_group_id = module.eks.node_security_group_id
  description                  = "HTTPS from the nodes: the Fluent Bit DaemonSet ships every pod's logs"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_ingress_rule" "opensearch_from_grafana" {
  security_group_id            = aws_security_group.opensearch.id
  referenced_security_group_id = aws_security_group.grafana.id
  description                  = "HTTPS from Managed Grafana: log panels and searches"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_security_group" "grafana" {
  name_prefix = "${var.name}-grafana-"
  description = "Managed Grafana's network interfaces in the VPC"
  vpc_id      = module.vpc.vpc_id

  tags = {
    Name = "${var.name}-grafana"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "grafana_to_opensearch" {
  security_group_id            = aws_security_group.grafana.id
  referenced_security_group_id = aws_security_group.opensearch.id
  description                  = "HTTPS to OpenSearch inside the VPC"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_egress_rule" "grafana_to_aws_apis" {
  security_group_id = aws_security_group.grafana.id
  cidr_ipv4         = "0.0.0.0/0"
  description       = "HTTPS to the Managed Prometheus and CloudWatch APIs, through the NAT gateways"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}
