"""Outlier detection: the rules stated in remora/proxy/upstream/outlier.py (Envoy as Istio sets it)."""
from __future__ import annotations

import msgspec
import pytest

from remora.config.model import OutlierDetection
from remora.proxy.upstream.cluster import Endpoint
from remora.proxy.upstream.outlier import OutlierDetector, Result


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(n: int = 10, *, clock: Clock | None = None, settings: OutlierDetection | None = None,
         **fields):
    clock = clock or Clock()
    endpoints = [Endpoint(f"10.0.0.{i + 1}", 9080, {}) for i in range(n)]
    if settings is None:
        settings = OutlierDetection(**fields)
    return OutlierDetector(settings, endpoints, clock), endpoints, clock


def fail(det: OutlierDetector, ep: Endpoint, times: int, status: int = 500) -> None:
    for _ in range(times):
        det.report(ep, Result.HTTP_5XX, status)


def local_fail(det: OutlierDetector, ep: Endpoint, times: int) -> None:
    for _ in range(times):
        det.report(ep, Result.LOCAL_ORIGIN_FAILURE)


def eject_now(det: OutlierDetector, ep: Endpoint) -> None:
    fail(det, ep, det.threshold["consecutive_5xx"])
    assert ep.ejected


# ---- consecutive 5xx --------------------------------------------------------------------


def test_five_consecutive_5xx_eject_four_do_not():
    """The 5th consecutive 5xx (Istio's default consecutive5xxErrors) ejects at once."""
    det, eps, _ = make()
    fail(det, eps[0], 4)
    assert not eps[0].ejected
    fail(det, eps[0], 1)
    assert eps[0].ejected and det.ejections_active == 1


def test_success_between_5xx_resets_the_count():
    """A non-5xx response in between restarts the consecutive 5xx count."""
    det, eps, _ = make()
    fail(det, eps[0], 4)
    det.report(eps[0], Result.SUCCESS)
    fail(det, eps[0], 4)
    assert not eps[0].ejected
    fail(det, eps[0], 1)
    assert eps[0].ejected


def test_consecutive_5xx_zero_disables_5xx_ejection():
    """consecutive5xxErrors: 0 turns 5xx ejection off (never detected)."""
    det, eps, _ = make(consecutive_5xx_errors=0)
    fail(det, eps[0], 50)
    assert not eps[0].ejected
    assert det.stats()["ejections_detected_consecutive_5xx"] == 0


def test_report_status_classifies_by_code():
    """report_status counts 5xx as errors and anything else as success."""
    det, eps, _ = make(consecutive_5xx_errors=2)
    det.report_status(eps[0], 503)
    det.report_status(eps[0], 404)
    det.report_status(eps[0], 500)
    assert not eps[0].ejected
    det.report_status(eps[0], 599)
    assert eps[0].ejected


# ---- gateway errors ---------------------------------------------------------------------


def test_gateway_errors_count_only_502_503_504():
    """Only 502/503/504 count as gateway errors; another 5xx restarts the gateway count."""
    det, eps, _ = make(consecutive_gateway_errors=3, consecutive_5xx_errors=0)
    for status in (500, 501, 505, 599):
        fail(det, eps[0], 1, status)
    fail(det, eps[0], 1, 502)
    fail(det, eps[0], 1, 503)
    fail(det, eps[0], 1, 500)
    fail(det, eps[0], 1, 504)
    assert not eps[0].ejected
    fail(det, eps[0], 2, 503)
    assert eps[0].ejected
    assert det.stats()["ejections_enforced_consecutive_gateway_failure"] == 1


def test_gateway_unset_is_detected_but_never_enforced():
    """Without consecutiveGatewayErrors Envoy detects at 5 (enforcing 0) and never ejects."""
    det, eps, _ = make(consecutive_5xx_errors=0)
    fail(det, eps[0], 10, 503)
    assert not eps[0].ejected
    stats = det.stats()
    assert stats["ejections_detected_consecutive_gateway_failure"] == 2
    assert stats["ejections_enforced_consecutive_gateway_failure"] == 0


def test_gateway_zero_disables_gateway_detection():
    """consecutiveGatewayErrors: 0 disables gateway detection entirely."""
    det, eps, _ = make(consecutive_gateway_errors=0, consecutive_5xx_errors=0)
    fail(det, eps[0], 20, 503)
    assert det.stats()["ejections_detected_consecutive_gateway_failure"] == 0


