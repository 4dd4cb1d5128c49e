"""Retry policy, backoff and budget: the rules stated in remora/proxy/router/retry.py."""
from __future__ import annotations

import random

import pytest

from remora.config.model import HTTPRetry
from remora.config.validate import RETRY_ON_CONDITIONS
from remora.proxy.router.retry import (
    CONDITIONS,
    ISTIO_DEFAULT_RETRY,
    NO_RETRY,
    Failure,
    RetryBudget,
    RetryPolicy,
    backoff_delay,
    compile_retry_policy,
)


def policy(*names: str, codes: tuple[int, ...] = ()) -> RetryPolicy:
    return RetryPolicy(num_retries=1, per_try_timeout=None, retry_on=frozenset(names),
                       retriable_status_codes=frozenset(codes))


# ---- Istio -> policy ---------------------------------------------------------------------

def test_no_retries_field_gives_istio_default():
    """A route without `retries` gets Istio's default: 2 retries on connect-failure,
    refused-stream, unavailable, cancelled and retriable-status-codes [503]."""
    p = compile_retry_policy(None)
    assert p == ISTIO_DEFAULT_RETRY
    assert p.num_retries == 2 and p.per_try_timeout is None and p.enabled
    assert p.retry_on == {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
    assert p.retriable_status_codes == {503}
    assert p.retry_on_status(503) and not p.retry_on_status(502) and not p.retry_on_status(500)
    assert p.retry_on_failure(Failure.CONNECT_FAILURE) and p.retry_on_failure(Failure.REFUSED_STREAM)
    assert not p.retry_on_failure(Failure.RESET) and not p.retry_on_failure(Failure.PER_TRY_TIMEOUT)
    assert p.retry_on_status(200, grpc_status=14) and p.retry_on_status(200, grpc_status=1)
    assert not p.retry_on_status(200, grpc_status=4)


@pytest.mark.parametrize("spec", [HTTPRetry(attempts=0), HTTPRetry(attempts=0, retry_on="5xx"), HTTPRetry()])
def test_zero_attempts_disables_retries(spec):
    """attempts 0 (also the default when only other fields are set) disables retries."""
    p = compile_retry_policy(spec)
    assert p == NO_RETRY and not p.enabled
    assert not p.retry_on_status(503) and not p.retry_on_failure(Failure.CONNECT_FAILURE)


def test_attempts_only_keeps_default_conditions_and_503():
    """With attempts but no retryOn, Istio keeps the default conditions and [503]."""
    p = compile_retry_policy(HTTPRetry(attempts=5, per_try_timeout="250ms"))
    assert p.num_retries == 5 and p.per_try_timeout == 0.25
    assert p.retry_on == ISTIO_DEFAULT_RETRY.retry_on
    assert p.retriable_status_codes == {503}


def test_retry_on_replaces_default_conditions_and_codes():
    """A retryOn without status codes replaces the default conditions and drops the default 503."""
    p = compile_retry_policy(HTTPRetry(attempts=3, retry_on="connect-failure"))
    assert p.retry_on == {"connect-failure"} and p.retriable_status_codes == frozenset()
    assert not p.retry_on_status(503) and not p.retry_on_status(200, grpc_status=14)
    assert not p.retry_on_failure(Failure.REFUSED_STREAM)


def test_bare_status_code_becomes_retriable_status_codes():
    """A bare "503" in retryOn adds 503 to the codes and the retriable-status-codes condition."""
    p = compile_retry_policy(HTTPRetry(attempts=2, retry_on="connect-failure,503"))
    assert p.retry_on == {"connect-failure", "retriable-status-codes"}
    assert p.retriable_status_codes == {503}
    assert p.retry_on_status(503) and not p.retry_on_status(502)


def test_bare_codes_merge_with_explicit_retriable_status_codes():
    """Several bare codes collect into one set; an explicit retriable-status-codes is kept once."""
    p = compile_retry_policy(HTTPRetry(attempts=2, retry_on="retriable-status-codes,503,429, 409"))
    assert p.retry_on == {"retriable-status-codes"}
    assert p.retriable_status_codes == {503, 429, 409}
    assert p.retry_on_status(429) and not p.retry_on_status(500)


def test_integer_unknown_to_go_is_not_a_status_code():
    """Istio only takes integers Go's http.StatusText knows as codes; "599" is an (unknown) name."""
    p = compile_retry_policy(HTTPRetry(attempts=2, retry_on="599,5xx"))
    assert p.retry_on == {"5xx"} and p.retriable_status_codes == frozenset()


def test_retry_on_whitespace_is_trimmed_and_case_is_exact():
    """Parts are trimmed and empty ones skipped; names compare case-sensitively as in Envoy."""
    p = compile_retry_policy(HTTPRetry(attempts=2, retry_on=" reset , ,Gateway-Error,\t503 ,5XX"))
    assert p.retry_on == {"reset", "retriable-status-codes"}
    assert p.retriable_status_codes == {503}
    assert not p.retry_on_status(502)   # "Gateway-Error" and "5XX" mean nothing to Envoy


def test_retry_on_with_only_unknown_names_retries_nothing():
    """A non-empty retryOn that yields no known condition replaces the default with nothing."""
    p = compile_retry_policy(HTTPRetry(attempts=2, retry_on="  ,bogus"))
    assert p.retry_on == frozenset() and not p.enabled


def test_per_try_timeout_and_remote_localities_pass_through():
    """perTryTimeout becomes seconds (0 means none); retryRemoteLocalities is carried."""
    p = compile_retry_policy(HTTPRetry(attempts=1, per_try_timeout="1.5s", retry_remote_localities=True))
    assert p.per_try_timeout == 1.5 and p.retry_remote_localities
    assert compile_retry_policy(HTTPRetry(attempts=1, per_try_timeout="0s")).per_try_timeout is None


def test_policy_understands_every_name_the_validator_accepts():
    """Every retryOn name the config validator accepts is a condition the policy evaluates."""
    assert CONDITIONS == RETRY_ON_CONDITIONS


# ---- conditions: failures ----------------------------------------------------------------

F = Failure
FAILURE_TABLE = {
    # condition: failures it retries (Envoy wouldRetryFromReset; per-try timeout = LocalReset)
    "5xx": {F.CONNECT_FAILURE, F.RESET, F.PER_TRY_TIMEOUT, F.REFUSED_STREAM},
    "gateway-error": {F.CONNECT_FAILURE, F.RESET, F.PER_TRY_TIMEOUT, F.REFUSED_STREAM},
    "reset": {F.CONNECT_FAILURE, F.RESET, F.PER_TRY_TIMEOUT, F.REFUSED_STREAM},
    "connect-failure": {F.CONNECT_FAILURE},
    "refused-stream": {F.REFUSED_STREAM},
    "retriable-4xx": set(),
    "retriable-status-codes": set(),
    "retriable-headers": set(),
    "envoy-ratelimited": set(),
    "cancelled": set(), "deadline-exceeded": set(), "internal": set(),
    "resource-exhausted": set(), "unavailable": set(),
}


def test_failure_table_covers_every_condition():
    """The failure table below lists every condition the policy knows."""
    assert set(FAILURE_TABLE) == CONDITIONS


@pytest.mark.parametrize("condition", sorted(FAILURE_TABLE))
@pytest.mark.parametrize("failure", list(Failure))
def test_each_condition_retries_exactly_its_failures(condition, failure):
    """5xx, gateway-error and reset retry every failure; connect-failure and refused-stream
    only their own; response-only conditions none; overflow is never retried."""
    expected = failure in FAILURE_TABLE[condition]
    assert policy(condition, codes=(503,)).retry_on_failure(failure) is expected


def test_overflow_is_never_retried_even_with_every_condition():
    """Envoy: "we never retry if the reset reason is overflow"."""
    assert not policy(*CONDITIONS, codes=(503,)).retry_on_failure(Failure.OVERFLOW)


# ---- conditions: response statuses --------------------------------------------------------

STATUSES = [200, 204, 301, 400, 404, 408, 409, 425, 429, 499, 500, 501, 502, 503, 504, 505, 511, 599]
STATUS_TABLE = {
    "5xx": {500, 501, 502, 503, 504, 505, 511, 599},
    "gateway-error": {502, 503, 504},
    "retriable-4xx": {409},
    "retriable-status-codes": {429, 503},   # the policy's codes below
    "reset": set(), "connect-failure": set(), "refused-stream": set(),
    "retriable-headers": set(), "envoy-ratelimited": set(),
    "cancelled": set(), "deadline-exceeded": set(), "internal": set(),
    "resource-exhausted": set(), "unavailable": set(),
}


@pytest.mark.parametrize("condition", sorted(STATUS_TABLE))
def test_each_condition_retries_exactly_its_statuses(condition):
    """5xx: 500-599; gateway-error: 502/503/504; retriable-4xx: 409 only; retriable-status-codes:
    the listed codes; failure-only and gRPC conditions: no HTTP status."""
    p = policy(condition, codes=(429, 503))
    assert {s for s in STATUSES if p.retry_on_status(s)} == STATUS_TABLE[condition]


def test_retriable_status_codes_condition_needs_the_condition_name():
    """Codes in the list do nothing unless retriable-status-codes is among the conditions."""
    assert not policy("connect-failure", codes=(503,)).retry_on_status(503)


def test_ratelimited_response_is_retried_only_by_envoy_ratelimited():
    """x-envoy-ratelimited decides alone: only envoy-ratelimited retries it, even a 503 under 5xx."""
    assert not policy("5xx", "gateway-error", "retriable-status-codes", codes=(503,)).retry_on_status(503, ratelimited=True)
    assert policy("envoy-ratelimited").retry_on_status(429, ratelimited=True)
    assert not policy("envoy-ratelimited").retry_on_status(429)


# ---- conditions: gRPC -------------------------------------------------------------------

GRPC = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}


