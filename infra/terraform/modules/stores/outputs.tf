output "redis_service" {
  description = "the Redis Service (port 6379)"
  value       = "fusion-redis"
}

output "mlflow_release" {
  description = "the MLflow release (its Service listens on 5000)"
  value       = helm_release.mlflow.name
}
