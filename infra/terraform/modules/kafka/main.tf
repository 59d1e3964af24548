# Kafka in KRaft mode by Strimzi (kafka.strimzi.io/v1, served by the 0.51 operator and by 1.x), and the
# topics Fusion uses, named as its events settings name them.

locals {
  labels = { "strimzi.io/cluster" = "fusion" }
  volume = { id = 0, type = "persistent-claim", size = var.storage_size, deleteClaim = false }
  # the storage class only when one is given: the cluster default otherwise
  class        = { class = var.storage_class }
  volume_class = { for k, v in local.class : k => v if v != null }
}

resource "kubernetes_manifest" "node_pool" {
  manifest = {
    apiVersion = "kafka.strimzi.io/v1"
    kind       = "KafkaNodePool"
    metadata   = { name = "brokers", namespace = var.namespace, labels = local.labels }
    spec = {
      replicas = var.replicas
      roles    = ["controller", "broker"]
      storage = {
        type    = "jbod"
        volumes = [merge(local.volume, local.volume_class)]
      }
      resources = { requests = { cpu = "500m", memory = "2Gi" }, limits = { cpu = "2", memory = "4Gi" } }
    }
  }
}

resource "kubernetes_manifest" "kafka" {
  manifest = {
    apiVersion = "kafka.strimzi.io/v1"
    kind       = "Kafka"
    metadata   = { name = "fusion", namespace = var.namespace }
    spec = {
      kafka = {
        listeners = [
          # inside the namespace only (module platform's policies); TLS and SCRAM: issue "Observability and security"
          { name = "plain", port = 9092, type = "internal", tls = false },
        ]
        config = {
          "offsets.topic.replication.factor"         = min(var.replicas, 3)
          "transaction.state.log.replication.factor" = min(var.replicas, 3)
          "transaction.state.log.min.isr"            = max(min(var.replicas, 3) - 1, 1)
          "default.replication.factor"               = min(var.replicas, 3)
          "min.insync.replicas"                      = max(min(var.replicas, 3) - 1, 1)
          "auto.create.topics.enable"                = false
        }
      }
      entityOperator = { topicOperator = {}, userOperator = {} }
    }
  }
  depends_on = [kubernetes_manifest.node_pool]
}

resource "kubernetes_manifest" "topic" {
  for_each = toset(var.topics)
  manifest = {
    apiVersion = "kafka.strimzi.io/v1"
    kind       = "KafkaTopic"
    # Kubernetes names allow no dots in this position: the resource is named by the topic with
    # dashes, spec.topicName keeps Fusion's name
    metadata = { name = replace(each.value, ".", "-"), namespace = var.namespace, labels = local.labels }
    spec = {
      topicName  = each.value
      partitions = var.partitions
      replicas   = min(var.replicas, 3)
      config     = { "retention.ms" = 604800000 }
    }
  }
  depends_on = [kubernetes_manifest.kafka]
}
