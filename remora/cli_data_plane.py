"""`remora proxy` and `remora gateway` from their parsed arguments: checks, options, run
(part of the command line, as cli.py: it may import any layer)."""
from __future__ import annotations

import os
import sys


def _load(paths, namespace=None):
    from remora.config.loader import ConfigError, load_mesh_config
    try:
        return load_mesh_config(paths, namespace)
    except ConfigError as err:
        print(f"remora: invalid configuration\n{err}", file=sys.stderr)
        return None
    except OSError as err:
        print(f"remora: cannot read configuration: {err}", file=sys.stderr)
        return None


def _origination_files_ok(config, options) -> bool:
    """The files DestinationRules name for TLS origination exist and parse (else the config is refused)."""
    from remora.config.loader import ConfigError
    from remora.proxy.upstream.cluster import build_clusters
    from remora.proxy.upstream.tls_origination import OriginContexts, check_origination
    clusters = [c for info in build_clusters(config, options.identity).values() for c in info.clusters.values()]
    try:
        check_origination(clusters, OriginContexts(options.credentials_dir))
    except ConfigError as err:
        print(f"remora: invalid configuration\n{err}", file=sys.stderr)
        return False
    return True


def _gateway_ok(config, options) -> bool:
    """The gateway's servers can be served (certificates readable; ConfigError otherwise)."""
    from remora.config.loader import ConfigError
    from remora.proxy.process.gateway import compile_gateway
    from remora.proxy.upstream.cluster import build_clusters
    try:
        _, warnings = compile_gateway(config, build_clusters(config, options.identity), options)
    except ConfigError as err:
        print(f"remora: invalid configuration\n{err}", file=sys.stderr)
        return False
    for warning in warnings:
        print(f"remora gateway: warning: {warning}", file=sys.stderr)
    return True


def _credential_source(args):
    """`--credentials-from-kubernetes`: the Secrets of --namespace (remora/kube/secrets.py),
    handed to the gateway as its CredentialSource; None without the flag, False on a usage error."""
    if not getattr(args, "credentials_from_kubernetes", False):
        if getattr(args, "kubeconfig", None):
            print("remora: --kubeconfig goes with --credentials-from-kubernetes", file=sys.stderr)
            return False
        return None
    from remora.kube.secrets import KubernetesCredentials
    return KubernetesCredentials(args.namespace, args.kubeconfig)


