"""Fault injection compilation and per-request draws."""
from __future__ import annotations

import random

from remora.config.model import FaultAbort, FaultDelay, HTTPFaultInjection, Percent
from remora.proxy.router.fault import Fault, compile_fault


def test_unset_percentages_inject_nothing():
    """Istio: a delay or abort without a percentage injects nothing."""
    spec = HTTPFaultInjection(delay=FaultDelay(fixed_delay="1s"), abort=FaultAbort(http_status=503))
    assert compile_fault(spec) is None


def test_legacy_integer_percent_is_used_for_delay():
    """The deprecated delay.percent applies when percentage is absent."""
    fault = compile_fault(HTTPFaultInjection(delay=FaultDelay(fixed_delay="250ms", percent=30)))
    assert fault == Fault(delay=0.25, delay_percent=30.0)


def test_draws_follow_each_percentage_independently():
    """Delay and abort are drawn independently with their own percentages."""
    fault = Fault(delay=0.1, delay_percent=25.0, abort_status=500, abort_percent=50.0)
    rng = random.Random(7).random
    draws = [fault.draw(rng) for _ in range(20000)]
    delayed = sum(1 for d, _ in draws if d) / len(draws)
    aborted = sum(1 for _, a in draws if a) / len(draws)
    both = sum(1 for d, a in draws if d and a) / len(draws)
    assert abs(delayed - 0.25) < 0.02 and abs(aborted - 0.50) < 0.02
    assert abs(both - 0.125) < 0.02


def test_zero_and_full_percentages():
    """0% never injects and 100% always does."""
    always = compile_fault(HTTPFaultInjection(abort=FaultAbort(http_status=418, percentage=Percent(value=100))))
    assert all(always.draw() == (0.0, 418) for _ in range(100))
    assert compile_fault(HTTPFaultInjection(abort=FaultAbort(http_status=418, percentage=Percent(value=0)))) is None
