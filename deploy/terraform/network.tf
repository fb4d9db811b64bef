# The VPC: per zone a public subnet (internet-facing load balancers, NAT gateway), a
# private subnet (EKS nodes and, with the VPC CNI, every pod's address) and a database
# subnet (RDS, ElastiCache, Amazon MQ and OpenSearch endpoints, with no route to the
# internet at all).
module "vpc" {
  # terraform-aws-modules/vpc/aws 6.6.0, pinned to its release commit.
  source = "git::https://github.com/terraform-aws-modules/terraform-aws-vpc.git?ref=82d1929e669efef4e2ad00611b8a68e7a56e049c"

  name = var.name
  cidr = var.vpc_cidr
  azs  = local.azs

  # With the default 10.0.0.0/16: public 10.0.0.0/24 and 10.0.1.0/24; private
  # 10.0.32.0/19 and 10.0.64.0/19 (pods take VPC addresses: 8k per zone); database
  # 10.0.200.0/24 and 10.0.201.0/24. One subnet per zone and tier, by construction.
  public_subnets   = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 8, i)]
  private_subnets  = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 3, i + 1)]
  database_subnets = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 8, i + 200)]

  create_database_subnet_group       = true
  create_database_subnet_route_table = true

  # A NAT gateway in each zone: nodes reach image registries and the AWS APIs through their
  # own zone's gateway, so a zone outage does not cut the other zone's egress.
  enable_nat_gateway     = true
  single_nat_gateway     = false
  one_nat_gateway_per_az = true

  enable_dns_hostnames = true
  enable_dns_support   = true

  # Where the AWS Load Balancer Controller places the ALB of the aws overlay's Ingress
  # (public subnets) and internal load balancers (private subnets).
  public_subnet_tags = {
    "kubernetes.io/role/elb" = "1"
  }
  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = "1"
  }

  # Nothing may use the default security group: the module empties it.
  manage_default_security_group = true

  enable_flow_log                                 = true
  create_flow_log_cloudwatch_log_group            = true
  create_flow_log_cloudwatch_iam_role             = true
  flow_log_max_aggregation_interval               = 60
  flow_log_cloudwatch_log_group_retention_in_days = var.log_retention_days
  flow_log_cloudwatch_log_group_kms_key_id        = aws_kms_key.logs.arn
}
