"""A sidecar listening on every address (as in a container) registers an address its peers can dial."""
from __future__ import annotations

import json

from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port


def test_inbound_bound_to_all_addresses_registers_the_stream_source_address():
    """--inbound-bind 0.0.0.0 registers the sidecar's source address (127.0.0.1 here), not 0.0.0.0."""
    control = ControlProcess().wait_ready()
    proxy = None
    try:
        proxy = ProxyProcess(None, "--service", "reviews", "--inbound-bind", "0.0.0.0",
                             inbound_app_port=free_port(), control=control.url).wait_ready()

        def entries():
            done = control.cli("get", "we", "-o", "json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout) or None

        found = control.wait_until(entries, what="the sidecar's WorkloadEntry")
        items = found if isinstance(found, list) else found.get("items", [found])
        assert [item["spec"]["address"] for item in items] == ["127.0.0.1"]
        assert items[0]["spec"]["ports"] == {"http": proxy.inbound_port}
    finally:
        if proxy is not None:
            proxy.stop()
        control.stop()
