# Fusion on Kubernetes: the same image and code as on a laptop (README "Two commands"), with the
# services as operators and charts. docs/DEPLOY.md walks through it; make infra-check checks it offline.

locals {
  labels = { "app.kubernetes.io/part-of" = "fusion" }
  # Kafka topics as Fusion's events settings name them (EventsConfig: each event type is its topic,
  # plus the ingest requests and the dead letters); tests/infra checks this list against the code
  topics = [
    "fusion.data.ready",
    "fusion.data.validated",
    "fusion.data.rejected",
    "fusion.features.ready",
    "fusion.model.trained",
    "fusion.model.promoted",
    "fusion.ingest.requests",
    "fusion.deadletter",
  ]
  kafka_bootstrap = "fusion-kafka-bootstrap.${var.namespace}.svc:9092"
  mlflow_uri      = "http://fusion-mlflow.${var.namespace}.svc:5000"
  prefect_api_url = "http://prefect-server.${var.namespace}.svc:4200/api"
  # the PostgreSQL of Prefect's chart (release prefect-server), which MLflow shares
  postgres_host = "prefect-server-postgresql.${var.namespace}.svc"
  # environment every Fusion pod gets (no secrets: those come from var.secrets_env_secret, which also
  # holds FUSION_REDIS_URL = redis://:<password>@fusion-redis.<namespace>.svc:6379/0)
  fusion_env = {
    FUSION_HOME                    = "/var/lib/fusion"
    FUSION_LAKE_URI                = "${var.mlflow_artifacts_uri}/lake"
    FUSION_MLFLOW_TRACKING_URI     = local.mlflow_uri
    FUSION_KAFKA_BOOTSTRAP_SERVERS = local.kafka_bootstrap
    PREFECT_API_URL                = local.prefect_api_url
    # spans of runs, the trigger and serving go here over OTLP/HTTP; empty: not exported
    OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint
  }
}

module "platform" {
  source    = "./modules/platform"
  namespace = var.namespace
  labels    = local.labels
}

module "operators" {
  source     = "./modules/operators"
  depends_on = [module.platform]
}

# the three Secrets every other module names, made from your secret store
module "secrets" {
  source           = "./modules/secrets"
  namespace        = module.platform.namespace
  labels           = local.labels
  store            = var.secret_store
  refresh_interval = var.secret_refresh_interval
  secrets = {
    (var.secrets_env_secret) = { remote_key = var.secret_remote_keys["env"], derived = {} }
    (var.postgres_secret) = {
      remote_key = var.secret_remote_keys["postgres"]
      # what the Prefect server connects with (its chart reads this key)
      derived = { "connection-string" = "postgresql+asyncpg://{{ .username }}:{{ .password | urlquery }}@${local.postgres_host}:5432/server" }
    }
    (var.redis_secret) = { remote_key = var.secret_remote_keys["redis"], derived = {} }
  }
  depends_on = [module.operators]
}

module "stores" {
  source               = "./modules/stores"
  namespace            = module.platform.namespace
  storage_class        = var.storage_class
  postgres_host        = local.postgres_host
  postgres_secret      = var.postgres_secret
  redis_secret         = var.redis_secret
  secrets_env_secret   = var.secrets_env_secret
  mlflow_artifacts_uri = var.mlflow_artifacts_uri
  s3_endpoint_url      = var.s3_endpoint_url
  depends_on           = [module.secrets, module.prefect] # MLflow's database is in Prefect's PostgreSQL
}

module "kafka" {
  source        = "./modules/kafka"
  namespace     = module.platform.namespace
  replicas      = var.kafka_replicas
  storage_size  = var.kafka_storage_size
  storage_class = var.storage_class
  topics        = local.topics
  partitions    = var.topic_partitions
  depends_on    = [module.operators]
}

module "prefect" {
  source             = "./modules/prefect"
  namespace          = module.platform.namespace
  image              = var.image
  postgres_secret    = var.postgres_secret
  secrets_env_secret = var.secrets_env_secret
  fusion_env         = local.fusion_env
  dask_cpu_workers   = var.dask_cpu_workers
  dask_gpu_workers   = var.dask_gpu_workers
  gpu_node_selector  = var.gpu_node_selector
  gpu_node_taint_key = var.gpu_node_taint_key
  config_file        = var.config_file
  storage_class      = var.storage_class
  depends_on         = [module.operators, module.secrets]
}

module "serving" {
  source              = "./modules/serving"
  namespace           = module.platform.namespace
  image               = var.image
  secrets_env_secret  = var.secrets_env_secret
  fusion_env          = local.fusion_env
  replicas            = var.serving_replicas
  ray_worker_replicas = var.ray_worker_replicas
  depends_on          = [module.operators, module.secrets, module.stores]
}
