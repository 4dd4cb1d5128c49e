"""The `remora` command: `remora proxy | gateway | wait | control | apply | get | delete | status |
proxy-config | token | analyze | envoy-config | inject | webhook-config | iptables`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from remora.cli_arguments import (
    component_log_levels, http_url, labels, locality, log_level, percent, port_map, seconds,
)
from remora.cli_control import add_control_commands
from remora.proxy.codec.paths import DEFAULT_LEVEL as DEFAULT_PATH_LEVEL
from remora.proxy.codec.paths import LEVELS as PATH_LEVELS
from remora.version import remora_version


class _VersionAction(argparse._VersionAction):
    """`--version`, its text read when asked: importlib.metadata costs every command (the
    proxy too) 2.6 MiB of RSS when the version is looked up while building the parser."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings, dest=dest, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        self.version = f"remora {remora_version()}"
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remora", description="A service-mesh sidecar that reads Istio YAML.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    _add_data_plane_parser(sub, gateway=False)
    _add_data_plane_parser(sub, gateway=True)
    from remora.proxy.process.wait import add_wait_parser
    add_wait_parser(sub, http_url, seconds)
    analyze = sub.add_parser("analyze", help="validate Istio YAML offline, like istioctl analyze")
    analyze.add_argument("paths", nargs="+")
    analyze.add_argument("-n", "--namespace", default=None,
                         help="namespace of documents without metadata.namespace (istioctl analyze -n; "
                              "default: default)")
    from remora.xds.envoy_command import add_envoy_config_parser
    add_envoy_config_parser(sub, labels)
    add_control_commands(sub)
    from remora.kube.command import add_inject_parser
    add_inject_parser(sub, http_url)
    from remora.intercept.command import add_iptables_parser
    add_iptables_parser(sub)
    hook = sub.add_parser("webhook-config", help="print the sidecar injector's MutatingWebhookConfiguration "
                                                 "with the mesh trust bundle as caBundle")
    hook.add_argument("--control", default=None, metavar="URL",
                      help="control server (default: $REMORA_CONTROL, else http://127.0.0.1:15010)")
    return parser


