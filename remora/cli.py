"""The `remora` command: `remora proxy | wait | control | apply | get | delete | status | proxy-config | token | analyze | envoy-config | inject | iptables`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from remora.config.duration import parse_duration
from remora.proxy.codec.paths import DEFAULT_LEVEL as DEFAULT_PATH_LEVEL, LEVELS as PATH_LEVELS


def _seconds(text: str) -> float:
    try:
        return parse_duration(text) if not text.replace(".", "", 1).isdigit() else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _labels(text: str) -> dict[str, str]:
    from remora.proxy.security.identity import parse_labels
    try:
        return parse_labels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"percentage must be between 0 and 100, got {text}")
    return value


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def remora_version() -> str:
    """The installed distribution's version; pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("remora")
    except PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remora", description="A service-mesh sidecar that reads Istio YAML.")
    parser.add_argument("--version", action="version", version=f"remora {remora_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    proxy = sub.add_parser("proxy", help="run the sidecar proxy")
    proxy.add_argument("--mesh-config", action="append", default=[], metavar="PATH",
                       help="Istio YAML file or directory (repeatable); or use --control")
    # Not -n/--namespace: that is the workload's namespace (identity group below), which
    # need not be the namespace of the config files.
    proxy.add_argument("--mesh-config-namespace", default=None, metavar="NS",
                       help="namespace of --mesh-config documents without metadata.namespace "
                            "(kubectl apply -n; default: default)")
    proxy.add_argument("--control", default=None, metavar="URL",
                       help="control server to take config from, e.g. http://127.0.0.1:15010 "
                            "(default: $REMORA_CONTROL when --mesh-config is not given)")
    proxy.add_argument("--state-dir", default=None, metavar="DIR",
                       help="where the last good pushed config is kept (with --control; default "
                            "$TMPDIR/remora-proxy-<namespace>-<workload>-<admin-port>)")
    proxy.add_argument("--token", default=None, metavar="TOKEN",
                       help="join token (from `remora token create`) for this workload's certificate "
                            "from the control server's CA (default: $REMORA_TOKEN; needs --control)")
    proxy.add_argument("--cert-dir", default=None, metavar="DIR",
                       help="workload certificate from files instead of the CA, Istio's layout: "
                            "cert-chain.pem, key.pem, root-cert.pem")
    proxy.add_argument("--credentials-dir", default=None, metavar="DIR",
                       help="DestinationRule tls.credentialName NAME is read from DIR/NAME/ (tls.crt, "
                            "tls.key, ca.crt: a mounted Secret); see docs/security.md")
    proxy.add_argument("--outbound-port", type=int, default=15001)
    proxy.add_argument("--admin-port", type=int, default=15000)
    proxy.add_argument("--inbound-port", type=int, default=None)
    proxy.add_argument("--app-port", type=int, default=None, help="local app port behind the inbound listener")
    proxy.add_argument("--bind", default="127.0.0.1", help="outbound listener address")
    proxy.add_argument("--inbound-bind", default="127.0.0.1", help="inbound listener address")
    proxy.add_argument("--admin-bind", default="127.0.0.1",
                       help="admin address; keep it on loopback: admin can quit the proxy")
    proxy.add_argument("--prometheus-port", type=int, default=15090,
                       help="serve /stats/prometheus here too (0: off)")
    proxy.add_argument("--prometheus-bind", default=None, metavar="ADDR",
                       help="address of --prometheus-port (default: --admin-bind)")
    proxy.add_argument("--health-port", type=int, default=15021,
                       help="serve GET /healthz/ready here, what kubelet probes (0: off)")
    proxy.add_argument("--health-bind", default=None, metavar="ADDR",
                       help="address of --health-port (default: --admin-bind); 0.0.0.0 in a pod, "
                            "where kubelet probes come from the node")
    proxy.add_argument("--no-istio-metrics", dest="istio_metrics", action="store_false",
                       help="no Istio standard metrics and no metadata exchange with peers")
    proxy.add_argument("--workers", type=int, default=1, help="SO_REUSEPORT worker processes")
    proxy.add_argument("--drain-seconds", type=_seconds, default=5.0,
                       help="on SIGTERM or /quitquitquit, exit when no connection is left or "
                            "after this long (default 5s)")
    proxy.add_argument("--retry-buffer-bytes", type=int, default=1 << 20,
                       help="request body kept for replay on retry; longer bodies are not retried")
    proxy.add_argument("--access-log", choices=["stdout", "off"], default="stdout")
    proxy.add_argument("--access-log-format", choices=["text", "json"], default="text",
                       help="encoding of the `envoy` access-log provider (meshConfig.accessLogEncoding)")
    proxy.add_argument("--trace-sampling", type=_percent, default=1.0, metavar="PERCENT",
                       help="percent of new traces sampled (Istio's randomSamplingPercentage; default 1)")
    proxy.add_argument("--otlp-endpoint", type=_http_url, default=None, metavar="URL",
                       help="export spans by OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces")
    proxy.add_argument("--idle-timeout", type=_seconds, default=300.0,
                       help="close keep-alive client connections idle this long")
    proxy.add_argument("--request-headers-timeout", type=_seconds, default=10.0,
                       help="answer 408 when a request head takes longer than this")
    proxy.add_argument("--stream-idle-timeout", type=_seconds, default=300.0,
                       help="end a request with no activity in either direction this long (request "
                            "bytes read, response bytes received or drained by the client): 408 SI")
    proxy.add_argument("--max-request-headers-count", type=int, default=100,
                       help="answer 431 to a request with more header lines (Envoy's default 100)")
    proxy.add_argument("--http2-max-concurrent-streams", type=int, default=100,
                       help="SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients (default 100; "
                            "Envoy's 2147483647 is unbounded)")
    proxy.add_argument("--path-normalization", choices=list(PATH_LEVELS), default=DEFAULT_PATH_LEVEL,
                       help="request-path normalization before routing and policy, Istio's "
                            "meshConfig.pathNormalization (default BASE; docs/security.md)")
    proxy.add_argument("--protocol-detection-timeout", type=_seconds, default=15.0,
                       help="inbound mTLS: wait this long for a client's first bytes (TLS or "
                            "plaintext); then STRICT closes, PERMISSIVE serves plaintext")
    capture = proxy.add_argument_group("transparent capture (after `remora iptables`; docs/interception.md)")
    capture.add_argument("--capture", action="store_true",
                         help="the listeners receive iptables-redirected connections: original "
                              "destinations, TCP proxying, passthrough; inbound to every app port")
    capture.add_argument("--outbound-traffic-policy", choices=["ALLOW_ANY", "REGISTRY_ONLY"],
                         default="ALLOW_ANY", help="captured traffic to no mesh service: pass it "
                         "through (default) or refuse it (502 NR for HTTP, closed for TCP)")
    identity = proxy.add_argument_group("workload identity (registration, telemetry labels, mTLS)")
    identity.add_argument("--service", default=None, help="the service this workload serves (e.g. reviews)")
    identity.add_argument("--namespace", default="default")
    identity.add_argument("--service-account", default="default")
    identity.add_argument("--labels", type=_labels, default={}, metavar="K=V,...",
                          help="workload labels, e.g. app=reviews,version=v2")
    identity.add_argument("--workload", default=None, help="workload name (default: app-version)")
    identity.add_argument("--trust-domain", default="cluster.local")
    identity.add_argument("--node-id", default=None, help="unique sidecar id (default: workload.ns~host~pid)")

    from remora.proxy.process.wait import add_wait_parser
    add_wait_parser(sub, _http_url, _seconds)
    analyze = sub.add_parser("analyze", help="validate Istio YAML offline, like istioctl analyze")
    analyze.add_argument("paths", nargs="+")
    analyze.add_argument("-n", "--namespace", default=None,
                         help="namespace of documents without metadata.namespace (istioctl analyze -n; "
                              "default: default)")
    from remora.xds.envoy_command import add_envoy_config_parser
    add_envoy_config_parser(sub, _labels)
    _add_control_commands(sub)
    from remora.kube.command import add_inject_parser
    add_inject_parser(sub, _http_url)
    from remora.intercept.command import add_iptables_parser
    add_iptables_parser(sub)
    return parser


CLIENT_COMMANDS = ("apply", "get", "delete", "status", "proxy-config", "token")


def _add_control_commands(sub) -> None:
    control = sub.add_parser("control", help="run the control server (config API + sidecar streams)")
    control.add_argument("--config-dir", required=True, metavar="DIR",
                         help="directory of Istio YAML files, watched for changes")
    control.add_argument("--listen", default="127.0.0.1:15010", metavar="HOST:PORT")
    control.add_argument("--state-dir", default=None, metavar="DIR",
                         help="where applied resources, registrations, the CA root and join tokens persist "
                              "(default: memory only; the CA in a temporary directory)")
    control.add_argument("--trust-domain", default="cluster.local")
    control.add_argument("--grace-period", type=_seconds, default=10.0,
                         help="how long a disconnected sidecar stays registered")
    control.add_argument("--debounce", type=_seconds, default=0.1,
                         help="quiet time after a change before pushing")
    control.add_argument("--max-debounce", type=_seconds, default=1.0,
                         help="longest a push waits under a constant stream of changes")
    control.add_argument("--jwks-refresh-interval", type=_seconds, default=1200.0,
                         help="how often RequestAuthentication jwksUri keys are fetched again "
                              "(istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL, default 20m)")
    control.add_argument("--admin-token-file", default=None, metavar="FILE",
                         help="the admin token (a Kubernetes Secret, say) the admin API requires; default: "
                              "<state-dir>/admin-token, created 0600 on first start (without --state-dir: "
                              "made in memory and printed once on stderr)")
    ca = control.add_argument_group("certificate authority (default: a self-signed root in <state-dir>/ca)")
    ca.add_argument("--ca-cert", default=None, metavar="PEM", help="plug-in CA: the issuing CA certificate")
    ca.add_argument("--ca-key", default=None, metavar="PEM", help="plug-in CA: its private key")
    ca.add_argument("--ca-chain", default=None, metavar="PEM",
                    help="plug-in CA: its chain up to the root (not needed when --ca-cert is the root)")
    ca.add_argument("--cert-ttl", type=_seconds, default=24 * 3600.0,
                    help="lifetime of the workload certificates signed (default 24h, at most 90 days)")

    def client(name: str, help_: str, under=sub) -> argparse.ArgumentParser:
        parser = under.add_parser(name, help=help_)
        parser.add_argument("--control", default=None, metavar="URL",
                            help="control server URL (default $REMORA_CONTROL or http://127.0.0.1:15010)")
        auth = parser.add_argument_group(
            "admin token (else $REMORA_ADMIN_TOKEN; remora control keeps it in <state-dir>/admin-token)"
        ).add_mutually_exclusive_group()
        auth.add_argument("--admin-token-file", default=None, metavar="FILE", help="file holding the admin token")
        auth.add_argument("--admin-token", default=None, metavar="TOKEN",
                          help="the admin token itself (visible to other users in the process list: "
                               "prefer the file or the environment variable)")
        auth.add_argument("--state-dir", default=None, metavar="DIR",
                          help="the --state-dir of a control server on this machine: its admin-token file "
                               "(used after $REMORA_ADMIN_TOKEN; refused for a non-loopback --control)")
        return parser

    apply = client("apply", "create or update resources from YAML (like kubectl apply)")
    apply.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                       help="YAML file, or - for stdin (repeatable)")
    apply.add_argument("-n", "--namespace", default=None,
                       help="namespace of documents without metadata.namespace; a document naming "
                            "another one is refused (kubectl apply -n)")
    get = client("get", "list resources, or show one")
    get.add_argument("kind", help="ServiceEntry|WorkloadEntry|VirtualService|DestinationRule, or se|we|vs|dr")
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace", default=None, help="namespace (default: all for a list, default for a name)")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    delete = client("delete", "delete a resource applied through the API")
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.add_argument("-n", "--namespace", default="default")
    client("status", "sidecars and how their config is synced (like istioctl proxy-status)")
    proxy_config = client("proxy-config", "a sidecar's routes, clusters or endpoints, from its admin server")
    proxy_config.add_argument("what", choices=["routes", "clusters", "endpoints"])
    proxy_config.add_argument("sidecar", help="node id (or a unique prefix) as `remora status` shows it")
    sub.add_parser("bench", add_help=False,
                   help="Remora vs Envoy benchmarks (python -m benchmarks; `remora bench --help`)")
    token = sub.add_parser("token", help="join tokens: the credential a sidecar presents to get its certificate")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = client("create", "a new token; printed on the last line, once", token_sub)
    create.add_argument("--namespace", required=True)
    create.add_argument("--service-account", required=True)
    create.add_argument("--ttl", type=_seconds, default=24 * 3600.0, help="how long the token is valid (default 24h)")
    client("list", "every token's id, identity, expiry and state (never secrets)", token_sub)
    revoke = client("revoke", "revoke a token by id", token_sub)
    revoke.add_argument("id", help="token id as `remora token list` shows it (or the whole token)")


