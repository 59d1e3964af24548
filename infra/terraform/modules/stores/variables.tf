variable "namespace" {
  description = "namespace of the stores"
  type        = string
}

variable "storage_class" {
  description = "storage class of Redis' volume; null: the cluster default"
  type        = string
}

variable "postgres_host" {
  description = "host of the PostgreSQL where MLflow's database is created (Prefect's chart's)"
  type        = string
}

variable "postgres_secret" {
  description = "Secret with the PostgreSQL credentials MLflow uses (keys username, password)"
  type        = string
}

variable "redis_secret" {
  description = "Secret with the Redis password (key redis-password)"
  type        = string
}

variable "secrets_env_secret" {
  description = "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the artifact store"
  type        = string
}

variable "mlflow_artifacts_uri" {
  description = "s3://bucket/prefix of MLflow's artifacts"
  type        = string
}

variable "s3_endpoint_url" {
  description = "S3-compatible endpoint; null for AWS S3"
  type        = string
}
