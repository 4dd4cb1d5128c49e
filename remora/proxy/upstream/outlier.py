"""Outlier detection: Envoy's consecutive-error ejection, configured the way Istio does it.

Pure logic over an injected clock; the worker calls `report()` per upstream result and
`tick()` every `interval`. Sources: Envoy's arch overview "Outlier detection" and
config.cluster.v3.OutlierDetection (1.40), Envoy's outlier_detection_impl.cc, Istio's
DestinationRule OutlierDetection and its translation (pilot applyOutlierDetection).

Istio -> Envoy settings:
- No outlierDetection: no detector (`enabled` False, nothing is ever ejected).
- consecutive5xxErrors: threshold, default 5; 0 disables it. consecutiveGatewayErrors:
  unset means Envoy's default threshold 5 with enforcing_consecutive_gateway_failure 0,
  i.e. detected (and counted) but never ejected; 0 disables; N > 0 ejects.
  The deprecated consecutiveErrors is ignored, as by Istio since 1.7 (config/deprecated.py:
  the loader warns); before 1.7 it meant an enforced gateway threshold with 5xx not enforced.
- interval 10s, baseEjectionTime 30s, maxEjectionPercent 10 (0 also means 10, as Istio
  only passes values > 0), max_ejection_time max(300s, base) (Istio cannot set it).
- minHealthPercent -> healthy_panic_threshold, default 0 (panic disabled).
Counting (putHttpResponseCode / putResult):
- A 5xx counts for consecutive_5xx; a 502/503/504 also for consecutive_gateway_failure,
  any other 5xx resets the gateway count; a non-5xx response resets both.
- Not split: a local-origin failure (connect failure, reset, timeout) counts as a 503/504,
  i.e. for both; a connection success is not an HTTP result and changes nothing.
- split_external_local_origin_errors: local-origin failures count only for
  consecutive_local_origin_failure (Istio: consecutiveLocalOriginFailures, default 5),
  reset by a local-origin success; HTTP results count only as above.
- Callers report no result for a circuit-breaker overflow (UO): the router skips it too.
Ejection (ejectHost), when a count reaches its threshold (==, as Envoy):
- An already ejected host is ignored. Otherwise `detected_*` counts, then: if
  100 * (ejected + 1) / hosts > max_ejection_percent the host is not ejected
  (`ejections_overflow`; "Will eject at least one host regardless of the value if
  always_eject_one_host is enabled", default off, so 10% of 3 hosts ejects none); else,
  if that detector is enforced, the host is ejected now (`enforced_*`) and its multiplier
  grows by one while multiplier * base < max + base. Either way that count restarts.
- "The real time is equal to the base time multiplied by the number of times the host
  has been ejected and is capped by max_ejection_time": min(base * multiplier, max).
- tick(): a host is "brought back into service after the ejection time has been
  satisfied" (its counts restart); a host not ejected, unejected at least one interval
  ago, has its multiplier decremented: "If the host is healthy during that check, the
  ejection time multiplier is decremented."
Panic (LoadBalancerBase): with one priority, health = min(100, 140 * healthy // hosts);
panic when health < 100 and 100 * healthy / hosts < threshold; balancers then ignore
ejections. With threshold 0 there is no panic even when every host is ejected: Envoy
has no healthy host then (503 UH).
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from remora.config.duration import parse_duration
from remora.config.model import OutlierDetection
from remora.proxy.log_levels import logger

_log = logger("upstream")

if TYPE_CHECKING:
    from remora.proxy.upstream.cluster import Endpoint

DEFAULT_INTERVAL = 10.0
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0
DEFAULT_MAX_EJECTION_PERCENT = 10
DEFAULT_THRESHOLD = 5  # Envoy's default for all three consecutive detectors
_SLACK = 1e-3  # timers may fire a hair early (asyncio rounds by clock resolution)


class Result(enum.Enum):
    SUCCESS = "success"  # an upstream response that is not 5xx
    HTTP_5XX = "http_5xx"  # an upstream 5xx response; pass its status
    LOCAL_ORIGIN_FAILURE = "local_origin_failure"  # connect failure, reset, timeout
    LOCAL_ORIGIN_SUCCESS = "local_origin_success"  # upstream stream ready (onPoolReady)


_X5 = "consecutive_5xx"
_GW = "consecutive_gateway_failure"
_LO = "consecutive_local_origin_failure"
_KINDS = (_X5, _GW, _LO)
_KIND_WORDS = {_X5: "5xx errors", _GW: "gateway errors", _LO: "local-origin failures"}
_GATEWAY = frozenset((502, 503, 504))


class _Host:
    __slots__ = ("ep", "counts", "num_ejections", "multiplier", "ejected_at", "unejected_at")

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.counts = {_X5: 0, _GW: 0, _LO: 0}
        self.num_ejections = 0
        self.multiplier = 0
        self.ejected_at: float | None = None
        self.unejected_at: float | None = None


class OutlierDetector:
    """Consecutive-error ejection for the endpoints of one cluster (one worker)."""

    def __init__(self, settings: OutlierDetection | None, endpoints: Sequence[Endpoint],
                 now: Callable[[], float], *, max_ejection_time: float | None = None,
                 always_eject_one_host: bool = False,
                 on_panic_change: Callable[[bool], None] | None = None, cluster: str = "-") -> None:
        s = settings or OutlierDetection()
        self.cluster = cluster     # named in the `upstream` log lines of ejections
        self.enabled = settings is not None
        self._now = now
        self._on_panic_change = on_panic_change
        self._always_one = always_eject_one_host
        self.interval = parse_duration(s.interval) if s.interval else DEFAULT_INTERVAL
        self.base_ejection_time = (parse_duration(s.base_ejection_time) if s.base_ejection_time
                                   else DEFAULT_BASE_EJECTION_TIME)
        self.max_ejection_time = max_ejection_time or max(DEFAULT_MAX_EJECTION_TIME,
                                                          self.base_ejection_time)
        self.max_ejection_percent = min(100, s.max_ejection_percent
                                        or DEFAULT_MAX_EJECTION_PERCENT)
        self.panic_threshold = min(100, max(0, s.min_health_percent or 0))
        self.split = bool(s.split_external_local_origin_errors)
        threshold = {_X5: DEFAULT_THRESHOLD, _GW: DEFAULT_THRESHOLD,
                     _LO: s.consecutive_local_origin_failures or DEFAULT_THRESHOLD}
        enforced = {_X5: True, _GW: False, _LO: True}
        for kind, value in ((_X5, s.consecutive_5xx_errors), (_GW, s.consecutive_gateway_errors)):
            if value is not None:
                threshold[kind], enforced[kind] = value, value > 0
        self.threshold, self.enforced = threshold, enforced
        self._hosts = {id(ep): _Host(ep) for ep in endpoints}
        for ep in endpoints:  # the detector owns `ejected`; see inherit() to carry state
            ep.ejected = False
        self._active = 0
        self._panic = False
        self._stats = dict.fromkeys(
            ["ejections_enforced_total", "ejections_overflow"]
            + [f"ejections_{w}_{k}" for k in _KINDS for w in ("enforced", "detected")], 0)

    # ---- hot path ---------------------------------------------------------------------

    def report(self, ep: Endpoint, result: Result, status: int = 0) -> None:
        """Count one upstream result for `ep`; eject it now if a threshold is reached."""
        if not self.enabled:
            return
        host = self._hosts.get(id(ep))
        if host is None:  # an endpoint of another config version
            return
        if result is Result.SUCCESS:
            counts = host.counts
            counts[_X5] = counts[_GW] = 0
        elif result is Result.HTTP_5XX:
            self._http_error(host, status or 500)
        elif self.split:
            if result is Result.LOCAL_ORIGIN_FAILURE:
                self._count(host, _LO)
            else:
                host.counts[_LO] = 0
        elif result is Result.LOCAL_ORIGIN_FAILURE:
            self._http_error(host, status or 503)  # Envoy: connect failure 503, timeout 504

    def report_status(self, ep: Endpoint, status: int) -> None:
        """Count an upstream response by its status code (hot path: successes return early)."""
        if status < 500 or status > 599:
            host = self._hosts.get(id(ep))
            if host is not None:
                counts = host.counts
                if counts[_X5] or counts[_GW]:
                    counts[_X5] = counts[_GW] = 0
            return
        self.report(ep, Result.HTTP_5XX, status)

    def _http_error(self, host: _Host, status: int) -> None:
        if status in _GATEWAY:
            self._count(host, _GW)
        else:
            host.counts[_GW] = 0
        self._count(host, _X5)

    def _count(self, host: _Host, kind: str) -> None:
        n = host.counts[kind] + 1
        host.counts[kind] = n
        if n == self.threshold[kind] and host.ejected_at is None:
            self._stats[f"ejections_detected_{kind}"] += 1
            self._eject(host, kind)
            host.counts[kind] = 0

    def _eject(self, host: _Host, kind: str) -> None:
        allowed = 100.0 * (self._active + 1) / len(self._hosts) <= self.max_ejection_percent
        if not (allowed or (self._always_one and self._active == 0)):
            self._stats["ejections_overflow"] += 1
            return
        if not self.enforced[kind]:
            return
        self._active += 1
        self._stats["ejections_enforced_total"] += 1
        self._stats[f"ejections_enforced_{kind}"] += 1
        host.num_ejections += 1
        host.ejected_at = self._now()
        base = self.base_ejection_time
        if host.multiplier * base < self.max_ejection_time + base:
            host.multiplier += 1
        host.ep.ejected = True
        _log.info("upstream: cluster %s: endpoint %s ejected for %gs (%d consecutive %s, ejection %d)",
                  self.cluster, host.ep.key, self._ejection_time(host), self.threshold[kind],
                  _KIND_WORDS[kind], host.num_ejections)
        self._update_panic()

    # ---- every interval ---------------------------------------------------------------

    def tick(self) -> None:
        """Return hosts whose ejection time passed; decay multipliers of healthy hosts."""
        if not self.enabled:
            return
        now = self._now()
        for host in self._hosts.values():
            if host.ejected_at is not None:
                if self._ejection_time(host) <= now - host.ejected_at + _SLACK:
                    self._uneject(host, now)
            elif (host.multiplier and host.unejected_at is not None
                  and now - host.unejected_at + _SLACK >= self.interval):
                host.multiplier -= 1

    def _ejection_time(self, host: _Host) -> float:
        return min(self.base_ejection_time * host.multiplier, self.max_ejection_time)

    def _uneject(self, host: _Host, now: float) -> None:
        self._active -= 1
        host.ejected_at = None
        host.unejected_at = now
        for kind in _KINDS:
            host.counts[kind] = 0
        host.ep.ejected = False
        _log.info("upstream: cluster %s: endpoint %s back in service", self.cluster, host.ep.key)
        self._update_panic()

    # ---- panic, state, stats ----------------------------------------------------------

    def _update_panic(self) -> None:
        total = len(self._hosts)
        healthy = total - self._active
        panic = (total > 0 and 140 * healthy // total < 100
                 and 100.0 * healthy / total < self.panic_threshold)
        if panic != self._panic:
            self._panic = panic
            if self._on_panic_change is not None:
                self._on_panic_change(panic)

    @property
    def panic(self) -> bool:
        """Healthy share below min_health_percent: balancers must ignore ejections."""
        return self._panic

    @property
    def ejections_active(self) -> int:
        return self._active

    def stats(self) -> dict[str, int]:
        """Envoy's outlier_detection.* stats for this cluster (ejections_active is a gauge)."""
        return {"ejections_active": self._active, **self._stats}

    def ejection_info(self, ep: Endpoint) -> dict:
        """Per-endpoint outlier state for /clusters."""
        host = self._hosts.get(id(ep))
        if host is None or host.ejected_at is None:
            until = None
        else:
            until = host.ejected_at + self._ejection_time(host)
        return {"ejected": until is not None,
                "times_ejected": host.num_ejections if host else 0,
                "ejection_multiplier": host.multiplier if host else 0,
                "ejected_until": until}

    def inherit(self, previous: OutlierDetector) -> None:
        """Take over the state of endpoints with the same key from a previous config version.

        Envoy keeps a host's outlier state while the host stays in the cluster, and the
        cluster's outlier_detection.* counters while the cluster exists; call this right
        after construction, before any report.
        """
        self._stats = dict(previous._stats)   # counters (ejections_active is computed)
        if not self.enabled or not previous.enabled:
            return
        old = {h.ep.key: h for h in previous._hosts.values()}
        for host in self._hosts.values():
            prior = old.get(host.ep.key)
            if prior is None:
                continue
            host.counts = dict(prior.counts)
            host.num_ejections, host.multiplier = prior.num_ejections, prior.multiplier
            host.ejected_at, host.unejected_at = prior.ejected_at, prior.unejected_at
            host.ep.ejected = prior.ejected_at is not None
            self._active += host.ep.ejected
        self._update_panic()
