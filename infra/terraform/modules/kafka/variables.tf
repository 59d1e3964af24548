variable "namespace" {
  description = "namespace of the Kafka cluster"
  type        = string
}

variable "replicas" {
  description = "brokers, each also a KRaft controller"
  type        = number
}

variable "storage_size" {
  description = "persistent volume per broker"
  type        = string
}

variable "storage_class" {
  description = "storage class of the brokers' volumes; null: the cluster default"
  type        = string
}

variable "topics" {
  description = "topic names Fusion uses"
  type        = list(string)
}

variable "partitions" {
  description = "partitions per topic"
  type        = number
}
