"""`remora status` and `remora proxy-config`: the control server's view of its sidecars.

proxy-config asks the control server, which asks the sidecar over the stream it holds
(introspect.py), so it works for sidecars whose admin server is on their own loopback (in
a pod or a compose namespace). Only a sidecar too old to answer there is read at the admin
address it reported, which works from the same machine or network.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from remora.xds.commands import ControlClient, ControlUnavailable, _fail, _json, _quote, request
from remora.xds.tables import format_table, proxy_config_rows, status_rows


def _status(control: ControlClient) -> dict:
    status, body = control.call("/v1/status")
    answer = _json(status, body)
    if status != 200:
        raise ControlUnavailable(answer.get("error", f"HTTP {status}"))
    return answer


def cmd_status(args) -> int:
    answer = _status(ControlClient.from_args(args))
    config = answer["config"]
    line = f"config version {config['version']} ({config['source']}, {config['updated_at']})"
    if not config["files_valid"]:
        line += "; config files INVALID, serving the last good version"
    print(line)
    error = config.get("last_error")
    if error:
        print(f"last error at {error['at']} ({error['source']}):")
        for message in error["errors"]:
            print(f"  {message}")
    for name, source in answer.get("sources", {}).items():   # --kubernetes
        print(f"{name} {source.get('server', '')}: {'synced' if source.get('synced') else 'NOT SYNCED'}, "
              f"{source.get('documents', 0)} documents")
        for kind in source.get("kinds", []):
            if kind.get("lastError") or not kind.get("synced"):
                print(f"  {kind['kind']}: {'synced' if kind.get('synced') else 'not synced'}; "
                      f"last error {kind.get('lastErrorAt')}: {kind.get('lastError')}")
    headers, rows = status_rows(answer["sidecars"])
    print(format_table(headers, rows), end="")
    return 0


def _fetch_json(url: str) -> Any:
    status, body = request(url)
    if status != 200:
        raise ControlUnavailable(f"{url} answered HTTP {status}")
    return json.loads(body)


def cmd_proxy_config(args) -> int:
    control = ControlClient.from_args(args)
    answer = _status(control)
    matches = [s for s in answer["sidecars"] if s["id"] == args.sidecar] or \
              [s for s in answer["sidecars"] if s["id"].startswith(args.sidecar)]
    if len(matches) != 1:
        known = ", ".join(s["id"] for s in answer["sidecars"]) or "none connected"
        what = "no sidecar" if not matches else "several sidecars"
        print(f"error: {what} matching {args.sidecar!r} (sidecars: {known})", file=sys.stderr)
        return 1
    sidecar = matches[0]
    if "config_dump" in sidecar.get("capabilities", ()):
        # Over the stream the control server holds: the sidecar's admin stays on its loopback.
        status, body = control.call(f"/v1/sidecars/{_quote(sidecar['id'])}/config_dump")
        answer = _json(status, body)
        if status != 200:
            return _fail(answer)
        documents, where = answer["documents"], "over the control stream"
    elif sidecar.get("admin"):   # an older sidecar: its admin server, if this machine reaches it
        admin = f"http://{sidecar['admin']}"
        documents = {"/config_dump": _fetch_json(f"{admin}/config_dump")}
        if args.what != "routes":
            documents["/clusters?format=json"] = _fetch_json(f"{admin}/clusters?format=json")
        where = f"admin {sidecar['admin']}"
    else:
        print(f"error: sidecar {sidecar['id']} did not report an admin address", file=sys.stderr)
        return 1
    dump = documents["/config_dump"]
    headers, rows = proxy_config_rows(args.what, dump, documents.get("/clusters?format=json", []))
    print(f"sidecar {sidecar['id']} ({where}), config version {dump.get('version', '?')}")
    print(format_table(headers, rows), end="")
    return 0
