"""Retry policy, backoff and retry budgets: pure logic, no I/O, Envoy/Istio semantics.

Istio -> policy (istio pilot/pkg/networking/core/route/retry/retry.go, ConvertPolicy):
- No `retries` on the route: Istio's default, "NumRetries: 2, RetryOn: connect-failure,
  refused-stream,unavailable,cancelled,retriable-status-codes", RetriableStatusCodes [503].
- `attempts` <= 0 (also when unset): "Configuration is explicitly disabling the retry
  policy". Otherwise start from the default; num_retries = attempts ("1 + attempts" tries).
  A non-empty `retryOn` replaces BOTH the default conditions and the default [503]: parts
  are split on ',', trimmed, empty ones dropped; "Any integers are assumed to be status
  codes" (if Go's http.StatusText knows them), and "If user has just specified HTTP
  status codes in retryOn but have not specified retriable-status-codes, let us add it".
  `perTryTimeout` passes through (0 means none, as in Envoy).
- Names are read as Envoy's RetryStateImpl::parseRetryOn reads them: exact, case-sensitive,
  unknown ones ignored ("5XX" retries nothing; the config validator rejects it earlier).

Conditions (Envoy router filter docs, x-envoy-retry-on / x-envoy-retry-grpc-on):
- 5xx: "any 5xx response code, or does not respond at all (disconnect/reset/read
  timeout). (Includes connect-failure and refused-stream)".
- gateway-error: "similar to the 5xx policy but will only retry requests that result in
  a 502, 503, or 504"; like 5xx it covers every failure (wouldRetryFromReset: "we count
  an upstream reset as a 5xx (since it will result in one)").
- reset: "does not respond at all (disconnect/reset/read timeout.)": every failure.
- connect-failure: "connection failure to the upstream server (connect timeout, etc.)";
  "This does not include upstream request timeouts".  refused-stream: REFUSED_STREAM.
- retriable-4xx: "Currently, the only response code in this category is 409".
- retriable-status-codes: the policy's list.  retriable-headers: Istio has no header list.
- envoy-ratelimited: a response carrying x-envoy-ratelimited "will not retry unless the
  retry policy envoy-ratelimited is enabled"; it is checked first and decides alone.
- gRPC: cancelled 1, deadline-exceeded 4, resource-exhausted 8, internal 13, unavailable
  14; "gRPC status codes in trailers will not trigger retry logic" (head only).
- A per-try timeout resets the attempt (router onPerTryTimeoutCommon calls
  maybeRetryReset(LocalReset)), so it is retried by reset, 5xx and gateway-error only.
- Overflow is never retried: "we never retry if the reset reason is overflow".

Backoff: "a fully jittered exponential back-off algorithm ... default base interval of
25ms", capped by default at "10 times the base interval (250ms)". The docs give retry N
the range [0, (2^N-1)B), but Envoy's code (JitteredExponentialBackOffStrategy) returns
`random() % next_interval` with next_interval = B, 2B, 4B, ... capped at the max; we follow
the code: retry i (0 = first retry) waits uniform in [0, min(cap, B * 2**i)).

Budget (Envoy CircuitBreakers.Thresholds): max_retries is "The maximum number of parallel
retries"; RetryBudget.budget_percent is "a percentage of the sum of active requests and
active pending requests" (default 20), min_retry_concurrency "The limit on the number of
active retries may never go below this number" (default 3); Envoy truncates the percent
product to an integer. Envoy lets a budget override max_retries; here both apply.
Istio sets no budget and max_retries 2^32-1 unless connectionPool.http.maxRetries is set:
that is RetryBudget(max_retries=..., budget_percent=None).
"""
from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass

from remora.config.duration import parse_duration
from remora.config.model import HTTPRetry


class Failure(enum.Enum):
    """Why an attempt failed before any response byte went downstream."""
    CONNECT_FAILURE = "connect-failure"   # could not connect (refused, timeout connecting)
    RESET = "reset"                       # closed/reset before a complete response head
    PER_TRY_TIMEOUT = "per-try-timeout"   # per-try timeout fired (a local reset in Envoy)
    REFUSED_STREAM = "refused-stream"     # HTTP/2 REFUSED_STREAM (later)
    OVERFLOW = "overflow"                 # a local circuit breaker refused it (UO): never retried


HTTP_CONDITIONS = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
})
GRPC_CONDITIONS = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
CONDITIONS = HTTP_CONDITIONS | frozenset(GRPC_CONDITIONS)

_ANY_FAILURE = frozenset({"5xx", "gateway-error", "reset"})
_FAILURE_CONDITIONS = {
    Failure.CONNECT_FAILURE: _ANY_FAILURE | {"connect-failure"},
    Failure.RESET: _ANY_FAILURE,
    Failure.PER_TRY_TIMEOUT: _ANY_FAILURE,
    Failure.REFUSED_STREAM: _ANY_FAILURE | {"refused-stream"},
    Failure.OVERFLOW: frozenset(),
}
# The codes Go's net/http.StatusText names (Istio's test for "is a status code").
_KNOWN_STATUS = frozenset([*range(100, 104), *range(200, 209), 226, *range(300, 306), 307, 308,
                           *range(400, 419), *range(421, 427), 428, 429, 431, 451,
                           *range(500, 509), 510, 511])
