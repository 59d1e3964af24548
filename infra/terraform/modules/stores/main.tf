# Redis (prediction cache, online features) and MLflow (tracking + registry on PostgreSQL, artifacts
# in the S3-compatible store). PostgreSQL for MLflow and Prefect comes from Prefect's chart (module
# prefect) and is reached by both; every password is a Secret reference.

# Redis as plain manifests of the official image (validated offline by tests/infra like every manifest
# Fusion ships); AUTH with the password from var.redis_secret. Pods reach it as fusion-redis:6379, with
# FUSION_REDIS_URL (password inside) from the secrets Secret.
resource "kubernetes_manifest" "redis" {
  manifest = {
    apiVersion = "apps/v1"
    kind       = "StatefulSet"
    metadata = {
      name      = "fusion-redis"
      namespace = var.namespace
      labels    = local.redis_labels
      annotations = {
        "checkov.io/skip1" = "CKV_K8S_43=the tag is pinned; mirror it and pin the mirror digest in production (docs/DEPLOY.md)"
        "checkov.io/skip2" = "CKV_K8S_15=a pinned tag needs no Always pull"
        "checkov.io/skip3" = "CKV_K8S_35=the official image takes its password from the environment (REDIS_PASSWORD)"
      }
    }
    spec = {
      serviceName = "fusion-redis"
      replicas    = 1
      selector    = { matchLabels = local.redis_labels }
      template = {
        metadata = { labels = local.redis_labels }
        spec = {
          automountServiceAccountToken = false
          securityContext              = { runAsNonRoot = true, runAsUser = 10999, runAsGroup = 10999, fsGroup = 10999, seccompProfile = { type = "RuntimeDefault" } }
          containers = [{
            name    = "redis"
            image   = "redis:8.2.2-alpine"
            command = ["sh", "-c", "exec redis-server --requirepass \"$REDIS_PASSWORD\" --appendonly yes --dir /data"]
            env = [{
              name      = "REDIS_PASSWORD"
              valueFrom = { secretKeyRef = { name = var.redis_secret, key = "redis-password" } }
            }]
            ports          = [{ name = "redis", containerPort = 6379, protocol = "TCP" }]
            readinessProbe = { tcpSocket = { port = "redis" }, periodSeconds = 5 }
            livenessProbe  = { tcpSocket = { port = "redis" }, periodSeconds = 20, initialDelaySeconds = 15 }
            resources      = { requests = { cpu = "250m", memory = "512Mi" }, limits = { cpu = "1", memory = "1Gi" } }
            securityContext = {
              allowPrivilegeEscalation = false
              readOnlyRootFilesystem   = true
              capabilities             = { drop = ["ALL"] }
            }
            volumeMounts = [{ name = "data", mountPath = "/data" }]
          }]
        }
      }
      volumeClaimTemplates = [{
        metadata = { name = "data" }
        spec     = merge(local.claim, local.claim_class)
      }]
    }
  }
}

resource "kubernetes_manifest" "redis_service" {
  manifest = {
    apiVersion = "v1"
    kind       = "Service"
    metadata   = { name = "fusion-redis", namespace = var.namespace, labels = local.redis_labels }
    spec = {
      selector = local.redis_labels
      ports    = [{ name = "redis", port = 6379, targetPort = "redis", protocol = "TCP" }]
    }
  }
}

locals {
  redis_labels = { "app.kubernetes.io/name" = "redis", "app.kubernetes.io/part-of" = "fusion" }
  claim        = { accessModes = ["ReadWriteOnce"], resources = { requests = { storage = "8Gi" } } }
  class        = { storageClassName = var.storage_class }
  # the storage class only when one is given: the cluster default otherwise
  claim_class = { for k, v in local.class : k => v if v != null }
}

resource "helm_release" "mlflow" {
  name       = "fusion-mlflow"
  repository = "https://community-charts.github.io/helm-charts"
  chart      = "mlflow"
  version    = "1.11.5"
  namespace  = var.namespace
  atomic     = true
  values = [yamlencode({
    image = { tag = "3.17.2" } # the MLflow of uv.lock
    backendStore = {
      databaseMigration = true
      postgres = {
        enabled  = true
        host     = "prefect-server-postgresql.${var.namespace}.svc"
        port     = 5432
        database = "mlflow"
      }
      existingDatabaseSecret = { name = var.postgres_secret, usernameKey = "username", passwordKey = "password" }
    }
    artifactRoot = {
      proxiedArtifactStorage = true
      s3 = {
        enabled        = true
        bucket         = split("/", trimprefix(var.mlflow_artifacts_uri, "s3://"))[0]
        path           = join("/", slice(split("/", trimprefix(var.mlflow_artifacts_uri, "s3://")), 1, length(split("/", trimprefix(var.mlflow_artifacts_uri, "s3://")))))
        existingSecret = { name = var.secrets_env_secret, keyOfAccessKeyId = "AWS_ACCESS_KEY_ID", keyOfSecretAccessKey = "AWS_SECRET_ACCESS_KEY" }
      }
    }
    extraEnvVars = var.s3_endpoint_url == null ? {} : { MLFLOW_S3_ENDPOINT_URL = var.s3_endpoint_url }
    podLabels    = { "app.kubernetes.io/part-of" = "fusion", "fusion.io/object-store" = "true" }
    resources    = { requests = { cpu = "250m", memory = "1Gi" }, limits = { cpu = "1", memory = "2Gi" } }
    service      = { port = 5000 }
  })]
}