def _bench(argv: list[str]) -> int:
    """`remora bench ARGS` becomes `python -m benchmarks ARGS` (the harness's own process, by
    exec: its signal handling and exit status are unchanged). The harness lives in the source
    tree (benchmarks/ next to remora/), not in the installed package, so the runtime package
    never imports it: the child finds it through PYTHONPATH, ahead of any other `benchmarks`."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__main__.py").is_file():
        print(f"remora bench: needs a source checkout: no benchmarks/ next to {root / 'remora'} "
              "(clone the repository and `pip install -e '.[bench]'`)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    launch = "import sys; from benchmarks.__main__ import main; sys.exit(main(sys.argv[1:], prog='remora bench'))"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-P", "-c", launch, *argv], env)   # -P: not the cwd first
    return 0   # not reached: exec replaced this process


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every argument, --help included, belongs to the harness
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "proxy":
        return _proxy(args)
    if args.command == "wait":
        from remora.proxy.process.wait import run_wait
        return run_wait(args)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "envoy-config":
        from remora.xds.envoy_command import run_envoy_config
        return run_envoy_config(args)
    if args.command == "control":
        from remora.xds.commands import run_control
        return run_control(args)
    if args.command == "inject":
        from remora.kube.command import run_inject
        return run_inject(args)
    if args.command == "iptables":
        from remora.intercept.command import run_iptables
        return run_iptables(args)
    if args.command in CLIENT_COMMANDS:
        from remora.xds.commands import run_client
        return run_client(args.command, args)
    return 2


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


def _analyze(args) -> int:
    # The control server's own validation (files read and checked the same way), so a
    # directory that passes here is accepted by `remora control --config-dir`.
    from remora.config.loader import ConfigError
    from remora.xds.store import read_sources, validate_documents
    docs, issues, warnings = read_sources(args.paths, args.namespace)
    try:
        config = validate_documents(docs, issues)
    except ConfigError as err:
        print(f"remora: invalid configuration\n{err}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}")
    from remora.config.analysis import analysis_warnings
    for warning in [*config.warnings, *analysis_warnings(config)]:
        print(f"warning: {warning}")
    for note in config.notes:
        print(f"info: {note}")
    print(f"ok: configuration version {config.version} is valid")
    return 0


def _proxy(args) -> int:
    from remora.proxy.process.listener import ListenerSettings
    from remora.proxy.process.run import run_proxy
    from remora.proxy.security.identity import WorkloadIdentity
    from remora.proxy.process.worker import ProxyOptions

    if (args.inbound_port is None) != (args.app_port is None):
        print("remora: --inbound-port and --app-port go together", file=sys.stderr)
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
        from remora.proxy.control.xds_client import stream_url
        try:
            stream_url(control)
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
                                  node_id=args.node_id),
        control=control, state_dir=args.state_dir, token=token.strip() if token else None,
        cert_dir=args.cert_dir, credentials_dir=args.credentials_dir, capture=capture,
        outbound_traffic_policy=args.outbound_traffic_policy,
    )
    if config is not None and not _origination_files_ok(config, options):
        return 1
    try:
        return run_proxy(options, config)
    except OSError as err:
        print(f"remora: cannot start: {err}", file=sys.stderr)
        return 1
