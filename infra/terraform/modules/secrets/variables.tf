variable "namespace" {
  description = "namespace of the Secrets"
  type        = string
}

variable "labels" {
  description = "labels of the ExternalSecrets"
  type        = map(string)
}

variable "store" {
  description = "the SecretStore or ClusterSecretStore that reaches your secret store (kind, name); you create it, since it carries your provider's authentication"
  type        = object({ kind = string, name = string })
}

variable "refresh_interval" {
  description = "how often the operator re-reads each remote secret (a rotated password reaches the Secret within this)"
  type        = string
}

variable "secrets" {
  description = "Kubernetes Secret name -> remote_key: the remote secret whose properties become its keys; derived: more keys, each a template (external-secrets v2, e.g. {{ .password | urlquery }}) over those properties"
  type        = map(object({ remote_key = string, derived = map(string) }))
}
