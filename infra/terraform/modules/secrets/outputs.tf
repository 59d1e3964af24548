output "names" {
  description = "the Secrets the ExternalSecrets make"
  value       = keys(var.secrets)
}
