# Fusion's Kubernetes Secrets, made by the External Secrets Operator (modules/operators) from your
# secret store: one ExternalSecret per Secret, each copying every property of one remote secret into
# keys of the same name, plus keys derived from them by the operator's templates (a connection string
# from a user and a password: one value to rotate). Terraform holds names and paths, never a value.

resource "kubernetes_manifest" "external_secret" {
  for_each = var.secrets
  manifest = {
    apiVersion = "external-secrets.io/v1"
    kind       = "ExternalSecret"
    metadata   = { name = each.key, namespace = var.namespace, labels = var.labels }
    spec = {
      refreshInterval = var.refresh_interval
      secretStoreRef  = { kind = var.store["kind"], name = var.store["name"] }
      # Owner: the Secret goes with its ExternalSecret; Retain: a store outage never deletes it
      target = {
        name           = each.key
        creationPolicy = "Owner"
        deletionPolicy = "Retain"
        template       = { engineVersion = "v2", mergePolicy = "Merge", data = each.value["derived"] }
      }
      dataFrom = [{ extract = { key = each.value["remote_key"] } }]
    }
  }
}
