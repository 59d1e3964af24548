output "bootstrap_service" {
  description = "Strimzi's bootstrap Service of the cluster (port 9092)"
  value       = "fusion-kafka-bootstrap"
}
