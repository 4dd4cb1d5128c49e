"""`remora envoy-config -f FILE...`: print the Envoy v3 bootstrap Remora's config renders to.

For comparing data planes: the same YAML that `remora proxy --mesh-config` or
`remora control --config-dir` serve, validated the same way (`remora analyze`), rendered
by remora/xds/envoy.py as a client sidecar (default) or, with --inbound, a server sidecar.
Run the output with `envoy -c FILE`; check it with `envoy --mode validate -c FILE`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_envoy_config_parser(sub, labels_type) -> None:
    parser = sub.add_parser("envoy-config", help="print the Envoy v3 bootstrap (JSON) the same "
                                                 "Istio YAML renders to")
    parser.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                        help="Istio YAML file or directory (repeatable)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the bootstrap here instead of standard output")
    parser.add_argument("--listen-port", type=int, default=15001,
                        help="outbound listener port on 127.0.0.1 (default 15001)")
    parser.add_argument("--admin-port", type=int, default=15000,
                        help="Envoy admin port on 127.0.0.1 (default 15000)")
    parser.add_argument("--cert-dir", default=None, metavar="DIR",
                        help="workload certificate directory (cert-chain.pem, key.pem, "
                             "root-cert.pem), needed when the config uses mutual TLS")
    parser.add_argument("--trust-domain", default="cluster.local")
    parser.add_argument("--namespace", default="default",
                        help="the workload's namespace (DestinationRule workloadSelector, "
                             "PeerAuthentication scope)")
    parser.add_argument("--labels", type=labels_type, default={},
                        help="the workload's labels, k=v,k2=v2 (DestinationRule workloadSelector, "
                             "PeerAuthentication selector)")
    inbound = parser.add_argument_group("server sidecar (--inbound)")
    inbound.add_argument("--inbound", action="store_true",
                         help="render the inbound side: --inbound-port -> the app on --app-port")
    inbound.add_argument("--inbound-port", type=int, default=15006)
    inbound.add_argument("--app-port", type=int, default=9080)


def run_envoy_config(args: argparse.Namespace) -> int:
    from remora.config.loader import ConfigError
    from remora.xds.envoy import Unsupported, render_bootstrap, render_inbound_bootstrap
    from remora.xds.store import read_sources, validate_documents
    docs, issues, _ = read_sources(args.filename)
    try:
        validate_documents(docs, issues)
    except ConfigError as error:
        print(f"remora: invalid configuration\n{error}", file=sys.stderr)
        return 1
    bodies = [doc for doc, _source in docs if isinstance(doc, dict) and doc.get("kind")]
    cert_dir = Path(args.cert_dir) if args.cert_dir else None
    try:
        if args.inbound:
            boot = render_inbound_bootstrap(
                bodies, namespace=args.namespace, labels=args.labels,
                inbound_port=args.inbound_port, app_port=args.app_port,
                admin_port=args.admin_port, cert_dir=cert_dir, trust_domain=args.trust_domain)
        else:
            boot = render_bootstrap(bodies, args.listen_port, args.admin_port, cert_dir,
                                    args.trust_domain, (args.namespace, args.labels))
    except Unsupported as error:
        print(f"remora: cannot render for Envoy: {error}", file=sys.stderr)
        return 1
    text = json.dumps(boot, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
