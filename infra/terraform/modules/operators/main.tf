# The four operators, each in its own namespace, at versions whose CRDs tests/infra validates against
# (dask-kubernetes' from its wheel in uv.lock, KubeRay's, Strimzi's and External Secrets' from
# tests/infra/crds.py).

locals {
  dask_operator_version = "2026.3.0"
  kuberay_version       = "1.6.2"
  strimzi_version       = "0.51.0"
  eso_version           = "0.16.2"
}

resource "helm_release" "dask_operator" {
  name             = "dask-kubernetes-operator"
  repository       = "https://helm.dask.org"
  chart            = "dask-kubernetes-operator"
  version          = local.dask_operator_version
  namespace        = "dask-operator"
  create_namespace = true
  atomic           = true
}

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = local.kuberay_version
  namespace        = "kuberay-operator"
  create_namespace = true
  atomic           = true
}

resource "helm_release" "strimzi_operator" {
  name             = "strimzi-kafka-operator"
  repository       = "oci://quay.io/strimzi-helm"
  chart            = "strimzi-kafka-operator"
  version          = local.strimzi_version
  namespace        = "strimzi"
  create_namespace = true
  atomic           = true
  set = [
    # watch every namespace: Fusion's Kafka lives in var.namespace of the root module
    { name = "watchAnyNamespace", value = "true" },
  ]
}

# makes Fusion's Secrets from your secret store (modules/secrets); installs its CRDs with the chart
resource "helm_release" "external_secrets" {
  name             = "external-secrets"
  repository       = "https://charts.external-secrets.io"
  chart            = "external-secrets"
  version          = local.eso_version
  namespace        = "external-secrets"
  create_namespace = true
  atomic           = true
  set = [
    { name = "installCRDs", value = "true" },
  ]
}
