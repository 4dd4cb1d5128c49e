"""The control-side commands: `remora control` and its clients `apply | get | delete | status |
proxy-config | token`.

The clients speak the REST API with the standard library (urllib), so they start fast and
need nothing the proxy does not. Every failure prints one clear line (or the server's list
of errors) to stderr and exits 1; a server that cannot be reached is named with its URL.
Every call to the control server carries the admin token (`admin_token` says where it comes
from); a sidecar's admin server, which `proxy-config` reads, never sees it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request

from remora.config import yaml_text

from remora.xds.admin_auth import ADMIN_TOKEN_FILE, AdminTokenError, check_token, read_token_file
from remora.xds.kinds import UnknownKind, resolve_kind
from remora.xds.tables import format_table

DEFAULT_CONTROL = "http://127.0.0.1:15010"
TIMEOUT = 30.0
TOKEN_ENV = "REMORA_ADMIN_TOKEN"


class ControlUnavailable(Exception):
    """The control server (or a sidecar's admin server) could not be reached."""


class ControlUnauthorized(Exception):
    """The control server refused the admin token (or its absence); the message says where to find it."""


def control_url(given: str | None) -> str:
    return (given or os.environ.get("REMORA_CONTROL") or DEFAULT_CONTROL).rstrip("/")


def is_local(url: str) -> bool:
    """Whether the URL names this machine (loopback), where `--state-dir` can hold its admin token."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_token(args, base: str) -> tuple[str | None, str]:
    """(token, where it came from): --admin-token, --admin-token-file, $REMORA_ADMIN_TOKEN, then
    `<--state-dir>/admin-token` for a control server on this machine. AdminTokenError when a named
    source is unusable; (None, "") when nothing was given (the server then answers 401)."""
    if getattr(args, "admin_token", None):
        return check_token(args.admin_token, "--admin-token"), "--admin-token"
    if getattr(args, "admin_token_file", None):
        return read_token_file(args.admin_token_file), f"--admin-token-file {args.admin_token_file}"
    if os.environ.get(TOKEN_ENV):
        return check_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    if getattr(args, "state_dir", None):
        # Never send a local server's token to another machine.
        if not is_local(base):
            raise AdminTokenError(f"--state-dir reads the admin token of a control server on this machine, "
                                  f"but {base} is not local: use --admin-token-file FILE or ${TOKEN_ENV}")
        path = os.path.join(args.state_dir, ADMIN_TOKEN_FILE)
        return read_token_file(path), path
    return None, ""


class ControlClient:
    """The control server's REST API, with the admin token on every request."""

    def __init__(self, base: str, token: str | None, origin: str = "") -> None:
        self.base, self.token, self.origin = base, token, origin

    @classmethod
    def from_args(cls, args) -> ControlClient:
        base = control_url(args.control)
        return cls(base, *admin_token(args, base))

    def call(self, path: str, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of one API call; ControlUnauthorized on 401, with where to find the token."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        status, answer = request(f"{self.base}{path}", method, body, headers)
        if status == 401:
            raise ControlUnauthorized(self._unauthorized(_json(status, answer)))
        return status, answer

    def _unauthorized(self, answer: dict) -> str:
        sent = (f"the admin token from {self.origin} was refused" if self.token
                else "no admin token was given")
        return (f"{answer.get('error', 'HTTP 401')}\n"
                f"  {self.base} needs its admin token and {sent}. remora control keeps it in "
                f"<state-dir>/{ADMIN_TOKEN_FILE} (or reads the file its --admin-token-file names); "
                f"pass --admin-token-file FILE, set ${TOKEN_ENV}, or give --state-dir DIR when "
                f"the server runs on this machine")


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP exchange: (status, body); any HTTP status is an answer, not an exception."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ControlUnavailable(f"cannot reach {url.split('?')[0]}: {reason}") from None


def _json(status: int, body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        return {"error": f"HTTP {status}: {' '.join(body[:200].decode(errors='replace').split())}"}


def _quote(part: str) -> str:
    """One path segment: a '/' in a name stays inside it (the server then refuses the name)."""
    return urllib.parse.quote(part, safe="")


def _fail(answer: dict) -> int:
    print(f"error: {answer.get('error', 'unknown error')}", file=sys.stderr)
    for line in answer.get("errors", []):
        print(f"  {line}", file=sys.stderr)
    return 1


# ---- apply / get / delete ------------------------------------------------------------------

def cmd_apply(args) -> int:
    control = ControlClient.from_args(args)
    code = 0
    for path in args.filename:
        source = "<stdin>" if path == "-" else path
        try:
            if path == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as f:
                    data = f.read()
            data.decode("utf-8")   # the server reads UTF-8 only: say so here, in one line
        except OSError as error:
            print(f"error: cannot read {source}: {error.strerror}", file=sys.stderr)
            return 1
        except UnicodeDecodeError as error:
            print(f"error: {source}: not UTF-8 text: {error.reason} (byte 0x{data[error.start]:02x} "
                  f"at offset {error.start})", file=sys.stderr)
            return 1
        query = {"source": source, **({"namespace": args.namespace} if getattr(args, "namespace", None) else {})}
        status, body = control.call(f"/v1/apply?{urllib.parse.urlencode(query)}", "POST",
                                    data, {"Content-Type": "application/yaml"})
        answer = _json(status, body)
        if status != 200:
            code = _fail(answer)
            continue
        for item in answer["results"]:
            print(f"{item['resource']} {item['action']}")
        for warning in answer.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    return code


def cmd_get(args) -> int:
    control = ControlClient.from_args(args)
    kind = resolve_kind(args.kind)
    if args.name:
        namespace = args.namespace or "default"
        fmt = "yaml" if args.output == "yaml" else "json"
        status, body = control.call(f"/v1/resources/{kind}/{_quote(namespace)}/{_quote(args.name)}?format={fmt}")
        if status != 200:
            return _fail(_json(status, body))
        if args.output in ("yaml", "json"):
            sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))
            return 0
        document = json.loads(body)
        annotations = document["metadata"].get("annotations", {})
        items = [{"namespace": namespace, "name": args.name, "origin": annotations.get("remora.io/origin", ""),
                  "source": annotations.get("remora.io/source", ""),
                  "overrides": annotations.get("remora.io/overrides")}]
    else:
        query = {"kind": kind, **({"namespace": args.namespace} if args.namespace else {})}
        status, body = control.call(f"/v1/resources?{urllib.parse.urlencode(query)}")
        answer = _json(status, body)
        if status != 200:
            return _fail(answer)
        items = answer["items"]
        if args.output == "json":
            print(json.dumps([item["document"] for item in items], indent=2))
            return 0
        if args.output == "yaml":
            sys.stdout.write(yaml_text.dump_all([item["document"] for item in items]))
            return 0
        if not items:
            where = f" in namespace {args.namespace}" if args.namespace else ""
            print(f"No {kind} resources found{where}.", file=sys.stderr)
            return 0
    # An applied resource in force over a file's version says which file (`remora delete` restores it).
    rows = [[i["namespace"], i["name"], i["origin"] + (f" (over {i['overrides']})" if i.get("overrides") else ""),
             i["source"]] for i in items]
    print(format_table(["NAMESPACE", "NAME", "ORIGIN", "SOURCE"], rows), end="")
    return 0


def cmd_delete(args) -> int:
    control = ControlClient.from_args(args)
    kind = resolve_kind(args.kind)
    status, body = control.call(f"/v1/resources/{kind}/{_quote(args.namespace)}/{_quote(args.name)}",
                                "DELETE")
    answer = _json(status, body)
    if status != 200:
        return _fail(answer)
    for result in answer["results"]:   # "deleted", or "deleted (back to FILE)" for an override
        print(f"{result['resource']} {result['action']}")
    return 0


# ---- token ----------------------------------------------------------------------------------

def cmd_token(args) -> int:
    """`remora token create | list | revoke`; create prints the token alone on stdout's last line."""
    control = ControlClient.from_args(args)
    if args.token_command == "create":
        body = json.dumps({"namespace": args.namespace, "service_account": args.service_account,
                           "ttl": args.ttl}).encode()
        status, raw = control.call("/v1/tokens", "POST", body, {"Content-Type": "application/json"})
        answer = _json(status, raw)
        if status != 200:
            return _fail(answer)
        print(f"join token {answer['id']} for {answer['spiffe_id']}, expires {answer['expires_at']}; "
              f"it is shown only once:", file=sys.stderr)
        print(answer["token"])
        return 0
    if args.token_command == "list":
        status, raw = control.call("/v1/tokens")
        answer = _json(status, raw)
        if status != 200:
            return _fail(answer)
        rows = [[t["id"], t["namespace"], t["service_account"], t["created_at"], t["expires_at"],
                 "revoked" if t["revoked"] else "active"] for t in answer["tokens"]]
        for broken in answer.get("broken", []):
            print(f"warning: stored join token record {broken['index']} (id {broken['id']}) cannot be used "
                  f"and is ignored: {broken['error']}", file=sys.stderr)
        if not rows:
            print("No join tokens.", file=sys.stderr)
            return 0
        print(format_table(["ID", "NAMESPACE", "SERVICE ACCOUNT", "CREATED", "EXPIRES", "STATE"], rows), end="")
        return 0
    status, raw = control.call(f"/v1/tokens/{urllib.parse.quote(args.id, safe='')}", "DELETE")
    answer = _json(status, raw)
    if status != 200:
        return _fail(answer)
    print(f"join token {answer['id']} revoked")
    return 0


def run_client(command: str, args) -> int:
    """Run one client command; turn unreachable servers and unknown kinds into exit 1."""
    from remora.xds.status_commands import cmd_proxy_config, cmd_status
    handler = {"apply": cmd_apply, "get": cmd_get, "delete": cmd_delete, "status": cmd_status,
               "proxy-config": cmd_proxy_config, "token": cmd_token}[command]
    try:
        return handler(args)
    except (ControlUnavailable, ControlUnauthorized, UnknownKind) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except AdminTokenError as error:
        print(f"error: admin token: {error}", file=sys.stderr)
        return 1


# ---- remora control --------------------------------------------------------------------------

def run_control(args, review=None, sources=()) -> int:
    """`remora control`; `review` answers AdmissionReviews when --webhook-listen is given
    (the command line passes kube/admission.py's, which this layer does not import), and
    `sources` are external document sources (--kubernetes: kube/registry.py's)."""
    import asyncio

    import uvloop

    from remora.certs import CaError
    from remora.config.loader import ConfigError
    from remora.xds.ca_service import CaSettings, check_cert_ttl
    from remora.xds.external import SourceError
    from remora.xds.registry import split_host_port, InvalidNode
    from remora.xds.server import ControlServer, ControlSettings
    from remora.xds.store import StateError

    try:
        host, port = split_host_port(args.listen, "listen")
    except InvalidNode:
        print(f"remora: --listen: expected host:port, got {args.listen!r}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.config_dir):
        print(f"remora: --config-dir {args.config_dir}: not a directory", file=sys.stderr)
        return 2
    try:
        check_cert_ttl(args.cert_ttl)
    except ValueError as error:
        print(f"remora: {error}", file=sys.stderr)
        return 2
    ca = CaSettings(ca_cert=args.ca_cert, ca_key=args.ca_key, ca_chain=args.ca_chain, cert_ttl=args.cert_ttl)
    webhook = None
    if args.webhook_listen:
        from remora.xds.webhook import WebhookSettings
        try:
            hook_host, hook_port = split_host_port(args.webhook_listen, "webhook-listen")
        except InvalidNode:
            print(f"remora: --webhook-listen: expected host:port, got {args.webhook_listen!r}", file=sys.stderr)
            return 2
        names = [n.strip() for n in args.webhook_names.split(",") if n.strip()]
        if not names:
            print("remora: --webhook-names: at least one DNS name", file=sys.stderr)
            return 2
        webhook = WebhookSettings(hook_host, hook_port, review, names)
    if args.store and args.state_dir:
        print("remora: --store and --state-dir: choose one (with --store, the state lives in etcd)", file=sys.stderr)
        return 2
    settings = ControlSettings(config_dir=args.config_dir, state_dir=args.state_dir, host=host, port=port,
                               trust_domain=args.trust_domain, grace_period=args.grace_period,
                               debounce=args.debounce, max_debounce=args.max_debounce, ca=ca,
                               admin_token_file=args.admin_token_file,
                               jwks_refresh_interval=args.jwks_refresh_interval, webhook=webhook,
                               store=args.store, store_key_file=args.store_key_file,
                               store_max_txn_ops=args.store_max_txn_ops,
                               push_throttle=args.push_throttle)
    server = ControlServer(settings, sources=sources)

    async def main() -> int:
        shared = None
        if settings.store:
            from remora.certs.sealing import SealError
            from remora.xds.etcd_client import StoreError, StoreUnavailable
            from remora.xds.replicas import start_shared
            try:
                shared = await start_shared(settings.store, settings.store_key_file, settings.trust_domain,
                                            settings.grace_period, settings.admin_token_file, server.log,
                                            settings.store_max_txn_ops)
            except (ValueError, CaError, SealError, AdminTokenError, StoreError, StoreUnavailable) as error:
                print(f"remora: --store: {error}", file=sys.stderr)
                return 1
        try:
            server.load(shared)
        except (ConfigError, StateError, CaError, AdminTokenError) as error:
            what = {ConfigError: "invalid configuration, not starting\n", CaError: "CA: ",
                    AdminTokenError: "admin token: "}.get(type(error), "")
            print(f"remora: {what}{error}", file=sys.stderr)
            if shared is not None:
                await shared.state.close()
            return 1
        if args.state_dir is None and shared is None:
            server.log("warning: no --state-dir: resources applied through the API are lost on restart")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(stop)
        return 0

    try:
        return uvloop.run(main())
    except OSError as error:
        print(f"remora: cannot start: {error}", file=sys.stderr)
        return 1
    except SourceError as error:
        print(f"remora: {error}", file=sys.stderr)
        return 1