def test_deprecated_consecutive_errors_is_ignored_as_since_istio_1_7():
    """consecutiveErrors N changes nothing (Istio >= 1.7): 5 consecutive 5xx eject, N gateway errors alone do not."""
    det, eps, _ = make(consecutive_errors=2)
    fail(det, eps[0], 4, 502)
    assert not eps[0].ejected
    assert det.threshold == make()[0].threshold and det.enforced == make()[0].enforced
    fail(det, eps[0], 1, 500)
    assert eps[0].ejected
    assert det.stats()["ejections_enforced_consecutive_5xx"] == 1
    assert det.stats()["ejections_enforced_consecutive_gateway_failure"] == 0


# ---- local-origin failures --------------------------------------------------------------


def test_local_origin_failures_count_as_5xx_and_gateway_when_not_split():
    """Not split: a connect failure/reset/timeout counts like a 503 for both detectors."""
    det, eps, _ = make(consecutive_gateway_errors=3, consecutive_5xx_errors=0)
    local_fail(det, eps[0], 3)
    assert eps[0].ejected
    det, eps, _ = make()
    fail(det, eps[0], 2, 500)
    local_fail(det, eps[0], 2)
    det.report(eps[0], Result.LOCAL_ORIGIN_SUCCESS)  # not an HTTP result: no reset
    local_fail(det, eps[0], 1)
    assert eps[0].ejected


def test_split_counts_local_origin_failures_separately():
    """Split: local-origin failures only count for consecutiveLocalOriginFailures."""
    det, eps, _ = make(split_external_local_origin_errors=True,
                       consecutive_local_origin_failures=3)
    local_fail(det, eps[0], 2)
    fail(det, eps[0], 4, 503)  # 4 < 5: no 5xx ejection, and no local-origin reset
    det.report(eps[0], Result.SUCCESS)
    assert not eps[0].ejected
    local_fail(det, eps[0], 1)
    assert eps[0].ejected
    assert det.stats()["ejections_enforced_consecutive_local_origin_failure"] == 1
    assert det.stats()["ejections_detected_consecutive_5xx"] == 0


def test_split_local_origin_success_resets_and_default_threshold_is_5():
    """Split: a local-origin success restarts the count; the default threshold is 5."""
    det, eps, _ = make(split_external_local_origin_errors=True)
    local_fail(det, eps[0], 4)
    det.report(eps[0], Result.LOCAL_ORIGIN_SUCCESS)
    local_fail(det, eps[0], 4)
    assert not eps[0].ejected
    local_fail(det, eps[0], 1)
    assert eps[0].ejected


# ---- ejection time ----------------------------------------------------------------------


def test_ejection_lasts_base_times_ejections_and_tick_returns_host():
    """Ejected for base x times ejected in a row; tick() returns it once that has passed."""
    det, eps, clock = make()
    ep = eps[0]
    eject_now(det, ep)
    assert det.ejection_info(ep) == {"ejected": True, "times_ejected": 1,
                                     "ejection_multiplier": 1, "ejected_until": 1030.0}
    clock.t = 1020.0
    det.tick()
    assert ep.ejected
    clock.t = 1030.0
    det.tick()
    assert not ep.ejected and det.ejections_active == 0
    clock.t = 1035.0
    eject_now(det, ep)  # again before a healthy interval: twice as long
    assert det.ejection_info(ep)["ejected_until"] == 1095.0
    clock.t = 1090.0
    det.tick()
    assert ep.ejected
    clock.t = 1095.0
    det.tick()
    assert not ep.ejected
    assert det.ejection_info(ep)["times_ejected"] == 2


@pytest.mark.parametrize("fields, kwargs, durations", [
    ({"base_ejection_time": "120s"}, {}, [120, 240, 300, 300, 300]),
    ({}, {"max_ejection_time": 45.0}, [30, 45, 45]),
    ({"base_ejection_time": "15m"}, {}, [900, 900]),  # max is max(300s, base)
])
def test_ejection_time_is_capped(fields, kwargs, durations):
    """The ejection time stops growing at max_ejection_time (300 s or base if larger)."""
    clock = Clock()
    endpoints = [Endpoint(f"10.0.0.{i}", 80, {}) for i in range(10)]
    det = OutlierDetector(OutlierDetection(**fields), endpoints, clock, **kwargs)
    got = []
    for _ in durations:
        eject_now(det, endpoints[0])
        got.append(det.ejection_info(endpoints[0])["ejected_until"] - clock.t)
        clock.t = det.ejection_info(endpoints[0])["ejected_until"]
        det.tick()
        assert not endpoints[0].ejected
    assert got == durations


