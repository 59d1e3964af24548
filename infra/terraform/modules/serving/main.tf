# Ray Serve on a KubeRay RayService: serving/ by its import path, with the arguments `fusion serve`
# gives it (serving.app.serving_args; tests/infra checks they validate as ServingArgs). The head runs
# Serve's proxy; workers hold the model replicas. The registered model loads from MLflow, online
# features from Redis, so pods carry no model file.

locals {
  labels             = { "app.kubernetes.io/name" = "fusion-serving", "app.kubernetes.io/part-of" = "fusion", "fusion.io/object-store" = "true" }
  env                = [for k, v in var.fusion_env : { name = k, value = v }]
  env_from           = [{ secretRef = { name = var.secrets_env_secret } }]
  container_security = { allowPrivilegeEscalation = false, readOnlyRootFilesystem = true, capabilities = { drop = ["ALL"] } }
  # Ray writes its session under /tmp, its object store in /dev/shm, caches under HOME
  mounts  = [{ name = "tmp", mountPath = "/tmp" }, { name = "shm", mountPath = "/dev/shm" }, { name = "home", mountPath = "/var/lib/fusion" }]
  volumes = [{ name = "tmp", emptyDir = {} }, { name = "shm", emptyDir = { medium = "Memory" } }, { name = "home", emptyDir = {} }]
  pod_metadata = {
    labels = local.labels
    annotations = {
      "checkov.io/skip1" = "CKV_K8S_8=KubeRay adds its own liveness probe to every Ray container it runs; the log sidecar serves nothing"
      "checkov.io/skip2" = "CKV_K8S_9=KubeRay adds its own readiness probe to every Ray container it runs; the log sidecar serves nothing"
      "checkov.io/skip3" = "CKV_K8S_35=Fusion reads its secret settings from FUSION_* environment variables (file references: issue Observability and security)"
    }
  }
  pod_security = { runAsNonRoot = true, runAsUser = 10001, seccompProfile = { type = "RuntimeDefault" } }
  # what the head's and the workers' containers share, then what each adds
  container = {
    image           = var.image
    imagePullPolicy = "IfNotPresent"
    env             = local.env
    envFrom         = local.env_from
    securityContext = local.container_security
    volumeMounts    = local.mounts
  }
  head = {
    name      = "ray-head"
    ports     = [{ name = "serve", containerPort = 8000, protocol = "TCP" }, { name = "gcs", containerPort = 6379, protocol = "TCP" }]
    resources = { requests = { cpu = "1", memory = "4Gi" }, limits = { cpu = "2", memory = "4Gi" } }
  }
  worker = {
    name      = "ray-worker"
    resources = { requests = { cpu = "2", memory = "4Gi" }, limits = { cpu = "2", memory = "4Gi" } }
  }
  # Serve writes a replica's log lines (Fusion's JSON: serving/logs.py) to files in Ray's session folder,
  # not to the pod's output: this sidecar copies them to its stdout (`kubectl logs <pod> -c replica-logs`)
  replica_logs = {
    name            = "replica-logs"
    image           = var.image
    imagePullPolicy = "IfNotPresent"
    command         = ["python", "-m", "serving.logs", "/tmp/ray/session_latest/logs/serve"]
    securityContext = local.container_security
    volumeMounts    = [{ name = "tmp", mountPath = "/tmp", readOnly = true }]
    resources       = { requests = { cpu = "50m", memory = "128Mi" }, limits = { cpu = "200m", memory = "256Mi" } }
  }
  serve_args = {
    model_name              = var.model_name
    record_fields           = var.record_fields
    tracking_uri            = var.fusion_env["FUSION_MLFLOW_TRACKING_URI"]
    lake_uri                = var.fusion_env["FUSION_LAKE_URI"]
    redis_url               = "env:FUSION_REDIS_URL" # from the secrets Secret: the URL holds the password
    kafka_bootstrap_servers = var.fusion_env["FUSION_KAFKA_BOOTSTRAP_SERVERS"]
    promoted_topic          = "fusion.model.promoted"
    serving                 = { replicas = var.replicas, port = 8000, host = "0.0.0.0" }
  }
  serve_config = {
    http_options = { host = "0.0.0.0", port = 8000 }
    applications = [{
      name         = "fusion"
      import_path  = "serving.app:build_app"
      route_prefix = "/"
      args         = local.serve_args
    }]
  }
}

resource "kubernetes_manifest" "ray_service" {
  manifest = {
    apiVersion = "ray.io/v1"
    kind       = "RayService"
    metadata   = { name = "fusion-serving", namespace = var.namespace, labels = local.labels }
    spec = {
      serveConfigV2 = yamlencode(local.serve_config)
      rayClusterConfig = {
        rayVersion = var.ray_version
        headGroupSpec = {
          rayStartParams = { "num-cpus" = "0" } # the head runs the proxy and controller, no replicas
          template = {
            metadata = local.pod_metadata
            spec = {
              automountServiceAccountToken = false
              securityContext              = local.pod_security
              volumes                      = local.volumes
              containers                   = [merge(local.container, local.head)]
            }
          }
        }
        workerGroupSpecs = [{
          groupName      = "replicas"
          replicas       = var.ray_worker_replicas
          minReplicas    = 1
          maxReplicas    = var.ray_worker_replicas * 2
          rayStartParams = {}
          template = {
            metadata = local.pod_metadata
            spec = {
              automountServiceAccountToken = false
              securityContext              = local.pod_security
              volumes                      = local.volumes
              containers                   = [merge(local.container, local.worker), local.replica_logs]
            }
          }
        }]
      }
    }
  }
}
