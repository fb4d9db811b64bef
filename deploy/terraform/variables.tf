# Inputs. The defaults describe a small production deployment; sizes scale with
# docs/capacity.md, zones and instance types depend on what the region offers.

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix of every resource (and the EKS cluster's name)."
  type        = string
  default     = "axon"

  validation {
    # OpenSearch domain names are the tightest limit: 28 characters, lower case, starting
    # with a letter; "-logs" is appended.
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}$", var.name))
    error_message = "name: 2 to 23 characters, lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "availability_zones" {
  description = "The two zones to run in, in the region. Pick two that offer the GPU instance type: `aws ec2 describe-instance-type-offerings --location-type availability-zone --filters Name=instance-type,Values=g6e.12xlarge`."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b"]

  validation {
    condition     = length(var.availability_zones) == 2 && length(distinct(var.availability_zones)) == 2
    error_message = "availability_zones: exactly two different zones."
  }

  validation {
    condition     = alltrue([for zone in var.availability_zones : startswith(zone, var.region)])
    error_message = "availability_zones: zones of the chosen region."
  }
}

variable "vpc_cidr" {
  description = "The VPC's address range; every subnet is carved from it (network.tf)."
  type        = string
  default     = "10.0.0.0/16"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.34"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Addresses allowed to reach the Kubernetes API from the internet; empty: the API is reachable from inside the VPC only."
  type        = list(string)
  default     = []
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (gateways, session managers, cluster add-ons)."
  type        = list(string)
  default     = ["m7i.2xlarge", "m6i.2xlarge"]
}

variable "cpu_nodes" {
  description = "Size of the CPU node group, over both zones."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = { min = 2, desired = 4, max = 20 }

  validation {
    condition     = var.cpu_nodes.min >= 2
    error_message = "cpu_nodes.min: at least 2, one per zone."
  }
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node groups (workers). All must support EFA, and share one interface layout (the first type sizes the launch template's EFA interfaces)."
  type        = list(string)
  default     = ["g6e.12xlarge"]

  validation {
    # EFA-capable GPU types (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa.html#efa-instance-types).
    condition = length(var.gpu_instance_types) > 0 && alltrue([
      for t in var.gpu_instance_types : contains([
        "g6e.8xlarge", "g6e.12xlarge", "g6e.16xlarge", "g6e.24xlarge", "g6e.48xlarge",
        "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
      ], t)
    ])
    error_message = "gpu_instance_types: EFA-capable GPU types only (g6e.8xlarge and larger, p4d, p4de, p5, p5e, p5en)."
  }
}

variable "gpu_nodes_per_zone" {
  description = "Size of each zone's GPU node group."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = { min = 1, desired = 1, max = 8 }

  validation {
    condition     = var.gpu_nodes_per_zone.min >= 1
    error_message = "gpu_nodes_per_zone.min: at least 1, so each zone keeps a worker."
  }
}

variable "gpu_root_volume_gib" {
  description = "Root volume of each GPU node: container images (vLLM's is large) and the model files workers load."
  type        = number
  default     = 500
}

variable "postgres_version" {
  description = "PostgreSQL major version (RDS applies minor versions itself)."
  type        = string
  default     = "17"
}

variable "postgres_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.r7g.large"
}

variable "postgres_storage_gib" {
  description = "Initial storage, and the ceiling storage autoscaling may grow to."
  type = object({
    initial = number
    max     = number
  })
  default = { initial = 100, max = 1000 }
}

variable "postgres_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.postgres_backup_retention_days >= 7 && var.postgres_backup_retention_days <= 35
    error_message = "postgres_backup_retention_days: 7 to 35."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type (reply streams, session cache, rate-limit counters)."
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_engine_version" {
  description = "ElastiCache Redis OSS version."
  type        = string
  default     = "7.1"
}

variable "rabbitmq_instance_type" {
  description = "Amazon MQ instance type; cluster deployments need mq.m5.large or larger."
  type        = string
  default     = "mq.m5.large"
}

variable "rabbitmq_engine_version" {
  description = "Amazon MQ for RabbitMQ version (minor versions are applied automatically)."
  type        = string
  default     = "3.13"
}

variable "opensearch_engine_version" {
  description = "OpenSearch Service version."
  type        = string
  default     = "OpenSearch_2.19"
}

variable "opensearch_instance_type" {
  description = "OpenSearch data node type."
  type        = string
  default     = "r7g.large.search"
}

variable "opensearch_data_nodes" {
  description = "OpenSearch data nodes; an even number, split evenly over the two zones."
  type        = number
  default     = 2

  validation {
    condition     = var.opensearch_data_nodes >= 2 && var.opensearch_data_nodes % 2 == 0
    error_message = "opensearch_data_nodes: an even number, at least 2 (one per zone)."
  }
}

variable "opensearch_master_instance_type" {
  description = "OpenSearch dedicated master node type."
  type        = string
  default     = "m7g.large.search"
}

variable "opensearch_volume_gib" {
  description = "EBS volume of each OpenSearch data node."
  type        = number
  default     = 200
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups created here (database, cache, broker, search and metrics-service logs)."
  type        = number
  default     = 365
}

variable "kubernetes_namespace" {
  description = "Namespace of Axon's pods (deploy/kubernetes/base/kustomization.yaml)."
  type        = string
  default     = "axon"
}

variable "service_accounts" {
  description = "Kubernetes service accounts that get AWS permissions through EKS Pod Identity, as namespace and name."
  type = object({
    prometheus                   = object({ namespace = string, name = string })
    external_secrets             = object({ namespace = string, name = string })
    aws_load_balancer_controller = object({ namespace = string, name = string })
  })
  default = {
    prometheus                   = { namespace = "monitoring", name = "prometheus" }
    external_secrets             = { namespace = "external-secrets", name = "external-secrets" }
    aws_load_balancer_controller = { namespace = "kube-system", name = "aws-load-balancer-controller" }
  }
}
