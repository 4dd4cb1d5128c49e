"""RetryState: one request's retries (Envoy's retry_state_impl.h).

Made the first time a request's attempt fails in a way its route may retry, so the plain
path pays nothing for it. It decides whether another attempt may start (the route's
policy, the retries left, a replayable body, the cluster's retry budget), holds the
budget slot while a retry is in flight, remembers the endpoints tried (a retry prefers
another one) and owns the backoff timer. The stream asks it and does the rest.
"""
from __future__ import annotations

from remora.proxy.router.retry import Failure, RetryPolicy, backoff_delay


class RetryState:
    """The retries of one request (see the module docstring)."""

    __slots__ = ("policy", "budget", "retries", "tried", "budget_held", "exhausted", "backoff")

    def __init__(self, policy: RetryPolicy, budget) -> None:
        self.policy = policy
        self.budget = budget         # the cluster's RetryBudget (circuit.retry_budget)
        self.retries = 0             # retries started so far (attempt = retries + 1)
        self.tried: list = []        # endpoints of failed attempts
        self.budget_held = False     # holding a slot of the budget
        self.exhausted = False       # a retriable failure came after the last retry (URX)
        self.backoff = None          # the timer before the next attempt

    def should_retry(self, failure: Failure | None, status: int, replayable: bool, stats,
                     pending: int, grpc_status: int | None = None) -> bool:
        """Whether another attempt may start after this failure (or retriable `status`);
        when so, the retry is counted and holds a budget slot. `pending`: the cluster's
        queued requests, which the budget counts as active; `grpc_status`: a trailers-only
        gRPC answer's status, for the gRPC conditions."""
        policy = self.policy
        if not (policy.retry_on_failure(failure) if failure is not None
                else policy.retry_on_status(status, grpc_status)):
            return False
        if self.retries >= policy.num_retries:
            self.exhausted = True
            return False
        if not replayable:
            stats.retry_or_shadow_abandoned += 1     # body too long to resend
            return False
        budget = self.budget
        if self.budget_held:
            budget.release()
            self.budget_held = False
        if not budget.try_acquire(stats.upstream_rq_active + pending):
            stats.upstream_rq_retry_overflow += 1
            return False
        self.budget_held = True
        self.retries += 1
        stats.upstream_rq_retry += 1
        return True

    def back_off(self, loop, failed_endpoint, then) -> None:
        """Wait Envoy's jittered backoff, then call `then` (the next attempt)."""
        if failed_endpoint is not None:
            self.tried.append(failed_endpoint)
        if self.backoff is not None:
            self.backoff.cancel()
        self.backoff = loop.call_later(backoff_delay(self.retries - 1), then)

    def in_backoff(self) -> bool:
        return self.backoff is not None

    def backoff_over(self) -> None:
        self.backoff = None

    def release(self) -> None:
        """The request ended: no more backoff, and the budget slot goes back."""
        if self.backoff is not None:
            self.backoff.cancel()
            self.backoff = None
        if self.budget_held:
            self.budget.release()
            self.budget_held = False
