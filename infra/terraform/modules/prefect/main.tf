# Prefect server (with its PostgreSQL, shared with MLflow), a Kubernetes worker on the work pool
# `fusion-kubernetes` whose base job template is base-job-template.json, the service account flow runs
# use to create their DaskCluster, and `fusion trigger` (Kafka ingest requests -> flow runs).

locals {
  work_pool      = "fusion-kubernetes"
  gpu_toleration = { key = var.gpu_node_taint_key, operator = "Exists", effect = "NoSchedule" }
  # what a flow run's Dask cluster is, from Fusion's settings (pipeline.dask.kubernetes) by environment
  dask_env = {
    FUSION_PIPELINE__DASK__CLUSTER                                = "kubernetes"
    FUSION_PIPELINE__DASK__KUBERNETES__NAMESPACE                  = var.namespace
    FUSION_PIPELINE__DASK__KUBERNETES__IMAGE                      = var.image
    FUSION_PIPELINE__DASK__KUBERNETES__SERVICE_ACCOUNT            = "fusion-dask"
    FUSION_PIPELINE__DASK__KUBERNETES__ENV_FROM_SECRETS           = jsonencode([var.secrets_env_secret])
    FUSION_PIPELINE__DASK__KUBERNETES__ENV                        = jsonencode(var.fusion_env)
    FUSION_PIPELINE__DASK__KUBERNETES__WORKERS__REPLICAS          = tostring(var.dask_cpu_workers)
    FUSION_PIPELINE__DASK__KUBERNETES__GPU_WORKERS__REPLICAS      = tostring(var.dask_gpu_workers)
    FUSION_PIPELINE__DASK__KUBERNETES__GPU_WORKERS__NODE_SELECTOR = jsonencode(var.gpu_node_selector)
    FUSION_PIPELINE__DASK__KUBERNETES__GPU_WORKERS__TOLERATIONS   = jsonencode([local.gpu_toleration])
  }
  flow_env = merge(var.fusion_env, local.dask_env)
}

resource "helm_release" "server" {
  name       = "prefect-server"
  repository = "https://prefecthq.github.io/prefect-helm"
  chart      = "prefect-server"
  version    = "2026.8.18172642"
  namespace  = var.namespace
  atomic     = true
  values = [yamlencode({
    server = {
      resources = { requests = { cpu = "500m", memory = "1Gi" }, limits = { cpu = "1", memory = "2Gi" } }
      podLabels = { "app.kubernetes.io/part-of" = "fusion" }
    }
    # the chart's PostgreSQL (MLflow's database too: modules/stores), with the credentials of the
    # Secret modules/secrets makes: the server reads its `connection-string` key, PostgreSQL its
    # `password` (user prefect) and `postgres-password` (the superuser the stores module's Job uses)
    secret = { create = false } # else the chart writes a Secret of that name with a default password
    postgresql = {
      enabled = true
      auth = {
        existingSecret     = var.postgres_secret
        username           = "prefect"
        database           = "server"
        enablePostgresUser = true
      }
      primary = { persistence = { enabled = true, storageClass = var.storage_class } }
    }
  })]
}

resource "helm_release" "worker" {
  name       = "prefect-worker"
  repository = "https://prefecthq.github.io/prefect-helm"
  chart      = "prefect-worker"
  version    = "2026.8.18172642"
  namespace  = var.namespace
  atomic     = true
  values = [yamlencode({
    worker = {
      apiConfig                 = "selfHostedServer"
      selfHostedServerApiConfig = { apiUrl = var.fusion_env["PREFECT_API_URL"] }
      config = {
        workPool        = local.work_pool
        type            = "kubernetes"
        baseJobTemplate = { configuration = templatefile("${path.module}/base-job-template.json", { image = var.image, namespace = var.namespace, env = jsonencode(local.flow_env), secrets_env_secret = var.secrets_env_secret }) }
      }
      resources = { requests = { cpu = "100m", memory = "256Mi" }, limits = { cpu = "500m", memory = "512Mi" } }
      podLabels = { "app.kubernetes.io/part-of" = "fusion", "fusion.io/kube-api" = "true" }
    }
  })]
  depends_on = [helm_release.server]
}

