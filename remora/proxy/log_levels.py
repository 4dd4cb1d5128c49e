"""The sidecar's own log (stderr): named components with levels, as Envoy's loggers have.

`--log-level` sets every component (Envoy's `-l`, Istio's `proxyLogLevel`),
`--component-log-level rbac:debug,jwt:debug` some of them (Envoy's flag of that name), and
the admin endpoint `/logging` changes them on a running proxy, with Envoy's query forms, so
`istioctl proxy-config log` and `curl -X POST :15000/logging?rbac=debug` work:

    POST /logging?level=debug                 every component
    POST /logging?rbac=debug                  one component
    POST /logging?paths=rbac:debug,jwt:info   several
    GET  /logging (or POST with no query)     the list, "active loggers:"

Rules this module keeps:

- One logger per component, `remora.<component>`, and nothing else writes the sidecar's
  stderr log; the names are Envoy's where Envoy has a logger for the same work (rbac, jwt,
  upstream, config, secret, ...), so people type the names they know.
- A line is `<program>: <message>` (`remora proxy: ...`, `remora gateway: ...`), the shape
  these lines had before levels existed, so scripts reading them keep working.
- Debug lines are written only on paths that are not per request unless their component
  is at debug (`isEnabledFor` first): the request path pays one cached level check.
- A bad name or level is refused whole, naming it; nothing is half-applied.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_OFF = logging.CRITICAL + 10

# Envoy's level names (spdlog's), lowest first; "warn" is accepted for "warning".
LEVELS: dict[str, int] = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
                          "warning": logging.WARNING, "error": logging.ERROR,
                          "critical": logging.CRITICAL, "off": _OFF}
_ALIASES = {"warn": "warning"}

# component -> what it logs (GET /logging lists the names; docs/operations.md the meanings)
COMPONENTS: dict[str, str] = {
    "admin": "the admin endpoints' own actions (health checks failed by hand, ...)",
    "config": "the control stream: connects, pushes accepted and rejected, snapshots",
    "connection": "inbound connections refused or failed (TLS handshakes, peer identity)",
    "http": "local replies: status, response flags and details for each one (debug)",
    "jwt": "JWT verification failures and why (debug)",
    "main": "start, config warnings, drain and exit, worker processes",
    "rbac": "AuthorizationPolicy decisions: the policy and the request's attributes (debug)",
    "secret": "the workload certificate and gateway credentials: issue, rotation, errors",
    "tracing": "span export errors",
    "upstream": "outlier ejections and returns; upstream TLS identity failures",
}


def logger(component: str) -> logging.Logger:
    """The logger of one component (a KeyError for a name not in COMPONENTS: a typo in code)."""
    if component not in COMPONENTS:
        raise KeyError(f"unknown log component {component!r}")
    return logging.getLogger(f"remora.{component}")


class LevelError(ValueError):
    """A component name or level that is not one of the accepted ones."""


def level_number(name: str) -> int:
    """The logging level for Envoy's level name; LevelError naming the accepted ones."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in LEVELS:
        raise LevelError(f"unknown log level {name!r}: use one of {', '.join(LEVELS)}")
    return LEVELS[key]


def level_name(number: int) -> str:
    for name, value in LEVELS.items():
        if value == number:
            return name
    return logging.getLevelName(number).lower()


def parse_component_levels(text: str) -> dict[str, int]:
    """`rbac:debug,jwt:info` -> {component: level}; LevelError naming the bad pair."""
    levels: dict[str, int] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        component, colon, level = pair.partition(":")
        if not colon:
            raise LevelError(f"{pair!r}: expected COMPONENT:LEVEL, e.g. rbac:debug")
        levels[_known(component.strip())] = level_number(level)
    return levels


def _known(component: str) -> str:
    if component not in COMPONENTS:
        raise LevelError(f"unknown logger {component!r}: use one of {', '.join(COMPONENTS)}")
    return component


def changes_from_query(query: Mapping[str, str]) -> dict[str, int]:
    """Envoy's /logging query (level=, paths=, or COMPONENT=LEVEL pairs) as {component: level}."""
    changes: dict[str, int] = {}
    for key, value in query.items():
        if key == "level":
            changes.update(dict.fromkeys(COMPONENTS, level_number(value)))
        elif key == "paths":
            changes.update(parse_component_levels(value))
        else:
            changes[_known(key)] = level_number(value)
    return changes


def apply_levels(changes: Mapping[str, int]) -> None:
    """Set the given components' levels (names already checked)."""
    for component, level in changes.items():
        logger(component).setLevel(level)


def current_levels() -> dict[str, str]:
    """Every component's level name, in COMPONENTS order."""
    return {component: level_name(logger(component).level) for component in COMPONENTS}


def listing() -> str:
    """GET /logging's body, as Envoy writes it."""
    return "active loggers:\n" + "".join(f"  {name}: {level}\n" for name, level in current_levels().items())


def configure(program: str, level: int = logging.INFO, components: Mapping[str, int] = (),
              stream=None) -> None:
    """Send every component to stderr as `<program>: <message>` at `level`, then the
    per-component overrides. Called once at start, before workers fork (they inherit it)."""
    root = logging.getLogger("remora")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(f"{program}: %(message)s"))
    root.addHandler(handler)
    root.propagate = False      # not twice through the root logger of an embedding program
    root.setLevel(TRACE)        # the components decide
    apply_levels(dict.fromkeys(COMPONENTS, level))
    apply_levels(dict(components))