def run_from_args(args) -> int:
    gateway = args.command == "gateway"
    if gateway:   # a gateway has no app, no capture and no outbound listener of its own
        args.inbound_port = args.app_port = None
        args.outbound_port, args.inbound_bind, args.capture = 0, "127.0.0.1", False
        args.outbound_traffic_policy = "ALLOW_ANY"
    from remora.proxy.log_levels import configure
    configure("remora gateway" if gateway else "remora proxy", args.log_level, args.component_log_level)
    from remora.proxy.process.listener import ListenerSettings
    from remora.proxy.process.run import run_proxy
    from remora.proxy.security.identity import WorkloadIdentity
    from remora.proxy.process.worker import ProxyOptions

    if (args.inbound_port is None) != (args.app_port is None):
        print("remora: --inbound-port and --app-port go together", file=sys.stderr)
        return 2
    credential_source = _credential_source(args) if gateway else None
    if credential_source is False:
        return 2
    control = args.control
    if control is None and not args.mesh_config:
        control = os.environ.get("REMORA_CONTROL") or None
    if args.mesh_config and control:
        print("remora: give either --mesh-config PATH (config from files) or --control URL "
              "(config from a control server), not both", file=sys.stderr)
        return 2
    if not args.mesh_config and not control:
        print("remora: give --mesh-config PATH (config from files) or --control URL "
              "(config from a control server; or set REMORA_CONTROL)", file=sys.stderr)
        return 2
    if args.state_dir and not control:
        print("remora: --state-dir keeps pushed config; it goes with --control", file=sys.stderr)
        return 2
    if args.token is not None and not control:
        print("remora: --token gets a certificate from the control server's CA; it goes with --control",
              file=sys.stderr)
        return 2
    token = args.token if args.token is not None else (os.environ.get("REMORA_TOKEN") or None) if control else None
    if token is not None and not token.strip():
        print("remora: --token: empty", file=sys.stderr)
        return 2
    if args.cert_dir and token:
        print("remora: give either --cert-dir DIR (certificate from files) or --token (certificate "
              "from the control server's CA), not both", file=sys.stderr)
        return 2
    if args.cert_dir:
        from remora.proxy.security.tls import CertDirError, load_cert_dir
        try:
            load_cert_dir(args.cert_dir)
        except CertDirError as err:
            print(f"remora: --cert-dir: {err}", file=sys.stderr)
            return 2
    config = None
    if control:
        from remora.proxy.control.xds_client import control_urls
        try:
            control_urls(control)
        except ValueError as err:
            print(f"remora: --control: {err}", file=sys.stderr)
            return 2
    else:
        config = _load(args.mesh_config, args.mesh_config_namespace)
        if config is None:
            return 1
        from remora.config.analysis import certificate_warnings
        for warning in certificate_warnings(config, has_certificate=bool(args.cert_dir)):
            print(f"remora proxy: warning: {warning}", file=sys.stderr)
        if config.request_authentications:
            # No control server to inline jwksUri keys: fetch them once, now (docs/security.md).
            from remora.xds.jwks_fetch import fetch_for_files
            config = fetch_for_files(config, lambda line: print(f"remora proxy: {line}", file=sys.stderr))
    if args.credentials_dir and not os.path.isdir(args.credentials_dir):
        print(f"remora: --credentials-dir: {args.credentials_dir} is not a directory", file=sys.stderr)
        return 2
    capture = None
    if args.capture:   # the proxy knows capture only through this object (proxy/process/capture_seam.py)
        from remora.intercept.support import TransparentCapture
        capture = TransparentCapture()
    options = ProxyOptions(
        mesh_config=args.mesh_config, outbound_port=args.outbound_port, admin_port=args.admin_port,
        inbound_port=args.inbound_port, app_port=args.app_port, bind=args.bind,
        inbound_bind=args.inbound_bind, admin_bind=args.admin_bind, workers=args.workers,
        drain_seconds=args.drain_seconds, retry_buffer_bytes=args.retry_buffer_bytes,
        access_log=args.access_log, prometheus_port=args.prometheus_port,
        prometheus_bind=args.prometheus_bind or args.admin_bind,
        health_port=args.health_port, health_bind=args.health_bind or args.admin_bind,
        istio_metrics=args.istio_metrics,
        access_log_format=args.access_log_format,
        trace_sampling=args.trace_sampling, otlp_endpoint=args.otlp_endpoint,
        listener=ListenerSettings(idle_timeout=args.idle_timeout,
                                  request_headers_timeout=args.request_headers_timeout,
                                  stream_idle_timeout=args.stream_idle_timeout,
                                  max_request_headers_count=args.max_request_headers_count,
                                  http2_max_concurrent_streams=args.http2_max_concurrent_streams,
                                  detection_timeout=args.protocol_detection_timeout,
                                  path_normalization=args.path_normalization),
        identity=WorkloadIdentity(service=args.service, namespace=args.namespace,
                                  service_account=args.service_account, labels=args.labels,
                                  workload=args.workload, trust_domain=args.trust_domain,
                                  node_id=args.node_id, locality=args.locality or ""),
        control=control, state_dir=args.state_dir, token=token.strip() if token else None,
        cert_dir=args.cert_dir, credentials_dir=args.credentials_dir, capture=capture,
        outbound_traffic_policy=args.outbound_traffic_policy,
        gateway=gateway, gateway_port_map=getattr(args, "port_map", {}),
        credential_source=credential_source,
    )
    if config is not None and not _origination_files_ok(config, options):
        return 1
    # Secrets are read once the gateway's loop runs: run.py checks the config against them.
    if config is not None and gateway and credential_source is None and not _gateway_ok(config, options):
        return 1
    try:
        return run_proxy(options, config)
    except OSError as err:
        print(f"remora: cannot start: {err}", file=sys.stderr)
        return 1