@pytest.mark.parametrize("condition", sorted(GRPC))
def test_each_grpc_condition_retries_exactly_its_grpc_status(condition):
    """Each gRPC condition matches its own grpc-status (1, 4, 8, 13, 14) and no other."""
    p = policy(condition)
    assert [code for code in range(17) if p.retry_on_status(200, grpc_status=code)] == [GRPC[condition]]


def test_grpc_conditions_ignore_http_status_and_missing_grpc_status():
    """gRPC conditions look only at grpc-status in the head; without one they never match."""
    p = policy(*GRPC)
    assert p.retry_on_status(503, grpc_status=14) and p.retry_on_status(200, grpc_status=14)
    assert not p.retry_on_status(503) and not p.retry_on_status(200, grpc_status=0)
    assert not policy("5xx").retry_on_status(200, grpc_status=14)


# ---- enabled -------------------------------------------------------------------------------

def test_enabled_needs_retries_and_a_condition():
    """A policy retries only with num_retries > 0 and at least one condition."""
    assert policy("5xx").enabled
    assert not RetryPolicy(0, None, frozenset({"5xx"}), frozenset()).enabled
    assert not RetryPolicy(3, None, frozenset(), frozenset()).enabled


# ---- backoff -------------------------------------------------------------------------------

def test_backoff_bounds_double_from_base_up_to_cap():
    """Retry i waits in [0, min(cap, 25ms * 2**i)): never at or above the bound, never negative."""
    rng = random.Random(42)
    for index, bound in enumerate([0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]):
        draws = [backoff_delay(index, rng) for _ in range(4000)]
        assert min(draws) >= 0.0 and max(draws) < bound
        assert max(draws) > bound * 0.99   # the bound is actually reached, so it grows with i
    assert backoff_delay(10_000, rng) < 0.25   # huge indexes stay capped


