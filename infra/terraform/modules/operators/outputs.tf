output "versions" {
  description = "chart versions of the operators"
  value = {
    dask    = local.dask_operator_version
    kuberay = local.kuberay_version
    strimzi = local.strimzi_version
    eso     = local.eso_version
  }
}
