# What deploy/kubernetes/overlays/aws reads (`terraform -chdir=deploy/terraform output`);
# each description names where the value goes. Secrets are never outputs: the overlay
# reads them from Secrets Manager through its ExternalSecret.

output "region" {
  description = "AWS region: the ClusterSecretStore (Secrets Manager) the overlay's ExternalSecrets use, and `aws eks update-kubeconfig --region`."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster: `aws eks update-kubeconfig --name` before `kubectl apply -k deploy/kubernetes/overlays/aws`."
  value       = module.eks.cluster_name
}

output "availability_zones" {
  description = "The two zones every role is spread over (the overlay's topologySpreadConstraints key on topology.kubernetes.io/zone)."
  value       = local.azs
}

output "vpc_cidr_block" {
  description = "VPC range: AXON_LIMITS__TRUSTED_PROXIES in overlays/aws/kustomization.yaml and the ALB ipBlock in overlays/aws/network-policies.yaml (the ALB's addresses lie in the VPC)."
  value       = module.vpc.vpc_cidr_block
}

output "runtime_secret_name" {
  description = "Secrets Manager secret with store_url, redis_url, rabbitmq_url and admin_key (secrets.tf): `remoteRef.key` in overlays/aws/external-secret.yaml."
  value       = aws_secretsmanager_secret.runtime.name
}

output "runtime_secret_arn" {
  description = "ARN of the runtime secret (what the External Secrets Operator's role may read)."
  value       = aws_secretsmanager_secret.runtime.arn
}

output "rds_endpoint" {
  description = "PostgreSQL host (RDS Multi-AZ; the name follows a failover), inside store_url of the runtime secret."
  value       = aws_db_instance.postgres.address
}

output "rds_port" {
  description = "PostgreSQL port, inside store_url of the runtime secret; the egress port of deploy/kubernetes/base/network-policies.yaml."
  value       = aws_db_instance.postgres.port
}

output "redis_primary_endpoint" {
  description = "Redis primary host (follows a failover), inside redis_url of the runtime secret."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "redis_port" {
  description = "Redis port (TLS), inside redis_url of the runtime secret; the egress port of deploy/kubernetes/base/network-policies.yaml."
  value       = aws_elasticache_replication_group.redis.port
}

output "rabbitmq_amqps_endpoint" {
  description = "Amazon MQ AMQPS endpoint (amqps://HOST:5671), inside rabbitmq_url of the runtime secret (also KEDA's TriggerAuthentication host)."
  value       = aws_mq_broker.rabbitmq.instances[0].endpoints[0]
}

output "rabbitmq_console_url" {
  description = "RabbitMQ management console, for operators."
  value       = aws_mq_broker.rabbitmq.instances[0].console_url
}

output "gpu_node_label" {
  description = "Label of the GPU nodes: the workers' nodeSelector in overlays/aws/worker-gpu.yaml."
  value       = { "axon/node-pool" = "gpu" }
}

output "gpu_node_taint" {
  description = "Taint of the GPU nodes: the workers' toleration in overlays/aws/worker-gpu.yaml."
  value       = { key = "nvidia.com/gpu", value = "true", effect = "NoSchedule" }
}

output "pod_security_group_ids" {
  description = "Security groups for pods (security_groups.tf), one per role: the `securityGroups.groupIds` of the SecurityGroupPolicy objects in overlays/aws, each listed beside node_security_group_id. session_manager also covers the migration Job; keda is for the KEDA operator's pods."
  value = {
    gateway         = aws_security_group.gateway_pods.id
    session_manager = aws_security_group.session_manager_pods.id
    worker          = aws_security_group.worker_pods.id
    keda            = aws_security_group.keda_pods.id
  }
}

output "node_security_group_id" {
  description = "The EKS node security group: second entry of every SecurityGroupPolicy in overlays/aws, for cluster traffic (DNS, probes, pod to pod)."
  value       = module.eks.node_security_group_id
}

output "prometheus_remote_write_url" {
  description = "Managed Prometheus remote-write URL: `remote_write.url` (with `sigv4.region`) of the in-cluster Prometheus that reads the base's PodMonitors; its service account is bound to a write role by Pod Identity."
  value       = "${aws_prometheus_workspace.axon.prometheus_endpoint}api/v1/remote_write"
}

output "prometheus_query_url" {
  description = "Managed Prometheus query URL: the Prometheus data source of the Grafana workspace."
  value       = aws_prometheus_workspace.axon.prometheus_endpoint
}

output "opensearch_endpoint" {
  description = "OpenSearch host: OPENSEARCH_HOST of deploy/logging/fluent-bit-opensearch.yaml (port 443), and the OpenSearch data source of the Grafana workspace."
  value       = aws_opensearch_domain.logs.endpoint
}

output "opensearch_secret_name" {
  description = "Secrets Manager secret with the OpenSearch login Fluent Bit uses (host, port, username, password)."
  value       = aws_secretsmanager_secret.opensearch.name
}

output "grafana_url" {
  description = "Managed Grafana workspace, where the dashboards of deploy/grafana are imported."
  value       = "https://${aws_grafana_workspace.axon.endpoint}"
}

output "alerts_topic_arn" {
  description = "SNS topic every alert of deploy/prometheus/axon-rules.yml goes to: subscribe the on-call tool."
  value       = aws_sns_topic.alerts.arn
}
