"""benchmarks.tls_cost: the three ways of doing one TLS round trip each complete and are timed."""
from __future__ import annotations

import uvloop

from benchmarks.certs import issue_cert_dirs
from benchmarks.tls_cost import contexts, measure


def test_every_way_completes_its_round_trips_and_reports_cpu(tmp_path):
    """Each way (plain, uvloop SSL, SSLSocket; the first two again over several connections at
    once) finishes its ping-pong with mutual TLS verified and reports a positive CPU time per
    round trip."""
    dirs = issue_cert_dirs(tmp_path, "bench", ["server", "client"])
    results = uvloop.run(measure(200, 1, contexts(dirs), connections=4))
    assert len(results) == 5 and all(micros > 0 for micros in results.values()), results
