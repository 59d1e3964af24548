output "namespace" {
  description = "namespace of the Fusion components"
  value       = module.platform.namespace
}

output "prefect_api_url" {
  description = "Prefect API inside the cluster (PREFECT_API_URL of flow runs and the trigger)"
  value       = local.prefect_api_url
}

output "kafka_bootstrap_servers" {
  description = "Kafka bootstrap (plain listener, reachable only inside the namespace by NetworkPolicy) inside the cluster (FUSION_KAFKA_BOOTSTRAP_SERVERS)"
  value       = local.kafka_bootstrap
}

output "mlflow_tracking_uri" {
  description = "MLflow tracking server inside the cluster (FUSION_MLFLOW_TRACKING_URI)"
  value       = local.mlflow_uri
}

output "serving_service" {
  description = "the Service in front of Ray Serve (port 8000: /invocations, /v2, /v1/predict)"
  value       = module.serving.service
}

output "work_pool" {
  description = "Prefect work pool whose Kubernetes worker runs flow runs"
  value       = module.prefect.work_pool
}
