output "work_pool" {
  description = "the Kubernetes work pool flow runs go to"
  value       = local.work_pool
}
