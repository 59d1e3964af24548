variable "namespace" {
  description = "namespace of the RayService"
  type        = string
}

variable "image" {
  description = "Fusion's image (Ray, serving/ and the model libraries are in it)"
  type        = string
}

variable "secrets_env_secret" {
  description = "Secret whose keys become environment variables (FUSION_REDIS_URL with its password, AWS_*)"
  type        = string
}

variable "fusion_env" {
  description = "plain environment of every Fusion pod (service addresses)"
  type        = map(string)
}

variable "replicas" {
  description = "Ray Serve model replicas (serving.replicas)"
  type        = number
}

variable "ray_worker_replicas" {
  description = "Ray worker pods that hold the model replicas"
  type        = number
}

variable "ray_version" {
  description = "Ray version in the image (uv.lock's ray); KubeRay needs it"
  type        = string
  default     = "2.60.0"
}

variable "model_name" {
  description = "registered model served (dataset.model.registered_name)"
  type        = string
  default     = "flights_delay"
}

variable "record_fields" {
  description = "the primary table's columns and types, what /v1/predict accepts (dataset.source.tables.<primary>.columns)"
  type        = map(string)
  default = {
    year     = "int32", month = "int32", day = "int32", dep_time = "int32", sched_dep_time = "int32", dep_delay = "float64",
    arr_time = "int32", sched_arr_time = "int32", arr_delay = "float64", carrier = "str", flight = "int32",
    tailnum  = "str", origin = "str", dest = "str", air_time = "float64", distance = "float64", hour = "int32",
    minute   = "int32", time_hour = "datetime"
  }
}
