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
  database_labels = { "app.kubernetes.io/name" = "mlflow-database", "app.kubernetes.io/part-of" = "fusion" }
  create_database = "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'mlflow'\" | grep -q 1 || psql -c \"CREATE DATABASE mlflow OWNER \\\"$OWNER\\\"\""
  redis_labels    = { "app.kubernetes.io/name" = "redis", "app.kubernetes.io/part-of" = "fusion" }
  claim           = { accessModes = ["ReadWriteOnce"], resources = { requests = { storage = "8Gi" } } }
  class           = { storageClassName = var.storage_class }
  # the storage class only when one is given: the cluster default otherwise
  claim_class = { for k, v in local.class : k => v if v != null }
}

# MLflow's database in the PostgreSQL of Prefect's chart (which makes only Prefect's): created once,
# idempotently, before MLflow starts.
resource "kubernetes_manifest" "mlflow_database" {
  manifest = {
    apiVersion = "batch/v1"
    kind       = "Job"
    metadata = {
      name      = "fusion-mlflow-database"
      namespace = var.namespace
      labels    = local.database_labels
      annotations = {
        "checkov.io/skip1" = "CKV_K8S_8=a one-shot Job that ends: nothing to keep alive"
        "checkov.io/skip2" = "CKV_K8S_9=a one-shot Job serves nothing: no readiness"
        "checkov.io/skip3" = "CKV_K8S_43=the tag is pinned; mirror it and pin the mirror digest in production (docs/DEPLOY.md)"
        "checkov.io/skip4" = "CKV_K8S_15=a pinned tag needs no Always pull"
        "checkov.io/skip5" = "CKV_K8S_35=psql takes its password from PGPASSWORD"
      }
    }
    spec = {
      backoffLimit            = 6
      ttlSecondsAfterFinished = 86400
      template = {
        metadata = { labels = local.database_labels }
        spec = {
          restartPolicy                = "OnFailure"
          automountServiceAccountToken = false
          securityContext              = { runAsNonRoot = true, runAsUser = 10999, runAsGroup = 10999, seccompProfile = { type = "RuntimeDefault" } }
          containers = [{
            name    = "create-database"
            image   = "postgres:17.6-alpine"
            command = ["sh", "-c", local.create_database]
            env = [
              { name = "PGHOST", value = var.postgres_host },
              # the chart's superuser creates the database, owned by the user MLflow connects as
              { name = "PGUSER", value = "postgres" },
              { name = "PGPASSWORD", valueFrom = { secretKeyRef = { name = var.postgres_secret, key = "postgres-password" } } },
              { name = "OWNER", valueFrom = { secretKeyRef = { name = var.postgres_secret, key = "username" } } },
              { name = "PGDATABASE", value = "postgres" },
            ]
            resources = { requests = { cpu = "50m", memory = "64Mi" }, limits = { cpu = "200m", memory = "128Mi" } }
            securityContext = {
              allowPrivilegeEscalation = false
              readOnlyRootFilesystem   = true
              capabilities             = { drop = ["ALL"] }
            }
          }]
        }
      }
    }
  }
}

resource "helm_release" "mlflow" {
  name       = "fusion-mlflow"
  repository = "https://community-charts.github.io/helm-charts"
  chart      = "mlflow"
  version    = "1.11.5"
  namespace  = var.namespace
  atomic     = true
  depends_on = [kubernetes_manifest.mlflow_database]
  values = [yamlencode({
    image      = { tag = "3.17.2" }                         # the MLflow of uv.lock
    initImages = { mlflowDbMigration = { tag = "3.17.2" } } # the schema migrated by the same MLflow
    backendStore = {
      databaseMigration = true
      postgres = {
        enabled  = true
        host     = var.postgres_host
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
    extraEnvVars   = var.s3_endpoint_url == null ? {} : { MLFLOW_S3_ENDPOINT_URL = var.s3_endpoint_url }
    extraPodLabels = { "app.kubernetes.io/part-of" = "fusion", "fusion.io/object-store" = "true" }
    # MLflow >= 3.5 answers 403 to a Host header that is not localhost or a private IP: its Service names
    serverAllowedHosts = ["fusion-mlflow", "fusion-mlflow:*", "fusion-mlflow.${var.namespace}.svc", "fusion-mlflow.${var.namespace}.svc:*", "fusion-mlflow.${var.namespace}.svc.cluster.local:*"]
    resources          = { requests = { cpu = "250m", memory = "1Gi" }, limits = { cpu = "1", memory = "2Gi" } }
    service            = { port = 5000 }
  })]
}
