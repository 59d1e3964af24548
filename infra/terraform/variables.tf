variable "kubeconfig_path" {
  description = "kubeconfig of the target cluster"
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "context in the kubeconfig; null: its current context"
  type        = string
  default     = null
}

variable "namespace" {
  description = "namespace of every Fusion component (the operators get their own)"
  type        = string
  default     = "fusion"
}

variable "image" {
  description = "infra/image/Dockerfile's image, preferably by digest (registry/fusion@sha256:...): flow runs, Dask workers, trigger and serving all run it"
  type        = string
}

variable "otlp_endpoint" {
  description = "OTLP/HTTP endpoint (an OpenTelemetry collector, Jaeger, Tempo) every Fusion pod exports spans to; empty: none"
  type        = string
  default     = ""
}

variable "config_file" {
  description = "the dataset config inside the image that runs, serves and triggers (relative to /app)"
  type        = string
  default     = "configs/flights.yaml"
}

variable "secret_store" {
  description = "the External Secrets Operator store that reaches your secret store (Vault, AWS/GCP/Azure secret managers, ...): kind SecretStore (in var.namespace) or ClusterSecretStore, and its name. You create it: it carries your provider's authentication (docs/DEPLOY.md)."
  type        = object({ kind = string, name = string })
  default     = { kind = "ClusterSecretStore", name = "fusion" }
}

variable "secret_remote_keys" {
  description = "key in your secret store of each secret Fusion needs; every property of a remote secret becomes a key of its Kubernetes Secret. env: FUSION_REDIS_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ any FUSION_* secret setting); postgres: username (prefect, the user Prefect's chart creates), password, postgres-password (its superuser; the Secret also gets connection-string, made from these); redis: redis-password"
  type        = object({ env = string, postgres = string, redis = string })
  default     = { env = "fusion/env", postgres = "fusion/postgres", redis = "fusion/redis" }
}

variable "secret_refresh_interval" {
  description = "how often the External Secrets Operator re-reads the remote secrets (a rotated value reaches the Kubernetes Secret within this; pods read env at start)"
  type        = string
  default     = "1h"
}

variable "secrets_env_secret" {
  description = "name of the Kubernetes Secret (made by modules/secrets from secret_remote_keys.env) whose keys become environment variables of every Fusion pod: FUSION_* secret settings, AWS_* for the artifact store. Terraform never holds a secret value."
  type        = string
  default     = "fusion-env"
}

variable "postgres_secret" {
  description = "name of the Kubernetes Secret with the PostgreSQL credentials (keys: username, password, postgres-password, connection-string) for Prefect and MLflow; made by modules/secrets from secret_remote_keys.postgres"
  type        = string
  default     = "fusion-postgres"
}

variable "redis_secret" {
  description = "name of the Kubernetes Secret with the Redis password (key: redis-password); made by modules/secrets from secret_remote_keys.redis"
  type        = string
  default     = "fusion-redis"
}

variable "mlflow_artifacts_uri" {
  description = "S3-compatible URI where MLflow keeps models and run artifacts (s3://bucket/prefix)"
  type        = string
}

variable "s3_endpoint_url" {
  description = "endpoint of an S3-compatible store (MinIO, Ceph); null for AWS S3"
  type        = string
  default     = null
}

variable "storage_class" {
  description = "storage class of the persistent volumes (Kafka, Redis, PostgreSQL); null: the cluster default"
  type        = string
  default     = null
}

variable "kafka_replicas" {
  description = "Kafka brokers (KRaft, each also a controller); 3 for production"
  type        = number
  default     = 3
}

variable "kafka_storage_size" {
  description = "persistent volume per Kafka broker"
  type        = string
  default     = "50Gi"
}

variable "topic_partitions" {
  description = "partitions of the topics Fusion uses (events.partitions)"
  type        = number
  default     = 3
}

variable "dask_cpu_workers" {
  description = "CPU workers of a run's Dask cluster (pipeline.dask.kubernetes.workers.replicas)"
  type        = number
  default     = 2
}

variable "dask_gpu_workers" {
  description = "GPU workers of a run's Dask cluster, one GPU each (pipeline.dask.kubernetes.gpu_workers.replicas); 0: none"
  type        = number
  default     = 0
}

variable "gpu_node_selector" {
  description = "labels of the GPU node pool (GPU Dask workers are placed there)"
  type        = map(string)
  default     = { "nvidia.com/gpu.present" = "true" }
}

variable "gpu_node_taint_key" {
  description = "taint key the GPU node pool carries (effect NoSchedule); GPU workers tolerate it"
  type        = string
  default     = "nvidia.com/gpu"
}

variable "serving_replicas" {
  description = "Ray Serve model replicas (serving.replicas)"
  type        = number
  default     = 2
}

variable "ray_worker_replicas" {
  description = "Ray worker pods under the serving cluster (each holds serving replicas)"
  type        = number
  default     = 2
}
