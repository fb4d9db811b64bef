# EKS: the control plane in both zones' private subnets, a CPU node group over both zones
# (gateways, session managers, cluster add-ons) and one GPU node group per zone (workers).
module "eks" {
  # terraform-aws-modules/eks/aws 21.19.0, pinned to its release commit.
  source = "git::https://github.com/terraform-aws-modules/terraform-aws-eks.git?ref=bef29c4d9523523e57fe898643fde2895106b339"

  name               = var.name
  kubernetes_version = var.kubernetes_version

  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.private_subnets
  control_plane_subnet_ids = module.vpc.private_subnets

  endpoint_private_access      = true
  endpoint_public_access       = length(var.cluster_endpoint_public_access_cidrs) > 0
  endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  authentication_mode                      = "API"
  enable_cluster_creator_admin_permissions = true
  deletion_protection                      = true

  # Secrets in etcd are encrypted with a key the module creates.
  encryption_config = {
    resources = ["secrets"]
  }

  enabled_log_types                      = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  cloudwatch_log_group_retention_in_days = var.log_retention_days
  cloudwatch_log_group_kms_key_id        = aws_kms_key.logs.arn

  # Lets Application Recovery Controller shift traffic away from an impaired zone.
  zonal_shift_config = {
    enabled = true
  }

  # Security groups for pods (security_groups.tf) need the VPC resource controller, which
  # attaches a branch network interface with the pod's own security groups.
  iam_role_additional_policies = {
    AmazonEKSVPCResourceController = "arn:${local.partition}:iam::aws:policy/AmazonEKSVPCResourceController"
  }

  addons = {
    coredns    = {}
    kube-proxy = {}
    eks-pod-identity-agent = {
      before_compute = true
    }
    vpc-cni = {
      before_compute = true
      configuration_values = jsonencode({
        # ENABLE_POD_ENI: pods selected by a SecurityGroupPolicy get their own security
        # groups. "standard" mode keeps Kubernetes NetworkPolicies (enforced by the CNI,
        # enableNetworkPolicy) in force for those pods too.
        env = {
          ENABLE_POD_ENI                    = "true"
          POD_SECURITY_GROUP_ENFORCING_MODE = "standard"
        }
        # Without this the kubelet's TCP probes cannot reach a pod on a branch interface.
        init = {
          env = {
            DISABLE_TCP_EARLY_DEMUX = "true"
          }
        }
        enableNetworkPolicy = "true"
      })
    }
  }

  eks_managed_node_groups = {
    # Both zones' private subnets: the managed node group's Auto Scaling group balances its
    # nodes over them, and the pods' zone spread constraints have nodes on both sides.
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      capacity_type  = "ON_DEMAND"
      subnet_ids     = module.vpc.private_subnets

      min_size     = var.cpu_nodes.min
      desired_size = var.cpu_nodes.desired
      max_size     = var.cpu_nodes.max

      labels = {
        "axon/node-pool" = "cpu"
      }

      update_config = {
        max_unavailable_percentage = 25
      }
    }

    # GPU workers, one node group per zone. EFA traffic needs the group's nodes in one
    # cluster placement group, and a placement group lives in a single zone: one group
    # spread over both zones cannot have EFA, two pinned groups can, and together they
    # span both zones. `enable_efa_support` exposes every EFA interface of the instance
    # type on the launch template, creates the placement group, and adds the all-traffic
    # rule between the group's nodes that EFA requires.
    #
    # The taint keeps every other pod off the GPUs; the aws overlay gives the workers the
    # matching toleration and selects the nodes by the `axon/node-pool` label (outputs
    # gpu_node_label and gpu_node_taint, deploy/kubernetes/overlays/aws/worker-gpu.yaml). The
    # NVIDIA device plugin (`nvidia.com/gpu`) and the EFA device plugin
    # (`vpc.amazonaws.com/efa`) run on these nodes; the AL2023 NVIDIA AMI brings the driver.
    gpu-a = {
      ami_type           = "AL2023_x86_64_NVIDIA"
      instance_types     = var.gpu_instance_types
      capacity_type      = "ON_DEMAND"
      subnet_ids         = [module.vpc.private_subnets[0]]
      enable_efa_support = true

      min_size     = var.gpu_nodes_per_zone.min
      desired_size = var.gpu_nodes_per_zone.desired
      max_size     = var.gpu_nodes_per_zone.max

      labels = {
        "axon/node-pool" = "gpu"
      }
      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }

      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.gpu_root_volume_gib
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }

      # One node at a time: each one carries a whole zone's share of running replies.
      update_config = {
        max_unavailable = 1
      }
    }

    gpu-b = {
      ami_type           = "AL2023_x86_64_NVIDIA"
      instance_types     = var.gpu_instance_types
      capacity_type      = "ON_DEMAND"
      subnet_ids         = [module.vpc.private_subnets[1]]
      enable_efa_support = true

      min_size     = var.gpu_nodes_per_zone.min
      desired_size = var.gpu_nodes_per_zone.desired
      max_size     = var.gpu_nodes_per_zone.max

      labels = {
        "axon/node-pool" = "gpu"
      }
      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }

      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.gpu_root_volume_gib
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }

      update_config = {
        max_unavailable = 1
      }
    }
  }
}

################################################################################
# AWS permissions for cluster software, through EKS Pod Identity (no node-wide
# credentials): each role is bound to one service account.
################################################################################

# The AWS Load Balancer Controller creates the ALB for the aws overlay's Ingress.
module "aws_load_balancer_controller_pod_identity" {
  # terraform-aws-modules/eks-pod-identity/aws 2.8.1, pinned to its release commit.
  source = "git::https://github.com/terraform-aws-modules/terraform-aws-eks-pod-identity.git?ref=2cbd87e243fcbf74385331dcf983e273eeb7aa36"

  name = "${var.name}-aws-lbc"

  attach_aws_lb_controller_policy = true

  associations = {
    controller = {
      cluster_name    = module.eks.cluster_name
      namespace       = var.service_accounts.aws_load_balancer_controller.namespace
      service_account = var.service_accounts.aws_load_balancer_controller.name
    }
  }
}

# The External Secrets Operator copies the runtime secret (the store, Redis and RabbitMQ
# URLs and the admin key: the aws overlay's `axon-secrets`) and the OpenSearch login Fluent
# Bit uses into Kubernetes Secrets; it may read those two secrets and nothing else.
module "external_secrets_pod_identity" {
  # terraform-aws-modules/eks-pod-identity/aws 2.8.1, pinned to its release commit.
  source = "git::https://github.com/terraform-aws-modules/terraform-aws-eks-pod-identity.git?ref=2cbd87e243fcbf74385331dcf983e273eeb7aa36"

  name = "${var.name}-external-secrets"

  attach_external_secrets_policy        = true
  external_secrets_secrets_manager_arns = [
    aws_secretsmanager_secret.runtime.arn,
    aws_secretsmanager_secret.opensearch.arn,
  ]
  external_secrets_kms_key_arns         = [aws_kms_key.data.arn]
  external_secrets_create_permission    = false

  associations = {
    operator = {
      cluster_name    = module.eks.cluster_name
      namespace       = var.service_accounts.external_secrets.namespace
      service_account = var.service_accounts.external_secrets.name
    }
  }
}
