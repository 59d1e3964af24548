variable "namespace" {
  description = "namespace of Prefect, its worker, flow runs and the trigger"
  type        = string
}

variable "image" {
  description = "Fusion's image: flow runs, their Dask clusters and the trigger run it"
  type        = string
}

variable "storage_class" {
  description = "storage class of PostgreSQL's volume; null: the cluster default"
  type        = string
  default     = null
}

variable "postgres_secret" {
  description = "Secret with the PostgreSQL credentials (keys username = prefect, password, postgres-password, connection-string)"
  type        = string
}

variable "secrets_env_secret" {
  description = "Secret whose keys become environment variables of flow runs, Dask pods and the trigger"
  type        = string
}

variable "fusion_env" {
  description = "plain environment of every Fusion pod (service addresses)"
  type        = map(string)
}

variable "dask_cpu_workers" {
  description = "CPU workers of a flow run's Dask cluster"
  type        = number
}

variable "dask_gpu_workers" {
  description = "GPU workers of a flow run's Dask cluster (0: none)"
  type        = number
}

variable "gpu_node_selector" {
  description = "labels of the GPU node pool"
  type        = map(string)
}

variable "gpu_node_taint_key" {
  description = "taint key of the GPU node pool (NoSchedule)"
  type        = string
}

variable "config_file" {
  description = "dataset config inside the image"
  type        = string
}