_INTEGER = re.compile(r"[+-]?[0-9]+")   # what Go's strconv.Atoi accepts


@dataclass(frozen=True)
class RetryPolicy:
    num_retries: int                          # retries after the first try (Istio attempts)
    per_try_timeout: float | None             # seconds
    retry_on: frozenset[str]                  # known Envoy condition names only
    retriable_status_codes: frozenset[int]
    retry_remote_localities: bool = False     # Istio: previous_priorities retry priority

    def retry_on_failure(self, failure: Failure) -> bool:
        """Would Envoy retry an attempt that failed this way (before any response)?"""
        return not self.retry_on.isdisjoint(_FAILURE_CONDITIONS[failure])

    def retry_on_status(self, status: int, grpc_status: int | None = None, *,
                        ratelimited: bool = False) -> bool:
        """Would Envoy retry this response head? `grpc_status` from the head, not trailers;
        `ratelimited` when the response carries x-envoy-ratelimited."""
        on = self.retry_on
        if ratelimited:
            return "envoy-ratelimited" in on
        if "5xx" in on and 500 <= status <= 599:
            return True
        if "gateway-error" in on and status in (502, 503, 504):
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        if "retriable-status-codes" in on and status in self.retriable_status_codes:
            return True
        if grpc_status is not None:
            return any(GRPC_CONDITIONS.get(name) == grpc_status for name in on)
        return False

    @property
    def enabled(self) -> bool:
        """True when a failed attempt can be retried at all (Envoy: retry_on != 0)."""
        return self.num_retries > 0 and bool(self.retry_on)


NO_RETRY = RetryPolicy(num_retries=0, per_try_timeout=None, retry_on=frozenset(), retriable_status_codes=frozenset())
ISTIO_DEFAULT_RETRY = RetryPolicy(
    num_retries=2,
    per_try_timeout=None,
    retry_on=frozenset({"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}),
    retriable_status_codes=frozenset({503}),
)


def parse_retry_on(text: str) -> tuple[frozenset[str], frozenset[int]]:
    """Istio's parseRetryOn then Envoy's name parsing: (conditions, status codes)."""
    names: set[str] = set()
    codes: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if _INTEGER.fullmatch(part) and int(part) in _KNOWN_STATUS:
            codes.add(int(part))
        elif part in CONDITIONS:
            names.add(part)
    if codes:
        names.add("retriable-status-codes")
    return frozenset(names), frozenset(codes)


def compile_retry_policy(spec: HTTPRetry | None) -> RetryPolicy:
    """The policy for a route's `retries` (None: Istio's default policy)."""
    if spec is None:
        return ISTIO_DEFAULT_RETRY
    if spec.attempts <= 0:
        return NO_RETRY
    retry_on, codes = ISTIO_DEFAULT_RETRY.retry_on, ISTIO_DEFAULT_RETRY.retriable_status_codes
    if spec.retry_on:
        retry_on, codes = parse_retry_on(spec.retry_on)
    per_try = parse_duration(spec.per_try_timeout) if spec.per_try_timeout else None
    return RetryPolicy(
        num_retries=spec.attempts,
        per_try_timeout=per_try or None,
        retry_on=retry_on,
        retriable_status_codes=codes,
        retry_remote_localities=bool(spec.retry_remote_localities),
    )


def backoff_delay(retry_index: int, rng: random.Random | None = None,
                  base: float = 0.025, cap: float = 0.25) -> float:
    """Seconds to wait before retry `retry_index` (0 = first retry): uniform in
    [0, min(cap, base * 2**retry_index)), Envoy's JitteredExponentialBackOffStrategy."""
    if retry_index < 0:
        raise ValueError(f"retry_index must be >= 0, got {retry_index}")
    bound = cap if retry_index >= 64 else min(cap, base * (1 << retry_index))
    return (rng or random).random() * bound


class RetryBudget:
    """Per cluster (per worker) concurrency limit on retries, Envoy retry_budget style plus
    DestinationRule connectionPool.http.maxRetries. `budget_percent=None`: no budget."""

    __slots__ = ("max_retries", "budget_percent", "min_retry_concurrency", "active_retries")

    def __init__(self, max_retries: int | None = None, budget_percent: float | None = 20.0,
                 min_retry_concurrency: int = 3) -> None:
        self.max_retries = max_retries
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active_retries = 0

    def limit(self, active_requests: int) -> int | None:
        """Retries allowed at once with this many active + pending requests (None: no limit)."""
        limits = []
        if self.budget_percent is not None:
            limits.append(max(int(self.budget_percent / 100.0 * active_requests), self.min_retry_concurrency))
        if self.max_retries is not None:
            limits.append(self.max_retries)
        return min(limits) if limits else None

    def try_acquire(self, active_requests: int) -> bool:
        """Take a retry slot if the limit allows (Envoy canCreate: count < max)."""
        limit = self.limit(active_requests)
        if limit is not None and self.active_retries >= limit:
            return False
        self.active_retries += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by try_acquire (the retry finished or was abandoned)."""
        if self.active_retries <= 0:
            raise RuntimeError("RetryBudget.release() without a matching try_acquire()")
        self.active_retries -= 1