def test_multiplier_decays_one_step_per_healthy_interval():
    """After return, each tick at least an interval later takes one step off the multiplier."""
    det, eps, clock = make()
    ep = eps[0]
    for _ in range(2):
        eject_now(det, ep)
        clock.t += det.ejection_info(ep)["ejected_until"] - clock.t
        det.tick()
    assert det.ejection_info(ep)["ejection_multiplier"] == 2
    returned = clock.t
    clock.t = returned + 5.0
    det.tick()  # less than an interval since the host came back: no decay
    assert det.ejection_info(ep)["ejection_multiplier"] == 2
    clock.t = returned + 10.0
    det.tick()
    assert det.ejection_info(ep)["ejection_multiplier"] == 1
    clock.t = returned + 20.0
    det.tick()
    det.tick()
    assert det.ejection_info(ep)["ejection_multiplier"] == 0
    eject_now(det, ep)
    assert det.ejection_info(ep)["ejected_until"] == clock.t + 30.0


def test_errors_while_ejected_are_ignored_and_counts_restart_on_return():
    """Errors while ejected detect nothing; a returned host needs a full run of errors again."""
    det, eps, clock = make()
    ep = eps[0]
    eject_now(det, ep)
    fail(det, ep, 12)
    assert det.stats()["ejections_detected_consecutive_5xx"] == 1
    clock.t += 30.0
    det.tick()
    fail(det, ep, 4)
    assert not ep.ejected
    fail(det, ep, 1)
    assert ep.ejected


# ---- max ejection percent ---------------------------------------------------------------


def test_max_ejection_percent_10_of_3_hosts_ejects_none():
    """10% of 3 hosts is under one host: Envoy (always_eject_one_host off) ejects none."""
    det, eps, _ = make(3)
    fail(det, eps[0], 5)
    assert not eps[0].ejected
    fail(det, eps[0], 4)  # the count restarted after the overflow
    stats = det.stats()
    assert (stats["ejections_overflow"], stats["ejections_detected_consecutive_5xx"]) == (1, 1)
    assert stats["ejections_enforced_total"] == 0


def test_always_eject_one_host_allows_the_first():
    """With always_eject_one_host the first ejection ignores the percentage, not the second."""
    clock = Clock()
    endpoints = [Endpoint(f"10.0.0.{i}", 80, {}) for i in range(3)]
    det = OutlierDetector(OutlierDetection(), endpoints, clock, always_eject_one_host=True)
    eject_now(det, endpoints[0])
    fail(det, endpoints[1], 5)
    assert not endpoints[1].ejected and det.stats()["ejections_overflow"] == 1


@pytest.mark.parametrize("n, percent, allowed", [(10, None, 1), (10, 0, 1), (4, 50, 2),
                                                 (20, 10, 2), (3, 100, 3)])
def test_max_ejection_percent_bounds_the_ejected_share(n, percent, allowed):
    """At most max_ejection_percent of hosts are ejected (0 or unset: Envoy's 10%)."""
    det, eps, _ = make(n, max_ejection_percent=percent)
    for ep in eps:
        fail(det, ep, 5)
    assert sum(ep.ejected for ep in eps) == det.ejections_active == allowed
    assert det.stats()["ejections_overflow"] == n - allowed


# ---- panic ------------------------------------------------------------------------------


def test_panic_below_min_health_percent():
    """Panic when the healthy share drops below minHealthPercent; it ends on return."""
    seen = []
    clock = Clock()
    endpoints = [Endpoint(f"10.0.0.{i}", 80, {}) for i in range(4)]
    settings = OutlierDetection(max_ejection_percent=100, min_health_percent=50)
    det = OutlierDetector(settings, endpoints, clock, on_panic_change=seen.append)
    eject_now(det, endpoints[0])
    eject_now(det, endpoints[1])
    assert not det.panic  # 50% healthy is not below 50%
    eject_now(det, endpoints[2])
    assert det.panic and seen == [True]
    clock.t += 30.0
    det.tick()
    assert not det.panic and seen == [True, False]


def test_no_panic_while_overprovisioned_health_is_full():
    """Envoy never panics while healthy share x 1.4 reaches 100%, whatever the threshold."""
    det, eps, _ = make(4, max_ejection_percent=100, min_health_percent=80)
    eject_now(det, eps[0])  # 75% healthy < 80%, but 75% x 1.4 >= 100%
    assert not det.panic
    det, eps, _ = make(10, max_ejection_percent=100, min_health_percent=80)
    for ep in eps[:3]:
        eject_now(det, ep)  # 70% healthy: 98% after overprovisioning
    assert det.panic


