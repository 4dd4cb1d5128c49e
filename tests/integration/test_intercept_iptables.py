"""`remora iptables` in a real network namespace: installs, is idempotent, and --clean undoes it exactly."""
from __future__ import annotations

import re
import sys

import pytest

from tests.integration.netns import Lab, skip_unless_possible


@pytest.fixture
def lab():
    skip_unless_possible()
    made = Lab(net=201)
    try:
        yield made
    finally:
        made.close()


def saved(pod, tool: str = "iptables-save") -> str:
    """The namespace's rules without the comment lines (they carry a timestamp) and counters."""
    text = pod.run(tool).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines()
                     if not line.startswith("#"))


def remora(pod, *args: str):
    return pod.run(sys.executable, "-m", "remora", "iptables", *args, check=False)


def test_apply_twice_then_clean_restores_the_tables_exactly(lab):
    """Applying twice installs one copy of the rules; --clean leaves iptables-save as it was, user rules kept."""
    pod = lab.pod("app", 2)
    # a user's own nat rule and chain, which must survive
    pod.run("iptables", "-t", "nat", "-N", "USER_CHAIN")
    pod.run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.9.0.0/16", "-j", "USER_CHAIN")
    pod.run("ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", "fd00:9::/64", "-j", "RETURN")
    before, before6 = saved(pod), saved(pod, "ip6tables-save")

    for _ in range(2):
        done = remora(pod, "--exclude-outbound-ports", "5432")
        assert done.returncode == 0, done.stderr
    after = saved(pod)
    assert after.count("-A OUTPUT -p tcp -j REMORA_OUTPUT") == 1
    assert after.count("-A PREROUTING -p tcp -j REMORA_INBOUND") == 1
    assert "--dport 5432 -j RETURN" in after
    assert "-A OUTPUT -d 10.9.0.0/16 -j USER_CHAIN" in after
    assert "REMORA_OUTPUT" in saved(pod, "ip6tables-save")

    for _ in range(2):                                  # cleaning a clean namespace is fine too
        done = remora(pod, "--clean")
        assert done.returncode == 0, done.stderr
    assert saved(pod) == before
    assert saved(pod, "ip6tables-save") == before6


def test_dry_run_changes_nothing_and_prints_restore_input(lab):
    """--dry-run prints the iptables-restore input and installs nothing."""
    pod = lab.pod("app", 2)
    before = saved(pod)
    done = remora(pod, "--dry-run", "--include-inbound-ports", "9080")
    assert done.returncode == 0, done.stderr
    assert "*nat" in done.stdout and "-A REMORA_INBOUND -p tcp --dport 9080 -j REMORA_IN_REDIRECT" in done.stdout
    assert saved(pod) == before


def test_bad_flag_exits_2_naming_the_flag(lab):
    """A bad CIDR is refused before anything is changed, with the flag named."""
    pod = lab.pod("app", 2)
    done = remora(pod, "--exclude-outbound-cidrs", "10.0.0.0/99")
    assert done.returncode == 2
    assert "--exclude-outbound-cidrs: '10.0.0.0/99' is not an IP range" in done.stderr
    assert "REMORA" not in saved(pod)
