"""The `remora` command line's argument types: each turns one flag's text into its value or
raises argparse.ArgumentTypeError naming what is wrong (argparse prints it with the flag)."""
from __future__ import annotations

import argparse

from remora.config.duration import parse_duration


def seconds(text: str) -> float:
    try:
        return parse_duration(text) if not text.replace(".", "", 1).isdigit() else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def labels(text: str) -> dict[str, str]:
    from remora.proxy.security.identity import parse_labels
    try:
        return parse_labels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"percentage must be between 0 and 100, got {text}")
    return value


def http_url(text: str) -> str:
    from urllib.parse import urlsplit
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def port_map(text: str) -> dict[int, int]:
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        port, sep, local = part.partition("=")
        if not sep or not port.isdigit() or not local.isdigit() or not 0 < int(port) < 65536 \
                or not 0 <= int(local) < 65536:
            raise argparse.ArgumentTypeError(f"expected PORT=LOCAL (e.g. 80=8080), got {part!r}")
        mapping[int(port)] = int(local)
    return mapping


def log_level(text: str) -> int:
    from remora.proxy.log_levels import LevelError, level_number
    try:
        return level_number(text)
    except LevelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def component_log_levels(text: str) -> dict[str, int]:
    from remora.proxy.log_levels import LevelError, parse_component_levels
    try:
        return parse_component_levels(text)
    except LevelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def locality(text: str) -> str:
    """`region`, `region/zone` or `region/zone/subzone`, as Istio writes a locality."""
    parts = text.split("/")
    if len(parts) > 3 or not parts[0] or any(not part or part.strip() != part for part in parts):
        raise argparse.ArgumentTypeError(f"expected REGION[/ZONE[/SUBZONE]], e.g. us-east1/us-east1-b, got {text!r}")
    return text
