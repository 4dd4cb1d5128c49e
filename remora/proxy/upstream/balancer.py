"""Load-balancing policies: which endpoint of a cluster gets the next request.

Rules (shared by every policy):
- `pick()` returns None only when the balancer has no endpoints at all.
- Ejected endpoints are skipped. If every endpoint is ejected the balancer is in "panic"
  (Envoy's panic mode) and picks among all of them, as if none were ejected. Setting
  `panic = True` (the outlier detector's panic threshold, Istio's minHealthPercent) forces
  that mode: `ejected` is ignored until it is set back to False.
- `exclude` (the hosts a retry already tried) is a preference: an excluded endpoint is
  returned only when no other eligible one exists. Preference order is: live and not
  excluded, then live, then (panic) not excluded, then anything.
- `weight`, `active_requests` and `ejected` are read from the endpoint objects at pick
  time (the caller keeps them); everything else is precomputed at construction, so the
  plain path of `pick()` is a few attribute reads and no allocation.

Policies:
- RoundRobin: a precomputed schedule of one period (sum of weights after dividing by
  their gcd), so over any sum(weights) consecutive picks each endpoint is picked exactly
  `weight` times. The slots of each endpoint are evenly spaced, phases staggered;
  equal weights give plain rotation. The start offset is random (as in Envoy) unless a
  seeded `rng` is given. A change of the ejected set is noticed when a picked endpoint
  turns out ejected, or at the end of a period; the schedule is then rebuilt over the
  live endpoints and restarts, so windows stay exact for the new weights.
- LeastRequest: Envoy's power of two choices. Two distinct candidates are drawn
  (weighted when weights differ) and the one with fewer active requests per unit of
  weight wins; ties go to the first draw, so idle endpoints share traffic by weight.
- Random: weighted random.
- RingHash (a ring, not Maglev): each endpoint owns `weight / gcd(weights) x per_weight`
  points, the prefix of a blake2b stream of its key; so a change of endpoints moves only
  the keys of those that left, or about their share to those that joined. `per_weight`
  is `points_per_weight` (128) unless that makes the ring smaller than
  `minimum_ring_size` (1024 as in Envoy; i.e. under 8 weight units in total) or larger
  than `maximum_ring_size`; only then, or when the weights' gcd changes, do other keys
  move. A key goes to the first point at or after its hash, walking on past ineligible
  owners; no key means a random point, i.e. weighted random.
"""
from __future__ import annotations

import random
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Sequence
from hashlib import blake2b
from itertools import accumulate
from math import gcd
from typing import Generic, Protocol, TypeVar

from remora.config.model import LoadBalancerSettings

T = TypeVar("T")
_SCHEDULE_CAP = 1 << 16  # longest precomputed round-robin period; above it weights scale down
_UNPACK8 = struct.Struct("<8Q").unpack
_TO_UNIT = 2.0**-64  # 64-bit hash -> ring position in [0, 1]


class BalancedEndpoint(Protocol):
    weight: int  # >= 1
    active_requests: int  # in-flight requests, kept by the caller
    ejected: bool  # outlier-ejected or unhealthy right now, kept by the caller
    key: str  # stable identity, "10.0.0.1:9080", used for hashing


