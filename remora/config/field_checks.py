"""Value checks shared by the config validators: hosts, IPs, durations, percentages,
ports, regexes and string matches, each reported as a `Problem` at a field path, so that
every kind of resource words the same mistake the same way."""
from __future__ import annotations

import ipaddress
import re

from remora.config.duration import duration_nanos, parse_duration
from remora.config.model import StringMatch
from remora.config.schema import Problem

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.IGNORECASE)
# A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name.
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# Python `re` accepts these but RE2 (Istio/Envoy) rejects them; catching them here keeps a
# config that Remora accepts loadable by Istio too.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    """RFC 1123 host name (what Istio's ValidateFQDN accepts), optional trailing dot."""
    name = text.removesuffix(".")
    return 0 < len(name) <= 253 and all(DNS_LABEL.fullmatch(label) for label in name.split("."))


def is_host_pattern(text: str) -> bool:
    """A VirtualService/DestinationRule/ServiceEntry host: name, `*.suffix`, `*` or an IP."""
    if text == "*" or is_ip(text):
        return True
    return is_hostname(text.removeprefix("*.")) if text.startswith("*.") else is_hostname(text)


class FieldChecks:
    """Collects problems; one method per kind of value so messages stay uniform."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def duration(self, path: str, value: str | None, *, whole_ms: bool = False, zero_ok: bool = False) -> None:
        """A duration string; with `whole_ms`, Istio's ValidateDuration on top: at least 1ms and
        to millisecond precision (Envoy's timers), except 0 where `zero_ok` (it disables)."""
        if value is None:
            return
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            self.add(path, str(error))
            return
        if seconds < 0:  # parse_duration has no sign today; keep the rule if it grows one
            self.add(path, f"duration must not be negative, got {value!r}")
        if whole_ms:
            nanos = duration_nanos(value)
            if nanos == 0 and zero_ok:
                return
            if nanos < 1_000_000:
                self.add(path, f"duration must be at least 1ms, got {value!r}")
            elif nanos % 1_000_000:
                self.add(path, f"only durations to millisecond precision are supported, got {value!r}")

    def percent(self, path: str, value: float | None) -> None:
        if value is not None and not 0 <= value <= 100:
            self.add(path, f"percentage must be between 0 and 100, got {value}")

    def port(self, path: str, value: int | None) -> None:
        if value is not None and not 1 <= value <= 65535:
            self.add(path, f"port must be between 1 and 65535, got {value}")

    def non_negative(self, path: str, value: int | None) -> None:
        if value is not None and value < 0:
            self.add(path, f"must be >= 0, got {value}")

    def one_of(self, path: str, value: str | None, allowed: frozenset[str]) -> None:
        if value is not None and value not in allowed:
            self.add(path, f"unknown value {value!r}; expected one of {', '.join(sorted(allowed))}")

    def regex(self, path: str, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as error:
            self.add(path, f"invalid regular expression {pattern!r}: {error}")
            return
        if _NOT_RE2.search(pattern):
            self.add(path, f"regular expression {pattern!r} uses lookaround or backreferences, which RE2 (Istio, Envoy) does not support")

    def host(self, path: str, host: str) -> None:
        if not is_host_pattern(host):
            self.add(path, f"invalid host {host!r}: expected a DNS name, `*.suffix`, `*` or an IP address")

    def string_match(self, path: str, match: StringMatch, *, presence_allowed: bool = False, prefix_allowed: bool = True,
                     empty_prefix_allowed: bool = False) -> None:
        """Istio's validateStringMatch: one of exact/prefix/regex; an empty regex never, an empty
        prefix only for `uri` (Envoy's path matcher allows it, its string matcher does not)."""
        chosen = [name for name in ("exact", "prefix", "regex") if getattr(match, name) is not None]
        if match.prefix == "" and not empty_prefix_allowed:
            self.add(f"{path}.prefix", "prefix string match should not be empty")
        if match.regex == "":
            self.add(f"{path}.regex", "regex string match should not be empty")
            return
        # In headers/withoutHeaders an empty match ({}) is Istio's presence test.
        if len(chosen) > 1 or (not chosen and not presence_allowed):
            got = " and ".join(chosen) if chosen else "none"
            self.add(path, f"set exactly one of exact, prefix, regex (got {got})")
        if match.prefix is not None and not prefix_allowed:
            self.add(f"{path}.prefix", "prefix is not supported here (Istio supports exact and regex for query parameters)")
        if match.regex is not None:
            self.regex(f"{path}.regex", match.regex)
