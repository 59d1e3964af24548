variable "namespace" {
  description = "namespace to create"
  type        = string
}

variable "labels" {
  description = "labels of the namespace"
  type        = map(string)
}