# Flow runs create, watch and delete their DaskCluster (and read its pods and services)
resource "kubernetes_manifest" "flow_account" {
  manifest = {
    apiVersion = "v1"
    kind       = "ServiceAccount"
    metadata   = { name = "fusion-flow", namespace = var.namespace }
  }
}

resource "kubernetes_manifest" "dask_account" {
  manifest = {
    apiVersion                   = "v1"
    kind                         = "ServiceAccount"
    metadata                     = { name = "fusion-dask", namespace = var.namespace }
    automountServiceAccountToken = false
  }
}

resource "kubernetes_manifest" "flow_role" {
  manifest = {
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "Role"
    metadata   = { name = "fusion-flow", namespace = var.namespace }
    rules = [
      {
        apiGroups = ["kubernetes.dask.org"]
        resources = ["daskclusters", "daskworkergroups", "daskautoscalers"]
        verbs     = ["get", "list", "watch", "create", "patch", "delete"]
      },
      {
        apiGroups = [""]
        resources = ["pods", "services", "pods/log"]
        verbs     = ["get", "list", "watch"]
      },
    ]
  }
}

resource "kubernetes_manifest" "flow_binding" {
  manifest = {
    apiVersion = "rbac.authorization.k8s.io/v1"
    kind       = "RoleBinding"
    metadata   = { name = "fusion-flow", namespace = var.namespace }
    roleRef    = { apiGroup = "rbac.authorization.k8s.io", kind = "Role", name = "fusion-flow" }
    subjects   = [{ kind = "ServiceAccount", name = "fusion-flow", namespace = var.namespace }]
  }
}

resource "kubernetes_manifest" "trigger" {
  manifest = {
    apiVersion = "apps/v1"
    kind       = "Deployment"
    metadata = {
      name      = "fusion-trigger"
      namespace = var.namespace
      labels    = local.trigger_labels
      annotations = {
        "checkov.io/skip1" = "CKV_K8S_8=fusion trigger is a Kafka consumer with no port to probe; it exits on a fatal error and Kubernetes restarts it"
        "checkov.io/skip2" = "CKV_K8S_9=no port to probe (see CKV_K8S_8); readiness means nothing for a consumer no Service routes to"
        "checkov.io/skip3" = "CKV_K8S_35=Fusion reads its secret settings from FUSION_* environment variables (file references: issue Observability and security)"
      }
    }
    spec = {
      replicas = 1
      selector = { matchLabels = local.trigger_labels }
      template = {
        metadata = { labels = local.trigger_labels }
        spec = {
          automountServiceAccountToken = false
          securityContext              = { runAsNonRoot = true, runAsUser = 10001, seccompProfile = { type = "RuntimeDefault" } }
          containers = [{
            name      = "trigger"
            image     = var.image
            command   = ["fusion", "trigger", "--config", var.config_file]
            env       = [for k, v in var.fusion_env : { name = k, value = v }]
            envFrom   = [{ secretRef = { name = var.secrets_env_secret } }]
            resources = { requests = { cpu = "100m", memory = "512Mi" }, limits = { cpu = "500m", memory = "1Gi" } }
            securityContext = {
              allowPrivilegeEscalation = false
              readOnlyRootFilesystem   = true
              capabilities             = { drop = ["ALL"] }
            }
            volumeMounts = [{ name = "home", mountPath = "/var/lib/fusion" }, { name = "tmp", mountPath = "/tmp" }]
          }]
          volumes = [{ name = "home", emptyDir = {} }, { name = "tmp", emptyDir = {} }]
        }
      }
    }
  }
}

locals {
  trigger_labels = { "app.kubernetes.io/name" = "fusion-trigger", "app.kubernetes.io/part-of" = "fusion" }
}
