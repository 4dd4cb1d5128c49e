"""The benchmarks' Envoy renderer: a re-export of `remora.xds.envoy`, the one source of truth."""
from remora.xds.envoy import (ISTIO_DEFAULT_RETRY_ON, UNLIMITED, Unsupported, cluster_name,
                              render_bootstrap, render_inbound_bootstrap)

__all__ = ["ISTIO_DEFAULT_RETRY_ON", "UNLIMITED", "Unsupported", "cluster_name",
           "render_bootstrap", "render_inbound_bootstrap"]