def test_no_panic_by_default_even_with_every_host_ejected():
    """minHealthPercent defaults to 0: panic disabled, even with all hosts ejected."""
    det, eps, _ = make(2, max_ejection_percent=100)
    for ep in eps:
        eject_now(det, ep)
    assert not det.panic


# ---- configuration, stats, lifecycle -----------------------------------------------------


def test_disabled_without_settings():
    """No outlierDetection: nothing is counted or ejected."""
    clock = Clock()
    eps = [Endpoint(f"10.0.0.{i}", 80, {}) for i in range(3)]
    det = OutlierDetector(None, eps, clock)
    fail(det, eps[0], 100, 503)
    det.tick()
    assert not det.enabled and not eps[0].ejected and not det.panic
    assert set(det.stats().values()) == {0}


def test_istio_yaml_fields_and_defaults():
    """Istio's camelCase fields are honoured; unset ones take Envoy's defaults via Istio."""
    settings = msgspec.convert({"consecutive5xxErrors": 2, "interval": "1s",
                                "baseEjectionTime": "2s", "maxEjectionPercent": 100},
                               OutlierDetection)
    det, eps, _ = make(settings=settings)
    assert (det.interval, det.base_ejection_time, det.max_ejection_time) == (1.0, 2.0, 300.0)
    fail(det, eps[0], 2)
    assert eps[0].ejected
    det, _, _ = make()
    assert (det.interval, det.base_ejection_time, det.max_ejection_percent,
            det.panic_threshold) == (10.0, 30.0, 10, 0)


def test_stats_follow_envoy_names_and_values():
    """Stats: detected vs enforced per detector, overflow, total and the active gauge."""
    det, eps, clock = make()
    fail(det, eps[0], 5, 503)  # gateway detected (not enforced), then 5xx ejects
    fail(det, eps[1], 5, 500)  # 2 of 10 would exceed 10%: overflow
    assert det.stats() == {
        "ejections_active": 1, "ejections_enforced_total": 1, "ejections_overflow": 1,
        "ejections_enforced_consecutive_5xx": 1, "ejections_detected_consecutive_5xx": 2,
        "ejections_enforced_consecutive_gateway_failure": 0,
        "ejections_detected_consecutive_gateway_failure": 1,
        "ejections_enforced_consecutive_local_origin_failure": 0,
        "ejections_detected_consecutive_local_origin_failure": 0,
    }
    clock.t += 30.0
    det.tick()
    assert det.stats()["ejections_active"] == 0


def test_unknown_endpoint_is_ignored():
    """A result for an endpoint the detector does not know changes nothing."""
    det, eps, _ = make()
    stranger = Endpoint("10.9.9.9", 80, {})
    fail(det, stranger, 10)
    assert not stranger.ejected and det.ejections_active == 0
    assert det.ejection_info(stranger)["times_ejected"] == 0


def test_construction_clears_stale_ejection_and_inherit_carries_state():
    """A new detector owns `ejected`; inherit() takes over state by endpoint key."""
    old, eps, clock = make()
    eject_now(old, eps[0])
    fail(old, eps[1], 3)
    fresh = [Endpoint(e.host, e.port, {}) for e in eps]
    fresh[2].ejected = True
    new = OutlierDetector(OutlierDetection(), fresh, clock)
    assert not fresh[2].ejected
    new.inherit(old)
    assert fresh[0].ejected and new.ejections_active == 1
    fail(new, fresh[1], 2)
    # 3 + 2 consecutive: one more detection, on top of the one the old detector counted
    assert new.stats()["ejections_detected_consecutive_5xx"] == 2
    clock.t += 30.0
    new.tick()
    assert not fresh[0].ejected


def test_inherit_keeps_the_cluster_counters_like_envoy():
    """outlier_detection.* counters carry over to the next config version (Envoy keeps a cluster's stats by name)."""
    old, eps, clock = make()
    eject_now(old, eps[0])
    fresh = [Endpoint(e.host, e.port, {}) for e in eps[1:]]   # the ejected endpoint went away
    new = OutlierDetector(OutlierDetection(), fresh, clock)
    new.inherit(old)
    assert new.stats()["ejections_enforced_total"] == 1 and new.stats()["ejections_active"] == 0