def _add_data_plane_parser(sub, gateway: bool) -> None:
    """`remora proxy` (a sidecar), or `remora gateway` (listeners from Gateway servers)."""
    if gateway:
        proxy = sub.add_parser("gateway", help="run an ingress or egress gateway (Istio Gateway servers)")
    else:
        proxy = sub.add_parser("proxy", help="run the sidecar proxy")
    proxy.add_argument("--mesh-config", action="append", default=[], metavar="PATH",
                       help="Istio YAML file or directory (repeatable); or use --control")
    # Not -n/--namespace: that is the workload's namespace (identity group below), which
    # need not be the namespace of the config files.
    proxy.add_argument("--mesh-config-namespace", default=None, metavar="NS",
                       help="namespace of --mesh-config documents without metadata.namespace "
                            "(kubectl apply -n; default: default)")
    proxy.add_argument("--control", default=None, metavar="URL[,URL...]",
                       help="control server to take config from, e.g. http://127.0.0.1:15010; several "
                            "replicas comma-separated, tried in turn (default: $REMORA_CONTROL when "
                            "--mesh-config is not given)")
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
    if not gateway:
        proxy.add_argument("--outbound-port", type=int, default=15001)
    proxy.add_argument("--admin-port", type=int, default=15000)
    if gateway:
        proxy.add_argument("--bind", default="127.0.0.1",
                           help="address of the server ports (a server's own `bind` wins; 0.0.0.0 in a pod)")
        proxy.add_argument("--port-map", type=port_map, default={}, metavar="PORT=LOCAL,...",
                           help="listen for Gateway server port PORT on local port LOCAL (the gateway "
                                "Service's targetPort: 80=8080,443=8443); default: the port itself")
        proxy.add_argument("--credentials-from-kubernetes", action="store_true",
                           help="Gateway tls.credentialName NAME is the Secret NAME of --namespace, read "
                                "from the Kubernetes API with this pod's service account (needs get/list/"
                                "watch on secrets there); instead of --credentials-dir; see docs/gateways.md")
        proxy.add_argument("--kubeconfig", default=None, metavar="PATH",
                           help="with --credentials-from-kubernetes: the API server and credentials "
                                "(default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    else:
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
    proxy.add_argument("--drain-seconds", type=seconds, default=5.0,
                       help="on SIGTERM or /quitquitquit, exit when no connection is left or "
                            "after this long (default 5s)")
    proxy.add_argument("--retry-buffer-bytes", type=int, default=1 << 20,
                       help="request body kept for replay on retry; longer bodies are not retried")
    proxy.add_argument("--access-log", choices=["stdout", "off"], default="stdout")
    proxy.add_argument("--access-log-format", choices=["text", "json"], default="text",
                       help="encoding of the `envoy` access-log provider (meshConfig.accessLogEncoding)")
    proxy.add_argument("--log-level", type=log_level, default=log_level("info"), metavar="LEVEL",
                       help="level of the proxy's own log on stderr: trace, debug, info (default), "
                            "warning, error, critical, off (Envoy's -l); change it live with "
                            "POST /logging on the admin port")
    proxy.add_argument("--component-log-level", type=component_log_levels, default={},
                       metavar="NAME:LEVEL[,...]",
                       help="levels of some components over --log-level, e.g. rbac:debug,jwt:debug "
                            "(GET /logging lists the components)")
    proxy.add_argument("--trace-sampling", type=percent, default=1.0, metavar="PERCENT",
                       help="percent of new traces sampled (Istio's randomSamplingPercentage; default 1)")
    proxy.add_argument("--otlp-endpoint", type=http_url, default=None, metavar="URL",
                       help="export spans by OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces")
    proxy.add_argument("--idle-timeout", type=seconds, default=300.0,
                       help="close keep-alive client connections idle this long")
    proxy.add_argument("--request-headers-timeout", type=seconds, default=10.0,
                       help="answer 408 when a request head takes longer than this")
    proxy.add_argument("--stream-idle-timeout", type=seconds, default=300.0,
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
    proxy.add_argument("--protocol-detection-timeout", type=seconds, default=15.0,
                       help="inbound mTLS: wait this long for a client's first bytes (TLS or "
                            "plaintext); then STRICT closes, PERMISSIVE serves plaintext")
    if not gateway:
        capture = proxy.add_argument_group("transparent capture (after `remora iptables`; docs/interception.md)")
        capture.add_argument("--capture", action="store_true",
                             help="the listeners receive iptables-redirected connections: original "
                                  "destinations, TCP proxying, passthrough; inbound to every app port")
        capture.add_argument("--outbound-traffic-policy", choices=["ALLOW_ANY", "REGISTRY_ONLY"],
                             default="ALLOW_ANY", help="captured traffic to no mesh service: pass it "
                             "through (default) or refuse it (502 NR for HTTP, closed for TCP)")
    identity = proxy.add_argument_group("workload identity (registration, telemetry labels, mTLS)")
    # A gateway's defaults are istio-ingressgateway's: what Gateway selectors and
    # AuthorizationPolicy principals written for Istio expect.
    identity.add_argument("--service", default="istio-ingressgateway" if gateway else None,
                          help="the service this workload serves (e.g. reviews)")
    identity.add_argument("--namespace", default="istio-system" if gateway else "default")
    identity.add_argument("--service-account", default="istio-ingressgateway-service-account" if gateway else "default")
    identity.add_argument("--labels", type=labels, default={"istio": "ingressgateway", "app": "istio-ingressgateway"}
                          if gateway else {}, metavar="K=V,...",
                          help="workload labels, e.g. app=reviews,version=v2")
    identity.add_argument("--workload", default=None, help="workload name (default: app-version)")
    identity.add_argument("--trust-domain", default="cluster.local")
    identity.add_argument("--node-id", default=None, help="unique sidecar id (default: workload.ns~host~pid)")
    identity.add_argument("--locality", type=locality, default=None, metavar="REGION[/ZONE[/SUBZONE]]",
                          help="where this workload runs (a pod: its node's topology labels); with "
                               "outlierDetection, requests prefer endpoints of the same locality "
                               "(DestinationRule localityLbSetting)")


CLIENT_COMMANDS = ("apply", "get", "delete", "status", "proxy-config", "token")


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
    if args.command in ("proxy", "gateway"):
        from remora.cli_data_plane import run_from_args
        return run_from_args(args)
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
        review = None
        if args.webhook_listen:    # injection at admission: kube/ answers, xds/ serves
            from remora.kube.admission import review as admission_review
            from remora.kube.sidecar import DEFAULT_CONTROL, DEFAULT_IMAGE, SidecarSettings
            sidecar = SidecarSettings(image=args.inject_image or DEFAULT_IMAGE,
                                      control=args.inject_control or DEFAULT_CONTROL)
            review = lambda body: admission_review(body, sidecar)   # noqa: E731
        sources = []
        if args.kubeconfig and not args.kubernetes:
            print("remora: --kubeconfig needs --kubernetes", file=sys.stderr)
            return 2
        if args.kubernetes:    # the API as a registry: kube/ reads it, xds/ takes its documents
            try:
                from remora.kube.registry import KubernetesSource
            except ImportError as error:
                print(f"remora: --kubernetes needs the [kube] extra (pip install 'remora[kube]'): {error}",
                      file=sys.stderr)
                return 2
            sources.append(KubernetesSource(args.kubeconfig))
        return run_control(args, review, sources)
    if args.command == "inject":
        from remora.kube.command import run_inject
        return run_inject(args)
    if args.command == "webhook-config":
        return _webhook_config(args)
    if args.command == "iptables":
        from remora.intercept.command import run_iptables
        return run_iptables(args)
    if args.command in CLIENT_COMMANDS:
        from remora.xds.commands import run_client
        return run_client(args.command, args)
    return 2


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


def _webhook_config(args) -> int:
    """The injector's MutatingWebhookConfiguration, caBundle = the control server's trust bundle."""
    import yaml

    from remora.kube.webhook_config import webhook_configuration
    from remora.xds.commands import ControlUnavailable, control_url, request
    base = control_url(args.control)
    try:
        status, body = request(f"{base}/v1/trust-bundle")
        bundle = json.loads(body)["trust_bundle"] if status == 200 else None
    except (ControlUnavailable, ValueError, KeyError) as err:
        print(f"remora webhook-config: {base}: {err}", file=sys.stderr)
        return 1
    if not bundle:
        print(f"remora webhook-config: {base}/v1/trust-bundle answered {status}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump(webhook_configuration("".join(bundle)), sort_keys=False))
    return 0
