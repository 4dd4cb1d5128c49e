"""`remora iptables`: install (or `--clean` remove) the capture rules in this network namespace.

Run as root (or with NET_ADMIN) inside the workload's network namespace, once, before the
app starts: the `remora-init` container of `remora inject`. Applying is clean-then-apply,
so running it twice leaves one copy of the rules; each family's rules go in with one
`iptables-restore --noflush` (atomic per table). IPv6 rules are installed when the kernel
has IPv6 and ip6tables is there; without them only IPv4 is captured (said on stderr).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from remora.intercept.rules import IPV4, IPV6, CaptureError, clean_commands, parse_capture, restore_text

TOOLS = {IPV4: ("iptables", "iptables-save", "iptables-restore"),
         IPV6: ("ip6tables", "ip6tables-save", "ip6tables-restore")}
FLAGS = ("outbound_capture_port", "inbound_capture_port", "proxy_uid", "proxy_gid",
         "include_outbound_cidrs", "exclude_outbound_cidrs", "include_inbound_ports",
         "exclude_inbound_ports", "exclude_outbound_ports")


class IptablesError(RuntimeError):
    """An iptables tool failed; the message has the command and what it said."""


def add_iptables_parser(sub) -> None:
    """The `iptables` subcommand: exactly the flags `remora inject` emits (docs/kubernetes.md)."""
    cmd = sub.add_parser("iptables", help="capture the workload's TCP into the sidecar (nat rules, "
                                          "like istio-iptables); run as root in the pod's netns")
    cmd.add_argument("--outbound-capture-port", default="15001", help="outbound listener (default 15001)")
    cmd.add_argument("--inbound-capture-port", default="15006", help="inbound listener (default 15006)")
    cmd.add_argument("--proxy-uid", default="1337", help="the sidecar's uid: never captured (default 1337)")
    cmd.add_argument("--proxy-gid", default="1337", help="the sidecar's gid: never captured (default 1337)")
    cmd.add_argument("--include-outbound-cidrs", default="*", metavar="CIDRS|*",
                     help="destinations captured outbound, comma-separated, or * (default *)")
    cmd.add_argument("--exclude-outbound-cidrs", default="", metavar="CIDRS",
                     help="destinations never captured (wins over include)")
    cmd.add_argument("--include-inbound-ports", default="*", metavar="PORTS|*",
                     help="ports captured inbound, or * (default *); empty: nothing inbound")
    cmd.add_argument("--exclude-inbound-ports", default="", metavar="PORTS", help="ports never captured inbound")
    cmd.add_argument("--exclude-outbound-ports", default="", metavar="PORTS",
                     help="destination ports never captured outbound")
    cmd.add_argument("--dry-run", action="store_true", help="print the rules (iptables-restore input), change nothing")
    cmd.add_argument("--clean", action="store_true",
                     help="remove the REMORA_* chains and the jumps into them, nothing else")


def families() -> list[int]:
    """IPv4, plus IPv6 when the kernel has it and ip6tables is installed."""
    found = [IPV4]
    if os.path.exists("/proc/net/if_inet6") and shutil.which(TOOLS[IPV6][2]):
        found.append(IPV6)
    return found


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise IptablesError(f"{argv[0]}: not installed") from None
    if done.returncode != 0:
        raise IptablesError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def clean(family: int, dry_run: bool = False) -> list[str]:
    """Remove this family's REMORA_* chains and jumps; returns the commands (run unless dry_run)."""
    tool, save, _ = TOOLS[family]
    done = []
    for args in clean_commands(_run([save, "-t", "nat"])):
        done.append(" ".join([tool, *args]))
        if not dry_run:
            _run([tool, *args])
    return done


def apply(spec, family: int) -> None:
    """Clean, then install this family's rules in one iptables-restore transaction."""
    clean(family)
    _run([TOOLS[family][2], "--noflush"], restore_text(spec, family))


def run_iptables(args) -> int:
    try:
        spec = parse_capture(**{name: getattr(args, name) for name in FLAGS})
    except CaptureError as err:
        print(f"remora iptables: {err}", file=sys.stderr)
        return 2
    wanted = families()
    if IPV6 not in wanted:
        print("remora iptables: no IPv6 (kernel or ip6tables): IPv4 rules only", file=sys.stderr)
    try:
        for family in wanted:
            tool = TOOLS[family]
            if args.clean:
                for line in clean(family, dry_run=args.dry_run):
                    if args.dry_run:
                        print(line)
            elif args.dry_run:
                print(f"# IPv{family}: {tool[2]} --noflush (after removing earlier REMORA_* rules)")
                print(restore_text(spec, family), end="")
            else:
                apply(spec, family)
    except IptablesError as err:
        print(f"remora iptables: {err}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"remora iptables: {'removed' if args.clean else 'installed'} "
              f"({', '.join(f'IPv{f}' for f in wanted)})", file=sys.stderr)
    return 0
