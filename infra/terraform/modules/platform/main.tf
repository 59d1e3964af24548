# The namespace and its NetworkPolicies: nothing in or out by default, then what the components need.

locals {
  # Pod Security Admission: Fusion's pods run as non-root without privileges ("baseline" enforced)
  pod_security = { "pod-security.kubernetes.io/enforce" = "baseline" }
  policies = {
    # nothing in, nothing out, unless a policy below allows it
    default-deny = {
      podSelector = {}
      policyTypes = ["Ingress", "Egress"]
    }
    # Fusion's pods talk to each other (flow -> Dask scheduler -> workers; everything -> Kafka, Redis,
    # MLflow, Prefect; the Ray head -> its workers): within the namespace only
    within-namespace = {
      podSelector = {}
      ingress     = [{ from = [{ podSelector = {} }] }]
      egress      = [{ to = [{ podSelector = {} }] }]
      policyTypes = ["Ingress", "Egress"]
    }
    dns = {
      podSelector = {}
      egress = [{
        to    = [{ namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = "kube-system" } } }]
        ports = [{ port = 53, protocol = "UDP" }, { port = 53, protocol = "TCP" }]
      }]
      policyTypes = ["Egress"]
    }
    # flow runs create and delete their DaskCluster through the Kubernetes API, Prefect's worker creates
    # flow-run Jobs: HTTPS egress for pods labelled fusion.io/kube-api
    kube-api = {
      podSelector = { matchLabels = { "fusion.io/kube-api" = "true" } }
      egress      = [{ ports = [{ port = 443, protocol = "TCP" }, { port = 6443, protocol = "TCP" }] }]
      policyTypes = ["Egress"]
    }
    # the artifact store (S3 or compatible) is outside the cluster: HTTPS egress for pods labelled
    # fusion.io/object-store (flow runs, Dask workers, MLflow, serving)
    object-store = {
      podSelector = { matchLabels = { "fusion.io/object-store" = "true" } }
      egress      = [{ ports = [{ port = 443, protocol = "TCP" }] }]
      policyTypes = ["Egress"]
    }
    # Serve's port from the cluster's ingress controller (namespace labelled fusion.io/ingress)
    serving-ingress = {
      podSelector = { matchLabels = { "app.kubernetes.io/name" = "fusion-serving" } }
      ingress = [{
        from  = [{ namespaceSelector = { matchLabels = { "fusion.io/ingress" = "true" } } }]
        ports = [{ port = 8000, protocol = "TCP" }]
      }]
      policyTypes = ["Ingress"]
    }
  }
}

resource "kubernetes_namespace_v1" "fusion" {
  metadata {
    name   = var.namespace
    labels = merge(var.labels, local.pod_security)
  }
}

resource "kubernetes_manifest" "network_policy" {
  for_each = local.policies
  manifest = {
    apiVersion = "networking.k8s.io/v1"
    kind       = "NetworkPolicy"
    metadata   = { name = each.key, namespace = kubernetes_namespace_v1.fusion.metadata[0].name }
    spec       = each.value
  }
}
