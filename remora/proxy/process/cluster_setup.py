"""Cluster setup for one worker: a compiled cluster gets its outlier detector, circuit
breaker and endpoint pools (with the dialer each endpoint's TLS mode asks for).

Rules:
- One pool per endpoint and connection kind (PoolRegistry.pool_for): plaintext, mTLS
  (ISTIO_MUTUAL, MtlsDialer) or TLS origination (SIMPLE / MUTUAL, OriginationDialer),
  HTTP/1.1 or HTTP/2 as the cluster speaks upstream.
- DestinationRule `useClientProtocol: true`: each endpoint also gets an HTTP/2 pool
  (`Endpoint.h2_pool`), and the router sends a request that came over HTTP/2 there and
  any other over HTTP/1.1, as Envoy's USE_DOWNSTREAM_PROTOCOL does.
- A new config version keeps the previous version's stats, detector state and per-host
  counters for a cluster of the same name (prepare_cluster's docstring).
"""
from __future__ import annotations

from remora.proxy.upstream.cluster import Cluster, Endpoint
from remora.proxy.upstream.outlier import OutlierDetector
from remora.proxy.upstream.pool import PoolRegistry
from remora.proxy.upstream.slow_start import warm
from remora.proxy.upstream.tls_origination import OriginationDialer
from remora.proxy.upstream.upstream_tls import ISTIO_MUTUAL, MtlsDialer, is_required, outbound_sni


def prepare_cluster(cluster: Cluster, pools: PoolRegistry, previous: Cluster | None = None) -> None:
    """Give a compiled cluster its outlier detector (inheriting the previous version's
    state), circuit breaker and endpoint pools (mTLS dialers for ISTIO_MUTUAL endpoints).

    `previous` is the cluster of the same name in the version before. Envoy keeps a cluster's
    stats while a cluster of that name exists, whatever a push changed, and a host's while
    the host stays: so the new cluster takes over the previous ClusterStats object (requests
    still in flight on the old version count into the same object, the gauges stay right)
    and each endpoint's request and error counts by address. A name absent from the version
    before starts from zero (a cluster that went away and came back, as in Envoy)."""
    now = pools.loop.time()
    for ep in cluster.endpoints:
        ep.joined_at = now        # kept addresses take their old time back just below
    if previous is not None:
        cluster.stats = previous.stats
        _carry_endpoint_counts(previous, cluster)
    policy = cluster.traffic_policy
    cluster.detector = OutlierDetector(
        policy.outlier_detection if policy is not None else None, cluster.endpoints,
        pools.loop.time, on_panic_change=_panic_setter(cluster), cluster=cluster.name)
    if previous is not None and previous.detector is not None:
        cluster.detector.inherit(previous.detector)
    if cluster.warmup:
        warm(cluster, now)        # new endpoints start light (slow_start.py)
    cluster.circuit = pools.circuit_for(cluster.name)
    cluster.circuit.configure(cluster.traffic_policy)
    for ep in cluster.endpoints:
        ep.pool = _endpoint_pool(pools, cluster, ep, cluster.http2)
        if cluster.client_protocol:
            ep.h2_pool = _endpoint_pool(pools, cluster, ep, True)


def _endpoint_pool(pools: PoolRegistry, cluster: Cluster, ep: Endpoint, http2: bool):
    """The pool of one endpoint for one HTTP version, with the dialer its TLS mode asks for."""
    origin = cluster.origination
    mtls = ep.tls_mode == ISTIO_MUTUAL
    originate = origin is not None and ep.tls_mode == origin.mode
    pool = pools.pool_for(cluster.name, ep.host, ep.port, origin.key if originate else mtls, http2)
    pool.endpoint = ep
    if http2 and cluster.max_streams:
        pool.max_streams = cluster.max_streams
    pool.idle_timeout = cluster.idle_timeout
    pool.max_duration = cluster.max_connection_duration
    pool.cluster_stats = cluster.stats
    if mtls:
        pool.dialer = MtlsDialer(
            pools.tls, mesh_sni(cluster),
            cluster.naming, is_required(cluster.traffic_policy), cluster.name, ep.key,
            ep.service_account, pools.tls_stats_for(cluster.name), pools.tls_logged)
    elif originate:
        pool.dialer = OriginationDialer(origin, pools.origins, pools.tls_stats_for(cluster.name),
                                        cluster.name, http2)
        pool.by_host = pool.dialer.by_host
    return pool


def mesh_sni(cluster: Cluster) -> str:
    """The SNI of an mTLS connection: the DestinationRule's `tls.sni` when it gives one (the
    egress-gateway tasks route by it), else Istio's `outbound_.PORT_.SUBSET_.HOST`."""
    policy = cluster.traffic_policy
    tls = policy.tls if policy is not None else None
    if tls is not None and tls.sni:
        return tls.sni
    return outbound_sni(cluster.port, cluster.subset, cluster.service)


def _carry_endpoint_counts(previous: Cluster, cluster: Cluster) -> None:
    """Per-endpoint counters (/clusters) of endpoints kept by address. Only counters move:
    active_requests belongs to the old Endpoint object, which its requests in flight release."""
    before = {ep.key: ep for ep in previous.endpoints}
    for ep in cluster.endpoints:
        old = before.get(ep.key)
        if old is not None:
            ep.total_requests, ep.errors = old.total_requests, old.errors
            ep.joined_at = old.joined_at     # its slow start goes on (slow_start.py)


def _panic_setter(cluster: Cluster):
    """Below minHealthPercent the balancer ignores ejections (Envoy's panic mode)."""
    def set_panic(panic: bool) -> None:
        cluster.balancer.panic = panic
    return set_panic
