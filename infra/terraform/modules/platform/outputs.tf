output "namespace" {
  description = "the namespace (depending on it waits for its policies)"
  value       = kubernetes_namespace_v1.fusion.metadata[0].name
}
