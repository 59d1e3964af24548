output "service" {
  description = "KubeRay's Service for Serve (<name>-serve-svc, port 8000)"
  value       = "fusion-serving-serve-svc"
}