def test_backoff_is_uniform_over_its_range():
    """Full jitter: draws spread evenly over [0, bound) (each tenth holds about 10%)."""
    rng = random.Random(7)
    draws = [backoff_delay(2, rng) for _ in range(20000)]
    tenths = [0] * 10
    for d in draws:
        tenths[int(d / 0.1 * 10)] += 1
    assert all(1800 < n < 2200 for n in tenths)
    assert abs(sum(draws) / len(draws) - 0.05) < 0.002


def test_backoff_respects_custom_base_and_cap():
    """base and cap are parameters: base 10ms, cap 30ms gives bounds 10, 20, 30, 30 ms."""
    rng = random.Random(1)
    for index, bound in enumerate([0.01, 0.02, 0.03, 0.03]):
        draws = [backoff_delay(index, rng, base=0.01, cap=0.03) for _ in range(2000)]
        assert max(draws) < bound and max(draws) > bound * 0.98


def test_backoff_rejects_negative_index():
    """Retry indexes start at 0."""
    with pytest.raises(ValueError):
        backoff_delay(-1)


# ---- budget --------------------------------------------------------------------------------

def acquire_all(budget: RetryBudget, active_requests: int) -> int:
    taken = 0
    while budget.try_acquire(active_requests):
        taken += 1
        assert taken < 10_000
    return taken


def test_budget_allows_min_retry_concurrency_at_low_load():
    """With few active requests the budget still allows min_retry_concurrency (3) retries."""
    assert acquire_all(RetryBudget(), active_requests=0) == 3
    assert acquire_all(RetryBudget(), active_requests=10) == 3


def test_budget_is_percent_of_active_requests_truncated():
    """Above the minimum the limit is budget_percent of active requests, truncated (Envoy)."""
    assert acquire_all(RetryBudget(), active_requests=100) == 20
    assert acquire_all(RetryBudget(), active_requests=24) == 4
    assert acquire_all(RetryBudget(budget_percent=50.0, min_retry_concurrency=1), active_requests=7) == 3


def test_max_retries_caps_the_budget():
    """connectionPool.http.maxRetries caps concurrent retries even when the budget allows more."""
    assert acquire_all(RetryBudget(max_retries=5), active_requests=1000) == 5
    assert acquire_all(RetryBudget(max_retries=1), active_requests=0) == 1


def test_no_budget_means_only_max_retries_or_unlimited():
    """budget_percent=None (Istio's default: no retry budget) leaves max_retries as the only limit."""
    assert acquire_all(RetryBudget(max_retries=7, budget_percent=None), active_requests=0) == 7
    unlimited = RetryBudget(budget_percent=None)
    assert all(unlimited.try_acquire(0) for _ in range(500))


def test_release_frees_a_slot():
    """release() gives back one slot so the next try_acquire succeeds; unmatched release is an error."""
    budget = RetryBudget()
    assert acquire_all(budget, active_requests=0) == 3 and budget.active_retries == 3
    budget.release()
    assert budget.active_retries == 2
    assert budget.try_acquire(0) and not budget.try_acquire(0)
    for _ in range(3):
        budget.release()
    assert budget.active_retries == 0
    with pytest.raises(RuntimeError):
        budget.release()
