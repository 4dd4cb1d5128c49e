"""Load-balancing policies: the rules stated in remora/proxy/upstream/balancer.py."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remora.config.model import ConsistentHashLB, LoadBalancerSettings, Maglev, RingHash
from remora.proxy.upstream.balancer import (
    LeastRequestBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    SmoothWeightedRoundRobin,
    hash_key_bytes,
    make_balancer,
)


@dataclass(eq=False)
class Ep:
    key: str
    weight: int = 1
    active_requests: int = 0
    ejected: bool = False


def eps(*weights: int) -> list[Ep]:
    return [Ep(f"10.0.0.{i + 1}:9080", w) for i, w in enumerate(weights)]


def picks(balancer, count: int, **kw) -> list:
    return [balancer.pick(**kw) for _ in range(count)]


def assert_exact_windows(seq: list, expected: dict) -> None:
    """Every window of sum(expected) consecutive items holds exactly `expected` counts."""
    width = sum(expected.values())
    assert len(seq) >= 2 * width
    window = Counter(seq[:width])
    assert window == Counter(expected)
    for start in range(1, len(seq) - width + 1):
        window[seq[start - 1]] -= 1
        window[seq[start + width - 1]] += 1
        assert +window == Counter(expected), f"window at {start}"


def keys(n: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(n)]


# ---- round robin ------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 2), (1, 1, 1, 1), (2, 4, 6), (7,)])
def test_round_robin_windows_exact(weights):
    """Over any sum(weights) consecutive picks each endpoint is picked exactly its weight."""
    endpoints = eps(*weights)
    lb = RoundRobinBalancer(endpoints, rng=random.Random(1))
    assert_exact_windows(picks(lb, 5 * sum(weights)), dict(zip(endpoints, weights)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.integers(0, 1000))
def test_round_robin_windows_exact_random_weights(weights, seed):
    """The exact-window rule holds for arbitrary weights and start offsets."""
    endpoints = eps(*weights)
    lb = RoundRobinBalancer(endpoints, rng=random.Random(seed))
    assert_exact_windows(picks(lb, 3 * sum(weights)), dict(zip(endpoints, weights)))


def test_round_robin_equal_weights_rotate():
    """Equal weights give plain rotation in endpoint order."""
    endpoints = eps(3, 3, 3, 3)
    lb = RoundRobinBalancer(endpoints, rng=random.Random(2))
    seq = picks(lb, 12)
    start = endpoints.index(seq[0])
    assert seq == [endpoints[(start + k) % 4] for k in range(12)]


def longest_run(seq: list, item) -> int:
    """The most times `item` comes in a row in seq."""
    run = best = 0
    for x in seq:
        run = run + 1 if x is item else 0
        best = max(best, run)
    return best


def assert_evenly_spread(seq: list, weights: dict) -> None:
    """Every window of L consecutive picks holds floor or ceil of L * w / W picks of each
    endpoint of weight w (W: the sum): no endpoint gets its share in bursts, at any scale."""
    period = sum(weights.values())
    for length in range(1, period + 1):
        for ep, w in weights.items():
            fair = {length * w // period, -(-length * w // period)}
            counts = {seq[i:i + length].count(ep) for i in range(len(seq) - length + 1)}
            assert counts <= fair, f"weight {w}: {counts} picks in windows of {length}, fair is {fair}"


def test_round_robin_weighted_is_smooth():
    """Weighted slots are spread out: with [5, 1, 1] the heavy endpoint never runs more than
    3 picks in a row (5 picks around 2 others), the light ones never sit adjacent."""
    a, b, c = endpoints = eps(5, 1, 1)
    seq = picks(RoundRobinBalancer(endpoints, rng=random.Random(3)), 70)
    assert longest_run(seq, a) == 3
    assert all({x, y} != {b, c} for x, y in zip(seq, seq[1:]))
    assert_evenly_spread(seq, {a: 5, b: 1, c: 1})


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 2), (4, 1), (2, 1, 1), (1, 3), (3, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_robin_spreads_each_endpoint_evenly(weights, seed):
    """The even spread holds for other weights and start offsets."""
    endpoints = eps(*weights)
    seq = picks(RoundRobinBalancer(endpoints, rng=random.Random(seed)), 4 * sum(weights))
    assert_evenly_spread(seq, dict(zip(endpoints, weights)))


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 2, 2), (1, 1, 1)])
def test_round_robin_skips_ejected_and_keeps_exact_windows(weights):
    """An ejected endpoint is never picked and the others stay exact over windows."""
    endpoints = eps(*weights)
    lb = RoundRobinBalancer(endpoints, rng=random.Random(4))
    picks(lb, 3)
    endpoints[1].ejected = True
    seq = picks(lb, 6 * sum(weights))
    assert endpoints[1] not in seq
    live = {e: e.weight for e in endpoints if not e.ejected}
    assert_exact_windows(seq[sum(weights):], live)  # after at most one old period


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 9), st.booleans()), min_size=2, max_size=7),
    st.integers(0, 99),
)
def test_round_robin_exact_windows_after_random_ejections(spec, seed):
    """With any subset ejected, the live endpoints are exact over windows (all: panic)."""
    endpoints = eps(*[w for w, _ in spec])
    lb = RoundRobinBalancer(endpoints, rng=random.Random(seed))
    picks(lb, seed % 7)
    for e, (_, ejected) in zip(endpoints, spec):
        e.ejected = ejected
    live = {e: e.weight for e in endpoints if not e.ejected} or {e: e.weight for e in endpoints}
    seq = picks(lb, sum(e.weight for e in endpoints) + 3 * sum(live.values()))
    assert_exact_windows(seq[sum(e.weight for e in endpoints):], live)


def test_round_robin_picks_up_recovered_endpoint():
    """An endpoint that is no longer ejected is back in the exact rotation within a period."""
    endpoints = eps(2, 1)
    endpoints[0].ejected = True
    lb = RoundRobinBalancer(endpoints, rng=random.Random(5))
    assert set(picks(lb, 6)) == {endpoints[1]}
    endpoints[0].ejected = False
    seq = picks(lb, 30)
    assert_exact_windows(seq[3:], {endpoints[0]: 2, endpoints[1]: 1})


def test_round_robin_exclude_honoured_when_alternatives_exist():
    """An excluded endpoint is not picked while another eligible endpoint exists."""
    endpoints = eps(5, 1, 1)
    lb = RoundRobinBalancer(endpoints)
    assert endpoints[0] not in picks(lb, 50, exclude=[endpoints[0]])
    assert picks(lb, 5, exclude=[endpoints[0], endpoints[2]]) == [endpoints[1]] * 5


def test_round_robin_exclude_gives_way_when_no_alternative():
    """When every live endpoint is excluded, an excluded live one is still returned."""
    endpoints = eps(1, 1, 1)
    endpoints[2].ejected = True
    lb = RoundRobinBalancer(endpoints)
    got = picks(lb, 10, exclude=endpoints[:2])
    assert set(got) <= set(endpoints[:2]) and None not in got


def test_round_robin_panic_when_all_ejected():
    """All endpoints ejected: panic mode picks among all of them, by weight."""
    endpoints = eps(2, 1)
    for e in endpoints:
        e.ejected = True
    lb = RoundRobinBalancer(endpoints)
    assert_exact_windows(picks(lb, 30), {endpoints[0]: 2, endpoints[1]: 1})


def test_round_robin_panic_prefers_not_excluded():
    """In panic an excluded endpoint is avoided when another exists."""
    endpoints = eps(1, 1, 1)
    for e in endpoints:
        e.ejected = True
    lb = RoundRobinBalancer(endpoints)
    assert endpoints[0] not in picks(lb, 20, exclude={endpoints[0]})


ALL_POLICIES = [RoundRobinBalancer, LeastRequestBalancer, RandomBalancer, RingHashBalancer]


@pytest.mark.parametrize("cls", ALL_POLICIES)
def test_empty_balancer_returns_none(cls):
    """A balancer without endpoints picks None."""
    assert cls([]).pick() is None
    assert cls([]).pick(hash_key=b"k", exclude=()) is None


@pytest.mark.parametrize("cls", ALL_POLICIES)
def test_every_policy_skips_ejected_and_panics(cls):
    """Every policy skips ejected endpoints and, when all are ejected, still returns one."""
    endpoints = eps(1, 2, 3)
    endpoints[2].ejected = True
    lb = cls(endpoints)
    got = [lb.pick(hash_key=k) for k in keys(300)]
    assert endpoints[2] not in got and set(got) == set(endpoints[:2])
    for e in endpoints:
        e.ejected = True
    got = [lb.pick(hash_key=k) for k in keys(300)]
    assert set(got) == set(endpoints)


@pytest.mark.parametrize("cls", ALL_POLICIES)
def test_forced_panic_ignores_ejections_until_cleared(cls):
    """With `panic` set, ejected endpoints are picked like live ones; clearing it skips them."""
    endpoints = eps(1, 1, 1)
    endpoints[0].ejected = True
    lb = cls(endpoints)
    assert endpoints[0] not in [lb.pick(hash_key=k) for k in keys(300)]
    lb.panic = True
    assert lb.panic is True
    assert set(lb.pick(hash_key=k) for k in keys(300)) == set(endpoints)
    lb.panic = False
    assert endpoints[0] not in [lb.pick(hash_key=k) for k in keys(300)]


def test_round_robin_forced_panic_rotates_over_all_exactly():
    """Round robin in forced panic is exact over all endpoints from the next pick on."""
    endpoints = eps(2, 1, 1)
    endpoints[1].ejected = True
    lb = RoundRobinBalancer(endpoints, rng=random.Random(1))
    picks(lb, 5)
    lb.panic = True
    assert_exact_windows(picks(lb, 40), {endpoints[0]: 2, endpoints[1]: 1, endpoints[2]: 1})


@pytest.mark.parametrize("cls", ALL_POLICIES)
def test_every_policy_honours_exclude(cls):
    """Every policy avoids excluded endpoints while a non-excluded live one exists."""
    endpoints = eps(1, 2, 3)
    lb = cls(endpoints)
    got = [lb.pick(hash_key=k, exclude=[endpoints[1], endpoints[2]]) for k in keys(300)]
    assert set(got) == {endpoints[0]}


@dataclass
class ValueEp:  # eq=True, unhashable: as a plain mutable dataclass endpoint would be
    key: str
    weight: int = 1
    active_requests: int = 0
    ejected: bool = False


@pytest.mark.parametrize("cls", ALL_POLICIES)
def test_unhashable_endpoints_work(cls):
    """Endpoints need not be hashable (mutable dataclasses with eq are not)."""
    endpoints = [ValueEp(f"10.0.0.{i}:80", weight=i + 1) for i in range(3)]
    endpoints[0].ejected = True
    lb = cls(endpoints)
    got = [lb.pick(hash_key=k, exclude=[endpoints[1]]) for k in keys(100)]
    assert all(e is endpoints[2] for e in got)


# ---- least request -----------------------------------------------------------------------


def test_least_request_never_picks_the_busiest():
    """P2C with distinct candidates never picks the one endpoint busier than all others."""
    endpoints = eps(1, 1, 1, 1)
    endpoints[2].active_requests = 50
    lb = LeastRequestBalancer(endpoints, rng=random.Random(6))
    counts = Counter(picks(lb, 10_000))
    assert counts[endpoints[2]] == 0
    assert all(abs(counts[e] - 10_000 / 3) < 300 for e in endpoints if e is not endpoints[2])


def test_least_request_prefers_less_loaded():
    """Fewer active requests wins more often: with loads 0, 5, 10 the idle one leads."""
    endpoints = eps(1, 1, 1)
    for e, load in zip(endpoints, (0, 5, 10)):
        e.active_requests = load
    counts = Counter(picks(LeastRequestBalancer(endpoints, rng=random.Random(7)), 9_000))
    # P2C over 3: the idle one wins both pairs it is in (2/3), the middle one 1/3.
    assert abs(counts[endpoints[0]] / 9_000 - 2 / 3) < 0.03
    assert abs(counts[endpoints[1]] / 9_000 - 1 / 3) < 0.03
    assert counts[endpoints[2]] == 0


def test_least_request_uniform_under_equal_load():
    """Under equal load picks spread evenly over the endpoints."""
    endpoints = eps(1, 1, 1, 1, 1)
    counts = Counter(picks(LeastRequestBalancer(endpoints, rng=random.Random(8)), 20_000))
    assert all(abs(counts[e] / 20_000 - 0.2) < 0.02 for e in endpoints)


def test_least_request_weighted_when_idle():
    """With differing weights and no load, picks follow the weights."""
    endpoints = eps(1, 3)
    counts = Counter(picks(LeastRequestBalancer(endpoints, rng=random.Random(9)), 20_000))
    assert abs(counts[endpoints[1]] / 20_000 - 0.75) < 0.02


def test_least_request_load_is_normalised_by_weight():
    """Load counts per unit of weight: weight 4 with 4 in flight beats weight 1 with 2."""
    heavy, light = endpoints = eps(4, 1)
    heavy.active_requests, light.active_requests = 4, 2
    assert set(picks(LeastRequestBalancer(endpoints, rng=random.Random(10)), 200)) == {heavy}


def test_least_request_single_endpoint():
    """One endpoint is always the pick, even ejected or excluded."""
    (only,) = endpoints = eps(1)
    only.ejected = True
    assert LeastRequestBalancer(endpoints).pick(exclude=[only]) is only


# ---- random --------------------------------------------------------------------------------


def test_random_weighted_distribution():
    """Weighted random follows the weights within 1.5 points over 20k seeded picks."""
    endpoints = eps(1, 2, 7)
    counts = Counter(picks(RandomBalancer(endpoints, rng=random.Random(11)), 20_000))
    for e in endpoints:
        assert abs(counts[e] / 20_000 - e.weight / 10) < 0.015


def test_random_is_deterministic_with_seed():
    """The same seed gives the same sequence."""
    endpoints = eps(1, 2, 3)
    first = picks(RandomBalancer(endpoints, rng=random.Random(12)), 100)
    assert first == picks(RandomBalancer(endpoints, rng=random.Random(12)), 100)


# ---- ring hash --------------------------------------------------------------------------------


def ring_map(endpoints, ks, **kw) -> dict[bytes, str]:
    lb = RingHashBalancer(endpoints, **kw)
    return {k: lb.pick(hash_key=k).key for k in ks}


def test_ring_same_key_same_endpoint():
    """A key maps to the same endpoint on every pick and on a rebuilt ring."""
    endpoints = eps(*[1] * 10)
    lb = RingHashBalancer(endpoints)
    again = RingHashBalancer(list(reversed(endpoints)))
    for k in keys(500):
        assert lb.pick(hash_key=k) is lb.pick(hash_key=k) is again.pick(hash_key=k)


def test_ring_removing_one_moves_only_its_keys():
    """Removing 1 of 10 endpoints moves only the keys it owned, about 1/10 of them."""
    endpoints = eps(*[1] * 10)
    ks = keys(10_000)
    before = ring_map(endpoints, ks)
    gone = endpoints[3].key
    after = ring_map(endpoints[:3] + endpoints[4:], ks)
    moved = [k for k in ks if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in ks if before[k] == gone)
    assert len(moved) / len(ks) < 0.1 + 0.03


def test_ring_adding_one_moves_about_its_share():
    """Adding an 11th endpoint moves about 1/11 of keys, all of them to the new one."""
    endpoints = eps(*[1] * 11)
    ks = keys(10_000)
    before = ring_map(endpoints[:10], ks)
    after = ring_map(endpoints, ks)
    moved = [k for k in ks if before[k] != after[k]]
    assert all(after[k] == endpoints[10].key for k in moved)
    assert 1 / 11 - 0.03 < len(moved) / len(ks) < 1 / 11 + 0.03


def test_ring_ejected_falls_back_deterministically():
    """Keys of an ejected endpoint go to one fixed other endpoint each; others stay."""
    endpoints = eps(*[1] * 5)
    lb = RingHashBalancer(endpoints)
    ks = keys(2_000)
    before = {k: lb.pick(hash_key=k) for k in ks}
    endpoints[0].ejected = True
    after = {k: lb.pick(hash_key=k) for k in ks}
    assert after == {k: lb.pick(hash_key=k) for k in ks}
    for k in ks:
        assert after[k] is not endpoints[0]
        if before[k] is not endpoints[0]:
            assert after[k] is before[k]


def test_ring_weights_skew_the_share():
    """An endpoint of weight 3 owns about three times the keys of one of weight 1."""
    endpoints = eps(1, 3, 1, 1)
    counts = Counter(ring_map(endpoints, keys(20_000)).values())
    assert abs(counts[endpoints[1].key] / 20_000 - 0.5) < 0.05


def test_ring_respects_minimum_size():
    """The ring has at least minimum_ring_size points."""
    assert RingHashBalancer(eps(1, 1), minimum_ring_size=4096).ring_size >= 4096
    assert RingHashBalancer(eps(1, 1)).ring_size >= 1024


def test_ring_respects_maximum_size():
    """Huge weight ratios scale points down to maximum_ring_size, every endpoint kept."""
    endpoints = eps(100_000, 1)
    lb = RingHashBalancer(endpoints, maximum_ring_size=10_000)
    assert lb.ring_size <= 10_001
    assert {lb.pick(hash_key=k) for k in keys(50_000)} == set(endpoints)


def test_ring_without_key_is_weighted_random():
    """No hash key: picks spread by ring share, like weighted random."""
    endpoints = eps(1, 3)
    counts = Counter(picks(RingHashBalancer(endpoints, rng=random.Random(13)), 20_000))
    assert abs(counts[endpoints[1]] / 20_000 - 0.75) < 0.05


def test_hash_key_bytes_encodes_text():
    """Text hash keys are hashed as their UTF-8 bytes; bytes pass through."""
    assert hash_key_bytes("ü") == "ü".encode() and hash_key_bytes(b"x") == b"x"


# ---- smooth weighted round robin (route destinations) ---------------------------------------


@pytest.mark.parametrize("weights", [(80, 20), (10, 30, 60), (0, 50, 50), (1, 0, 99)])
def test_swrr_split_exact(weights):
    """Over 5,000 picks the split matches the weights within 2 points, exact per window."""
    items = [f"dest-{i}" for i in range(len(weights))]
    picker = SmoothWeightedRoundRobin(items, weights)
    seq = [picker.next() for _ in range(5_000)]
    counts = Counter(seq)
    total = sum(weights)
    for item, w in zip(items, weights):
        assert abs(counts[item] / 5_000 - w / total) < 0.02
    assert_exact_windows(seq[:1000], {i: w for i, w in zip(items, weights) if w})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(any))
def test_swrr_exact_windows_random_weights(weights):
    """Any weights: every window of sum(weights) picks holds each item exactly its weight."""
    picker = SmoothWeightedRoundRobin(list(range(len(weights))), weights)
    seq = [picker.next() for _ in range(3 * sum(weights))]
    assert_exact_windows(seq, {i: w for i, w in enumerate(weights) if w})


def test_swrr_zero_weight_never_picked():
    """Zero-weight items are never picked."""
    picker = SmoothWeightedRoundRobin(["a", "b", "c"], [0, 1, 0])
    assert {picker.next() for _ in range(100)} == {"b"}


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1]])
def test_swrr_rejects_bad_weights(weights):
    """Weights must be non-negative with at least one positive."""
    with pytest.raises(ValueError):
        SmoothWeightedRoundRobin(["x"] * len(weights), weights)


# ---- make_balancer ---------------------------------------------------------------------------


HEADER_HASH = ConsistentHashLB(http_header_name="x-user")


@pytest.mark.parametrize(
    ("lb_settings", "cls"),
    [
        (None, RoundRobinBalancer),
        (LoadBalancerSettings(), RoundRobinBalancer),
        (LoadBalancerSettings(simple="UNSPECIFIED"), RoundRobinBalancer),
        (LoadBalancerSettings(simple="ROUND_ROBIN"), RoundRobinBalancer),
        (LoadBalancerSettings(simple="LEAST_REQUEST"), LeastRequestBalancer),
        (LoadBalancerSettings(simple="LEAST_CONN"), LeastRequestBalancer),
        (LoadBalancerSettings(simple="RANDOM"), RandomBalancer),
        (LoadBalancerSettings(simple="PASSTHROUGH"), RoundRobinBalancer),
        (LoadBalancerSettings(consistent_hash=HEADER_HASH), RingHashBalancer),
        (LoadBalancerSettings(consistent_hash=ConsistentHashLB(maglev=Maglev())), RingHashBalancer),
    ],
)
def test_make_balancer_maps_settings(lb_settings, cls):
    """Each loadBalancer setting maps to its policy class."""
    assert type(make_balancer(lb_settings, eps(1, 1))) is cls


def test_make_balancer_honours_minimum_ring_size():
    """ringHash.minimumRingSize, else the top-level minimumRingSize, sizes the ring."""
    ring = ConsistentHashLB(ring_hash=RingHash(minimum_ring_size=5000))
    assert make_balancer(LoadBalancerSettings(consistent_hash=ring), eps(1, 1)).ring_size >= 5000
    old = ConsistentHashLB(minimum_ring_size=3000)
    assert make_balancer(LoadBalancerSettings(consistent_hash=old), eps(1, 1)).ring_size >= 3000


def test_make_balancer_rejects_unknown_policy():
    """An unknown simple policy name is an error, not a silent default."""
    with pytest.raises(ValueError):
        make_balancer(LoadBalancerSettings(simple="FASTEST"), eps(1))
