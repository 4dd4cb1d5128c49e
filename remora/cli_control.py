"""`remora control` and its clients' subcommands (apply, get, delete, status, proxy-config,
token): their argument parsers, added to cli.py's."""
from __future__ import annotations

import argparse

from remora.cli_arguments import positive_int, seconds


def add_control_commands(sub) -> None:
    control = sub.add_parser("control", help="run the control server (config API + sidecar streams)")
    control.add_argument("--config-dir", required=True, metavar="DIR",
                         help="directory of Istio YAML files, watched for changes")
    control.add_argument("--listen", default="127.0.0.1:15010", metavar="HOST:PORT")
    control.add_argument("--state-dir", default=None, metavar="DIR",
                         help="where applied resources, registrations, the CA root and join tokens persist "
                              "(default: memory only; the CA in a temporary directory)")
    control.add_argument("--store", default=None, metavar="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]",
                         help="keep the state in etcd instead of --state-dir, to run several replicas "
                              "(docs/control.md, Replicas)")
    control.add_argument("--store-key-file", default=None, metavar="FILE",
                         help="with --store: at least 32 secret bytes; the CA key and the admin token are "
                              "sealed with it in etcd (the same file on every replica)")
    control.add_argument("--store-max-txn-ops", type=positive_int, default=128, metavar="N",
                         help="with --store: resources one apply may change, at most etcd's --max-txn-ops "
                              "(default 128, etcd's default); an apply is one transaction, never split")
    control.add_argument("--trust-domain", default="cluster.local")
    control.add_argument("--grace-period", type=seconds, default=10.0,
                         help="how long a disconnected sidecar stays registered")
    control.add_argument("--debounce", type=seconds, default=0.1,
                         help="quiet time after a change before pushing")
    control.add_argument("--max-debounce", type=seconds, default=1.0,
                         help="longest a push waits under a constant stream of changes")
    control.add_argument("--push-throttle", type=positive_int, default=100, metavar="N",
                         help="at most N sidecar streams are sent a push at once (istiod's PILOT_PUSH_THROTTLE)")
    control.add_argument("--jwks-refresh-interval", type=seconds, default=1200.0,
                         help="how often RequestAuthentication jwksUri keys are fetched again "
                              "(istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL, default 20m)")
    control.add_argument("--admin-token-file", default=None, metavar="FILE",
                         help="the admin token (a Kubernetes Secret, say) the admin API requires; default: "
                              "<state-dir>/admin-token, created 0600 on first start (without --state-dir: "
                              "made in memory and printed once on stderr)")
    hook = control.add_argument_group("sidecar injection at admission (docs/kubernetes.md)")
    hook.add_argument("--webhook-listen", default=None, metavar="HOST:PORT",
                      help="serve the mutating admission webhook (POST /inject) over TLS here, e.g. 0.0.0.0:15017")
    hook.add_argument("--webhook-names", default="remora-control.remora-system.svc", metavar="NAME,...",
                      help="DNS names of the webhook's certificate (the webhook Service's)")
    hook.add_argument("--inject-image", default=None, metavar="IMAGE", help="sidecar image (as remora inject)")
    hook.add_argument("--inject-control", default=None, metavar="URL",
                      help="control server URL as pods reach it (as remora inject)")
    kube = control.add_argument_group("the Kubernetes API as a registry (docs/kubernetes.md)")
    kube.add_argument("--kubernetes", action="store_true",
                      help="list and watch Services, Pods, EndpointSlices, Namespaces and the Istio kinds "
                           "(needs the [kube] extra: pip install 'remora[kube]')")
    kube.add_argument("--kubeconfig", default=None, metavar="PATH",
                      help="with --kubernetes: the kubeconfig to use (default: in-cluster config, else "
                           "$KUBECONFIG, else ~/.kube/config)")
    ca = control.add_argument_group("certificate authority (default: a self-signed root in <state-dir>/ca)")
    ca.add_argument("--ca-cert", default=None, metavar="PEM", help="plug-in CA: the issuing CA certificate")
    ca.add_argument("--ca-key", default=None, metavar="PEM", help="plug-in CA: its private key")
    ca.add_argument("--ca-chain", default=None, metavar="PEM",
                    help="plug-in CA: its chain up to the root (not needed when --ca-cert is the root)")
    ca.add_argument("--cert-ttl", type=seconds, default=24 * 3600.0,
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
    create.add_argument("--ttl", type=seconds, default=24 * 3600.0, help="how long the token is valid (default 24h)")
    client("list", "every token's id, identity, expiry and state (never secrets)", token_sub)
    revoke = client("revoke", "revoke a token by id", token_sub)
    revoke.add_argument("id", help="token id as `remora token list` shows it (or the whole token)")
