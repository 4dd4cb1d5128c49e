"""Small pure parts of the control plane: kind spellings, debounce timing, CLI tables."""
from __future__ import annotations

import asyncio

import pytest

from remora.xds.debounce import Debouncer, due_time
from remora.xds.kinds import UnknownKind, resolve_kind
from remora.xds.tables import format_table, proxy_config_rows, status_rows


@pytest.mark.parametrize("spelling, kind", [
    ("vs", "VirtualService"), ("VirtualServices", "VirtualService"), ("DR", "DestinationRule"),
    ("serviceentries", "ServiceEntry"), ("ServiceEntry", "ServiceEntry"), ("we", "WorkloadEntry"),
])
def test_kind_spellings(spelling, kind):
    """Kinds are accepted singular, plural or short, in any case."""
    assert resolve_kind(spelling) == kind


def test_unknown_kind_lists_what_is_accepted():
    """An unknown kind names the accepted kinds and short names."""
    with pytest.raises(UnknownKind, match=r"VirtualService \(vs\)"):
        resolve_kind("envoyfilter")


def test_due_time_waits_for_quiet_but_caps_the_delay():
    """The push is `delay` after the last change, but never later than `max_delay` after the first."""
    assert due_time(0.0, 0.0, 0.1, 1.0) == 0.1
    assert due_time(0.0, 0.5, 0.1, 1.0) == pytest.approx(0.6)
    assert due_time(0.0, 0.95, 0.1, 1.0) == 1.0


async def test_debouncer_fires_once_per_burst_with_the_first_change_time():
    """Several triggers in a burst make one call, given the time of the earliest change."""
    fired: list[float] = []
    debouncer = Debouncer(0.05, 1.0, fired.append)
    loop = asyncio.get_running_loop()
    early = loop.time() - 0.5
    debouncer.trigger(early)
    debouncer.trigger()
    debouncer.trigger()
    for _ in range(100):
        if fired:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert fired == [early]


def test_table_columns_align():
    """Columns are padded to the widest cell and separated by three spaces."""
    assert format_table(["A", "BB"], [["xyz", "1"]]) == "A     BB\nxyz   1\n"


def test_status_row_of_a_disconnected_sidecar_shows_the_removal():
    """A sidecar in its grace period shows DISCONNECTED with the time left."""
    _, [row] = status_rows([{"id": "n", "namespace": "default", "workload": "w", "identity": "spiffe://x",
                             "connected": False, "removal_in_seconds": 7.2, "types": {},
                             "last_seen_seconds": 3.0}])
    assert row[4] == "DISCONNECTED (removal in 7s)" and row[-1] == "3s ago"


def test_clusters_rows_split_istio_cluster_names():
    """`outbound|port|subset|fqdn` cluster names become FQDN, PORT, SUBSET, DIRECTION columns."""
    _, rows = proxy_config_rows("clusters", {}, [{"name": "outbound|9080|v1|reviews.default.svc.cluster.local",
                                                  "lb_policy": "ROUND_ROBIN", "endpoints": [{}, {}]}])
    assert rows == [["reviews.default.svc.cluster.local", "9080", "v1", "outbound", "ROUND_ROBIN", 2]]
