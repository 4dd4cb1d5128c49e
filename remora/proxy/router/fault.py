"""Fault injection (VirtualService http[].fault), as Istio configures Envoy's fault filter.

Rules:
- delay and abort are drawn independently per request, each with its own percentage;
  an unset percentage injects nothing (Istio: "If left unspecified, no request will be
  delayed/aborted"); the deprecated integer `delay.percent` is honoured when
  `percentage` is absent.
- The delay comes first, then the abort (Envoy's filter order), so a request can be both
  delayed (DI) and aborted (FI). An aborted request never reaches the upstream.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from remora.config.duration import parse_duration
from remora.proxy.router.grpc import grpc_status_code
from remora.config.model import HTTPFaultInjection


@dataclass(frozen=True)
class Fault:
    """A compiled fault: seconds to delay and status to abort with, each with a percent."""

    delay: float = 0.0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_percent: float = 0.0
    abort_grpc: int | None = None   # abort.grpcStatus: a gRPC-shaped reply with this status

    def draw(self, rng=random.random) -> tuple[float, int]:
        """For one request: (delay seconds or 0, abort status or 0)."""
        delay = self.delay if self.delay_percent and rng() * 100 < self.delay_percent else 0.0
        abort = self.abort_status if self.abort_percent and rng() * 100 < self.abort_percent else 0
        return delay, abort


def compile_fault(spec: HTTPFaultInjection | None) -> Fault | None:
    """The Fault for a route, or None when it injects nothing."""
    if spec is None:
        return None
    delay = delay_percent = 0.0
    if spec.delay is not None and spec.delay.fixed_delay:
        delay = parse_duration(spec.delay.fixed_delay)
        if spec.delay.percentage is not None:
            delay_percent = spec.delay.percentage.value
        elif spec.delay.percent is not None:
            delay_percent = float(spec.delay.percent)
    abort_status = abort_percent = 0
    abort_grpc = None
    if spec.abort is not None and (spec.abort.http_status or spec.abort.grpc_status):
        # grpcStatus (Envoy's abort.grpc_status): trailers-only, HTTP 200, that gRPC status
        abort_grpc = grpc_status_code(spec.abort.grpc_status) if spec.abort.grpc_status else None
        abort_status = spec.abort.http_status or 200
        abort_percent = spec.abort.percentage.value if spec.abort.percentage is not None else 0.0
    if not delay_percent and not abort_percent:
        return None
    return Fault(delay, delay_percent, abort_status, abort_percent, abort_grpc)
