"""Kubernetes: `remora inject` (the sidecar added to workload manifests); see docs/kubernetes.md."""
