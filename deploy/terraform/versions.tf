# Terraform, provider and module versions. Every version is pinned: an upgrade is a change
# someone reviews, never a side effect of `terraform init` on another machine. The
# terraform-aws-modules modules (network.tf, eks.tf, observability.tf) are pinned to the
# commit of a named release rather than to its registry version, which resolves to a git
# tag that can be moved; their own floor is aws >= 6.28.
terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.28"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }

  # The state holds the generated passwords (random_password), so it lives in an encrypted,
  # versioned S3 bucket, never on a laptop. Partial configuration, completed at init:
  #   terraform init -backend-config=bucket=BUCKET -backend-config=key=axon/terraform.tfstate \
  #     -backend-config=region=REGION -backend-config=encrypt=true -backend-config=use_lockfile=true
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