def hash_key_bytes(value: str | bytes) -> bytes:
    """The bytes to pass as `hash_key` for a header, cookie or address value."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def _schedule(items: Sequence[T], weights: Sequence[int]) -> tuple[T, ...]:
    """One period of smooth weighted round robin: item i appears weights[i] times."""
    pairs = [(item, w) for item, w in zip(items, weights) if w > 0]
    if not pairs:
        return ()
    g = gcd(*(w for _, w in pairs))
    ws = [w // g for _, w in pairs]
    if max(ws) == 1:
        return tuple(item for item, _ in pairs)
    total = sum(ws)
    if total > _SCHEDULE_CAP:  # approximate: keeps the period (and memory) bounded
        ws = [max(1, w * _SCHEDULE_CAP // total) for w in ws]
    # Slot k of item i sits at virtual time (k + phase_i) / w_i: each item's slots are
    # evenly spaced, and staggered phases keep equal-weight items apart.
    n = len(ws)
    slots = sorted(((k + (i + 0.5) / n) / w, i) for i, w in enumerate(ws) for k in range(w))
    return tuple(pairs[i][0] for _, i in slots)


def _weighted_pair(cum: list[int], rand) -> tuple[int, int]:
    """Indices of two distinct weighted draws; the second is drawn without the first."""
    n = len(cum)
    total = cum[-1]
    i = bisect_right(cum, rand() * total)
    lo = cum[i - 1] if i else 0
    w = cum[i] - lo
    r = rand() * (total - w)
    if r >= lo:
        r += w  # skip over the first draw's interval
    j = bisect_right(cum, r, 0, n - 1)
    return i, (j if j != i else (i + 1) % n)


class Balancer:
    """Base class: holds the endpoints; subclasses implement `pick`."""

    __slots__ = ("endpoints", "_ignore_ejected")

    def __init__(self, endpoints: Sequence[BalancedEndpoint]) -> None:
        self.endpoints: tuple[BalancedEndpoint, ...] = tuple(endpoints)
        self._ignore_ejected = False

    @property
    def panic(self) -> bool:
        """Forced panic mode: balance across all endpoints, ejected or not."""
        return self._ignore_ejected

    @panic.setter
    def panic(self, value: bool) -> None:
        value = bool(value)
        if value != self._ignore_ejected:
            self._ignore_ejected = value
            self._panic_changed()

    def _panic_changed(self) -> None:
        """Hook for policies that precompute over the live endpoints."""

    def pick(
        self, hash_key: bytes | None = None, exclude: Collection[BalancedEndpoint] = ()
    ) -> BalancedEndpoint | None:
        raise NotImplementedError

    def _candidates(self, exclude: Collection[BalancedEndpoint]) -> list[BalancedEndpoint]:
        """Slow path: the best non-empty class of endpoints in the preference order."""
        if self._ignore_ejected:
            pool = list(self.endpoints)
        else:
            pool = [e for e in self.endpoints if not e.ejected] or list(self.endpoints)
        if exclude:
            preferred = [e for e in pool if e not in exclude]
            if preferred:
                return preferred
        return pool


class RoundRobinBalancer(Balancer):
    """Smooth weighted round robin over a precomputed schedule; exact over any period."""

    __slots__ = ("_sched", "_len", "_i", "_mask", "_panic", "_full")

    def __init__(
        self, endpoints: Sequence[BalancedEndpoint], *, rng: random.Random | None = None
    ) -> None:
        super().__init__(endpoints)
        self._full = _schedule(self.endpoints, [max(1, e.weight) for e in self.endpoints])
        self._rebuild()
        if self._len:
            self._i = (rng or random).randrange(self._len)

    def _rebuild(self) -> None:
        mask = tuple([e.ejected for e in self.endpoints])
        live = [e for e, ejected in zip(self.endpoints, mask) if not ejected]
        self._panic = self._ignore_ejected or not live
        if self._panic or len(live) == len(self.endpoints):
            self._sched = self._full
        else:
            self._sched = _schedule(live, [max(1, e.weight) for e in live])
        self._mask = mask if any(mask) else None
        self._len = len(self._sched)
        self._i = 0

    def _panic_changed(self) -> None:
        if self._len:
            self._rebuild()

    def _live_changed(self) -> bool:
        if self._mask is None:
            for e in self.endpoints:
                if e.ejected:
                    return True
            return False
        return self._mask != tuple([e.ejected for e in self.endpoints])

    def pick(self, hash_key=None, exclude=()):
        i = self._i
        if i == 0:  # a period ends: pick up endpoints that were ejected or came back
            if not self._len:
                return None
            if self._live_changed():
                self._rebuild()
        ep = self._sched[i]
        i += 1
        self._i = 0 if i == self._len else i
        if (ep.ejected and not self._panic) or (exclude and ep in exclude):
            return self._pick_slow(exclude)
        return ep

    def _pick_slow(self, exclude):
        if self._live_changed():
            self._rebuild()
        sched, n, i, panic = self._sched, self._len, self._i, self._panic
        for _ in range(n):
            ep = sched[i]
            i = 0 if i + 1 == n else i + 1
            if (panic or not ep.ejected) and not (exclude and ep in exclude):
                self._i = i
                return ep
        # Every scheduled endpoint is excluded: the exclusion gives way.
        ep = sched[self._i]
        self._i = 0 if self._i + 1 == n else self._i + 1
        return ep


class _RandomBase(Balancer):
    __slots__ = ("_rng", "_random", "_cum", "_total", "_weighted")

    def __init__(
        self, endpoints: Sequence[BalancedEndpoint], *, rng: random.Random | None = None
    ) -> None:
        super().__init__(endpoints)
        self._rng = rng or random.Random()
        self._random = self._rng.random
        weights = [max(1, e.weight) for e in self.endpoints]
        self._cum = list(accumulate(weights))
        self._total = self._cum[-1] if weights else 0
        self._weighted = len(set(weights)) > 1


class RandomBalancer(_RandomBase):
    """Weighted random choice."""

    __slots__ = ()

    def pick(self, hash_key=None, exclude=()):
        eps = self.endpoints
        if not eps:
            return None
        if self._weighted:
            ep = eps[bisect_right(self._cum, self._random() * self._total)]
        else:
            ep = eps[int(self._random() * len(eps))]
        if (ep.ejected and not self._ignore_ejected) or (exclude and ep in exclude):
            cands = self._candidates(exclude)
            return self._rng.choices(cands, [max(1, e.weight) for e in cands])[0]
        return ep


class LeastRequestBalancer(_RandomBase):
    """Power of two choices on active requests per unit of weight (Envoy LEAST_REQUEST)."""

    __slots__ = ()

    def pick(self, hash_key=None, exclude=()):
        eps = self.endpoints
        n = len(eps)
        if n < 2:  # one endpoint: chosen even if ejected (panic) or excluded (no other)
            return eps[0] if n else None
        if self._weighted:
            i, j = _weighted_pair(self._cum, self._random)
        else:
            i = int(self._random() * n)
            j = int(self._random() * (n - 1))
            if j >= i:
                j += 1
        a, b = eps[i], eps[j]
        if ((a.ejected or b.ejected) and not self._ignore_ejected) or (
            exclude and (a in exclude or b in exclude)
        ):
            return self._pick_slow(exclude)
        return _less_loaded(a, b)

    def _pick_slow(self, exclude):
        cands = self._candidates(exclude)
        if len(cands) == 1:
            return cands[0]
        i, j = _weighted_pair(list(accumulate(max(1, e.weight) for e in cands)), self._random)
        return _less_loaded(cands[i], cands[j])


def _less_loaded(a: BalancedEndpoint, b: BalancedEndpoint) -> BalancedEndpoint:
    """`b` if it has fewer active requests per unit of weight than `a`, else `a`."""
    if b.active_requests * a.weight < a.active_requests * b.weight:
        return b
    return a


class RingHashBalancer(Balancer):
    """Consistent hashing on a ring (not Maglev) with weight-proportional points."""

    __slots__ = ("_points", "_owners", "_len", "_random")

    def __init__(
        self,
        endpoints: Sequence[BalancedEndpoint],
        *,
        minimum_ring_size: int = 1024,
        points_per_weight: int = 128,
        maximum_ring_size: int = 1 << 20,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(endpoints)
        self._random = (rng or random.Random()).random
        weights = [max(1, e.weight) for e in self.endpoints]
        owner_at: dict[float, BalancedEndpoint] = {}  # ring position in [0, 1) -> endpoint
        if weights:
            g = gcd(*weights)
            weights = [w // g for w in weights]
            total = sum(weights)
            per = max(points_per_weight, -(-minimum_ring_size // total), 1)
            if per * total > maximum_ring_size:
                scale = maximum_ring_size / total
                counts = [max(1, int(w * scale)) for w in weights]
            else:
                counts = [w * per for w in weights]
            # Filled in key order, so a (vanishingly rare) clash of positions goes to the
            # greater key whatever the input order. Float positions sort twice as fast.
            for e, count in sorted(zip(self.endpoints, counts), key=lambda p: p[0].key):
                for h in _ring_points(e.key, count):
                    owner_at[h * _TO_UNIT] = e
        self._points = sorted(owner_at)
        self._owners = tuple([owner_at[p] for p in self._points])
        self._len = len(self._points)

    @property
    def ring_size(self) -> int:
        return self._len

    def pick(self, hash_key=None, exclude=()):
        if not self._len:
            return None
        h = self._random() if hash_key is None else _hash64(hash_key) * _TO_UNIT
        i = bisect_left(self._points, h)
        if i == self._len:
            i = 0
        ep = self._owners[i]
        if (ep.ejected and not self._ignore_ejected) or (exclude and ep in exclude):
            return self._walk(i, exclude)
        return ep

    def _walk(self, i: int, exclude):
        """Clockwise from ring position i to the first owner that may be picked now."""
        allowed = {id(e) for e in self._candidates(exclude)}
        owners, n = self._owners, self._len
        for step in range(n):
            ep = owners[(i + step) % n]
            if id(ep) in allowed:
                return ep
        return owners[i]  # unreachable: every endpoint owns at least one point


def _ring_points(key: str, count: int) -> list[int]:
    """The first `count` ring points of an endpoint: 8 per blake2b block, prefix-stable."""
    raw = key.encode("utf-8", "surrogateescape") + b"#"
    out: list[int] = []
    block = 0
    while len(out) < count:
        out.extend(_UNPACK8(blake2b(raw + b"%d" % block, digest_size=64).digest()))
        block += 1
    del out[count:]
    return out


class SmoothWeightedRoundRobin(Generic[T]):
    """Deterministic weighted picker (route destinations): exact over any period."""

    __slots__ = ("_sched", "_len", "_i")

    def __init__(self, items: Sequence[T], weights: Sequence[int]) -> None:
        if len(items) != len(weights):
            raise ValueError("items and weights differ in length")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError("weights must be >= 0 with at least one > 0")
        self._sched = _schedule(items, weights)
        self._len = len(self._sched)
        self._i = 0

    def next(self) -> T:
        i = self._i
        item = self._sched[i]
        i += 1
        self._i = 0 if i == self._len else i
        return item


_SIMPLE: dict[str, type[Balancer]] = {
    "UNSPECIFIED": RoundRobinBalancer,
    "ROUND_ROBIN": RoundRobinBalancer,
    "LEAST_REQUEST": LeastRequestBalancer,
    "LEAST_CONN": LeastRequestBalancer,  # Istio's deprecated alias of LEAST_REQUEST
    "RANDOM": RandomBalancer,
    "PASSTHROUGH": RoundRobinBalancer,  # no original-destination routing: balance instead
}


def make_balancer(
    settings: LoadBalancerSettings | None, endpoints: Sequence[BalancedEndpoint]
) -> Balancer:
    """The balancer a DestinationRule's loadBalancer asks for (Istio semantics).

    consistentHash wins over simple. Maglev is served by the ring (its tableSize is not
    a ring size and is ignored); ringHash.minimumRingSize, else the deprecated top-level
    minimumRingSize, sets the ring's minimum size (default 1024, as in Envoy).
    """
    if settings is not None and settings.consistent_hash is not None:
        ch = settings.consistent_hash
        size = (ch.ring_hash.minimum_ring_size if ch.ring_hash else None) or ch.minimum_ring_size
        return RingHashBalancer(endpoints, minimum_ring_size=size or 1024)
    simple = (settings.simple if settings is not None else None) or "UNSPECIFIED"
    try:
        cls = _SIMPLE[simple.upper()]
    except KeyError:
        raise ValueError(f"unknown loadBalancer.simple: {simple!r}") from None
    return cls(endpoints)
