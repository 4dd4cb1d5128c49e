"""Semantic rules of the loader: each test breaks one rule and expects the field path named.

Documents are built as dicts from a valid baseline (a VirtualService routing to a
ServiceEntry host with a DestinationRule subset), so each test changes one thing.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest

from remora.config.loader import ConfigError, ConfigIssue, build_mesh_config
from remora.config.model import MeshConfig


def service_entry(**spec: Any) -> dict:
    base = {"hosts": ["reviews"], "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "location": "MESH_INTERNAL", "resolution": "STATIC",
            "endpoints": [{"address": "10.0.0.1", "ports": {"http": 9080}, "labels": {"version": "v1"}}]}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "reviews"}, "spec": base}


def destination_rule(**spec: Any) -> dict:
    base = {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews"}, "spec": base}


def http_route(**route: Any) -> dict:
    base = {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
    base.update(route)
    return base


def virtual_service(*routes: dict, **spec: Any) -> dict:
    base = {"hosts": ["reviews"], "http": list(routes) or [http_route()]}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews"}, "spec": base}


def workload_entry(**spec: Any) -> dict:
    base = {"address": "10.0.0.2", "labels": {"app": "reviews"}}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "vm-1"}, "spec": base}


def load(*docs: dict) -> MeshConfig:
    return build_mesh_config([(copy.deepcopy(doc), "mesh.yaml") for doc in docs])


def issues(*docs: dict) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load(*docs)
    return caught.value.issues


def rejected_at(path: str, *docs: dict, says: str = "") -> ConfigIssue:
    """Load must fail with an issue at exactly `path` whose message contains `says`."""
    found = issues(*docs)
    matching = [issue for issue in found if issue.field_path == path and says in issue.message]
    assert matching, f"no issue at {path!r} saying {says!r}; got: {[str(i) for i in found]}"
    return matching[0]


def baseline(**overrides: dict) -> list[dict]:
    docs = {"se": service_entry(), "dr": destination_rule(), "vs": virtual_service()}
    docs.update(overrides)
    return list(docs.values())


def test_baseline_loads() -> None:
    """The baseline every other test breaks is itself valid."""
    config = load(*baseline(), workload_entry())
    assert len(config.virtual_services) == len(config.destination_rules) == len(config.service_entries) == 1


# ---- StringMatch and regexes ----------------------------------------------------------------

@pytest.mark.parametrize("field", ["uri", "scheme", "method", "authority"])
def test_string_match_needs_exactly_one_kind(field: str) -> None:
    """uri/scheme/method/authority set exactly one of exact, prefix, regex."""
    both = virtual_service(http_route(match=[{field: {"exact": "a", "prefix": "b"}}]))
    rejected_at(f"spec.http[0].match[0].{field}", *baseline(vs=both), says="exactly one")
    empty = virtual_service(http_route(match=[{field: {}}]))
    rejected_at(f"spec.http[0].match[0].{field}", *baseline(vs=empty), says="exactly one")


def test_empty_header_match_is_a_presence_test() -> None:
    """headers: {x: {}} is Istio's 'header present' match, so it loads."""
    vs = virtual_service(http_route(match=[{"headers": {"x-user": {}}, "withoutHeaders": {"x-debug": {}}}]))
    assert load(*baseline(vs=vs)).virtual_services[0].spec.http[0].match[0].headers["x-user"].exact is None


def test_header_match_with_two_kinds_is_rejected() -> None:
    """A header match with both exact and regex is ambiguous."""
    vs = virtual_service(http_route(match=[{"headers": {"x-user": {"exact": "a", "regex": "b"}}}]))
    rejected_at("spec.http[0].match[0].headers.x-user", *baseline(vs=vs), says="exactly one")


def test_query_params_reject_prefix() -> None:
    """Istio matches query parameters by exact or regex only."""
    vs = virtual_service(http_route(match=[{"queryParams": {"q": {"prefix": "a"}}}]))
    rejected_at("spec.http[0].match[0].queryParams.q.prefix", *baseline(vs=vs))


@pytest.mark.parametrize(
    ("route", "path"),
    [
        ({"match": [{"uri": {"regex": "/api/(v1"}}]}, "spec.http[0].match[0].uri.regex"),
        ({"match": [{"headers": {"x-a": {"regex": "[a-"}}}]}, "spec.http[0].match[0].headers.x-a.regex"),
        ({"match": [{"queryParams": {"q": {"regex": "*a"}}}]}, "spec.http[0].match[0].queryParams.q.regex"),
        ({"match": [{"authority": {"regex": "(?P<x"}}]}, "spec.http[0].match[0].authority.regex"),
        ({"match": [{"method": {"regex": "GET|("}}]}, "spec.http[0].match[0].method.regex"),
        ({"rewrite": {"uriRegexRewrite": {"match": "^/(a", "rewrite": "/b"}}}, "spec.http[0].rewrite.uriRegexRewrite.match"),
    ],
)
def test_regexes_must_compile(route: dict, path: str) -> None:
    """Every regex field is compiled at load time and a bad one names its field."""
    rejected_at(path, *baseline(vs=virtual_service(http_route(**route))), says="invalid regular expression")


def test_regex_features_missing_from_re2_are_rejected() -> None:
    """Lookaround compiles in Python but not in RE2 (Istio), so it is rejected."""
    vs = virtual_service(http_route(match=[{"uri": {"regex": "/(?!admin).*"}}]))
    rejected_at("spec.http[0].match[0].uri.regex", *baseline(vs=vs), says="RE2")


def test_header_match_keys_are_lowercased() -> None:
    """Header names are case-insensitive: match keys are stored lowercase."""
    vs = virtual_service(http_route(match=[{"headers": {"X-User": {"exact": "a"}}, "withoutHeaders": {"X-Debug": {}}}]))
    match = load(*baseline(vs=vs)).virtual_services[0].spec.http[0].match[0]
    assert list(match.headers) == ["x-user"] and list(match.without_headers) == ["x-debug"]


def test_header_match_keys_differing_only_in_case_collide() -> None:
    """Two keys that lowercase to the same header would overwrite each other: error."""
    vs = virtual_service(http_route(match=[{"headers": {"X-User": {"exact": "a"}, "x-user": {"exact": "b"}}}]))
    rejected_at("spec.http[0].match[0].headers.x-user", *baseline(vs=vs), says="matched twice")


# ---- routes, weights, destinations ------------------------------------------------------------

def test_negative_weight_is_rejected() -> None:
    """Route weights are >= 0."""
    vs = virtual_service(http_route(route=[{"destination": {"host": "reviews"}, "weight": -1},
                                           {"destination": {"host": "reviews"}, "weight": 101}]))
    rejected_at("spec.http[0].route[0].weight", *baseline(vs=vs))


def test_all_zero_weights_with_several_destinations_are_rejected() -> None:
    """Several destinations whose weights are all zero (or missing) send traffic nowhere."""
    vs = virtual_service(http_route(route=[{"destination": {"host": "reviews"}, "weight": 0},
                                           {"destination": {"host": "reviews"}}]))
    rejected_at("spec.http[0].route", *baseline(vs=vs), says="all zero")


def test_single_destination_without_weight_loads() -> None:
    """One destination needs no weight (it takes all traffic)."""
    vs = virtual_service(http_route(route=[{"destination": {"host": "reviews"}, "weight": 0}]))
    assert load(*baseline(vs=vs)).virtual_services


def test_http_route_needs_a_destination() -> None:
    """An HTTP route with no `route` entries has nowhere to send traffic."""
    vs = virtual_service({"match": [{"uri": {"prefix": "/"}}]})
    rejected_at("spec.http[0].route", *baseline(vs=vs), says="HTTP route, redirect or direct response is required")


@pytest.mark.parametrize("field", ["delegate"])
def test_istio_fields_remora_lacks_say_not_supported_yet(field: str) -> None:
    """Valid Istio fields Remora does not implement are named 'not supported by Remora yet'."""
    vs = virtual_service(http_route(**{field: {}}))
    rejected_at(f"spec.http[0].{field}", *baseline(vs=vs), says="not supported by Remora yet")


def test_tls_route_needs_sni_hosts() -> None:
    """A tls match without sniHosts is refused as Istio refuses it."""
    vs = virtual_service(gateways=["gw"], tls=[{"match": [{"port": 443}], "route": [{"destination": {"host": "reviews"}}]}])
    rejected_at("spec.tls[0].match[0].sniHosts", *baseline(vs=vs), says="at least one SNI host")


def test_tcp_route_needs_a_destination() -> None:
    """A tcp route without `route` is refused as Istio refuses it."""
    rejected_at("spec.tcp[0].route", *baseline(vs=virtual_service(tcp=[{"match": [{"port": 31400}]}])),
                says="TCP route is required")


def test_unknown_field_names_path_and_suggests() -> None:
    """A typo is an unknown field at its full path, with the closest real field suggested."""
    vs = virtual_service(http_route(retries={"attempts": 2, "perTryTimout": "1s"}))
    rejected_at("spec.http[0].retries.perTryTimout", *baseline(vs=vs), says="did you mean `perTryTimeout`?")


def test_circuit_breaker_gets_a_pointer() -> None:
    """trafficPolicy.circuitBreaker (never an Istio field) explains what to use instead."""
    dr = destination_rule(trafficPolicy={"circuitBreaker": {}})
    rejected_at("spec.trafficPolicy.circuitBreaker", *baseline(dr=dr), says="outlierDetection")


def test_wrong_type_names_field_and_suggests_quoting() -> None:
    """A number where a string belongs names the field and suggests quoting it."""
    dr = destination_rule(subsets=[{"name": "v1", "labels": {"version": 1.1}}])
    rejected_at('spec.subsets[0].labels.version', *baseline(dr=dr), says="quote it")


def test_null_field_means_unset() -> None:
    """`field:` with no value is treated as not set, as Kubernetes does."""
    assert load(*baseline(dr=destination_rule(trafficPolicy=None))).destination_rules[0].spec.traffic_policy is None


def test_virtual_service_needs_hosts() -> None:
    """A VirtualService with no hosts applies to nothing: error."""
    rejected_at("spec.hosts", *baseline(vs=virtual_service(hosts=[])))


def test_undefined_subset_is_rejected() -> None:
    """A destination subset must be defined by a DestinationRule for that host."""
    vs = virtual_service(http_route(route=[{"destination": {"host": "reviews", "subset": "v9"}}]))
    rejected_at("spec.http[0].route[0].destination.subset", *baseline(vs=vs), says="defines: v1")


def test_subset_without_any_destination_rule_is_rejected() -> None:
    """Without a DestinationRule for the host no subset exists."""
    rejected_at("spec.http[0].route[0].destination.subset", service_entry(), virtual_service(), says="no DestinationRule")


def test_unknown_destination_host_is_rejected() -> None:
    """A destination host that nothing in the set declares is an error."""
    vs = virtual_service(http_route(route=[{"destination": {"host": "ratings"}}]))
    rejected_at("spec.http[0].route[0].destination.host", *baseline(vs=vs), says="unknown destination host")


def renamed(doc: dict, name: str) -> dict:
    return doc | {"metadata": {"name": name}}


@pytest.mark.parametrize(
    "declaration",
    [
        pytest.param(renamed(service_entry(hosts=["ratings.default.svc.cluster.local"]), "ratings"), id="serviceentry-fqdn"),
        pytest.param(renamed(service_entry(hosts=["ratings"]), "ratings"), id="serviceentry-short"),
        pytest.param(renamed(virtual_service(http_route(route=[{"destination": {"host": "ratings"}}]), hosts=["ratings"]), "ratings"), id="virtualservice-host"),
        pytest.param(renamed(destination_rule(host="ratings.default.svc.cluster.local", subsets=[]), "ratings"), id="destinationrule-host"),
        pytest.param(renamed(service_entry(hosts=["*.default.svc.cluster.local"], resolution="NONE", endpoints=[]), "wild"), id="wildcard"),
    ],
)
def test_destination_host_is_known_from_any_kind_after_qualification(declaration: dict) -> None:
    """A host is known from a ServiceEntry, VirtualService or DestinationRule, compared as qualified names."""
    vs = virtual_service(http_route(), http_route(route=[{"destination": {"host": "ratings"}}]))
    assert load(*baseline(vs=vs), declaration).virtual_services


def test_destination_host_in_another_namespace_is_not_the_short_name() -> None:
    """'ratings' in namespace prod is not ratings.default: qualification uses each resource's namespace."""
    se = service_entry(hosts=["ratings"]) | {"metadata": {"name": "ratings", "namespace": "prod"}}
    vs = virtual_service(http_route(route=[{"destination": {"host": "ratings"}}]))
    rejected_at("spec.http[0].route[0].destination.host", *baseline(vs=vs), se, says="ratings.default.svc.cluster.local")


def test_rejected_destination_rule_does_not_cascade() -> None:
    """A DestinationRule rejected for a typo still declares its host and subsets, so only the typo is reported."""
    dr = destination_rule(trafficPolicy={"loadBalancr": {}})
    [issue] = issues(*baseline(dr=dr))
    assert issue.field_path == "spec.trafficPolicy.loadBalancr"


# ---- durations, percentages, retries, faults ----------------------------------------------------

@pytest.mark.parametrize(
    ("doc_key", "doc", "path"),
    [
        ("vs", virtual_service(http_route(timeout="5")), "spec.http[0].timeout"),
        ("vs", virtual_service(http_route(retries={"attempts": 1, "perTryTimeout": "-1s"})), "spec.http[0].retries.perTryTimeout"),
        ("vs", virtual_service(http_route(fault={"delay": {"fixedDelay": "soon"}})), "spec.http[0].fault.delay.fixedDelay"),
        ("dr", destination_rule(trafficPolicy={"connectionPool": {"tcp": {"connectTimeout": "30"}}}), "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
        ("dr", destination_rule(trafficPolicy={"connectionPool": {"tcp": {"idleTimeout": "1 h"}}}), "spec.trafficPolicy.connectionPool.tcp.idleTimeout"),
        ("dr", destination_rule(trafficPolicy={"connectionPool": {"http": {"idleTimeout": "x"}}}), "spec.trafficPolicy.connectionPool.http.idleTimeout"),
        ("dr", destination_rule(trafficPolicy={"connectionPool": {"tcp": {"tcpKeepalive": {"time": "2 hours"}}}}), "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time"),
        ("dr", destination_rule(trafficPolicy={"outlierDetection": {"interval": "10"}}), "spec.trafficPolicy.outlierDetection.interval"),
        ("dr", destination_rule(trafficPolicy={"outlierDetection": {"baseEjectionTime": "30 s"}}), "spec.trafficPolicy.outlierDetection.baseEjectionTime"),
        ("dr", destination_rule(subsets=[{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"outlierDetection": {"interval": "1d"}}}]), "spec.subsets[0].trafficPolicy.outlierDetection.interval"),
    ],
)
def test_durations_must_parse(doc_key: str, doc: dict, path: str) -> None:
    """Every duration field is parsed at load time and a bad one names its field."""
    rejected_at(path, *baseline(**{doc_key: doc}), says="invalid duration")


@pytest.mark.parametrize(
    ("doc_key", "doc", "path"),
    [
        ("vs", virtual_service(http_route(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 150}}})), "spec.http[0].fault.delay.percentage.value"),
        ("vs", virtual_service(http_route(fault={"abort": {"httpStatus": 503, "percentage": {"value": -1}}})), "spec.http[0].fault.abort.percentage.value"),
        ("dr", destination_rule(trafficPolicy={"outlierDetection": {"maxEjectionPercent": 101}}), "spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
        ("dr", destination_rule(trafficPolicy={"outlierDetection": {"minHealthPercent": -5}}), "spec.trafficPolicy.outlierDetection.minHealthPercent"),
    ],
)
def test_percentages_are_between_0_and_100(doc_key: str, doc: dict, path: str) -> None:
    """Percentages outside [0, 100] are rejected at their field."""
    rejected_at(path, *baseline(**{doc_key: doc}), says="between 0 and 100")


@pytest.mark.parametrize("status", [199, 600, 0])
def test_abort_status_is_a_real_http_status(status: int) -> None:
    """fault.abort.httpStatus is in 200..599."""
    vs = virtual_service(http_route(fault={"abort": {"httpStatus": status}}))
    rejected_at("spec.http[0].fault.abort.httpStatus", *baseline(vs=vs))


@pytest.mark.parametrize("status", [200, 503, 599])
def test_abort_status_bounds_are_inclusive(status: int) -> None:
    """200 and 599 themselves are valid abort statuses."""
    assert load(*baseline(vs=virtual_service(http_route(fault={"abort": {"httpStatus": status}}))))


def test_fault_needs_delay_or_abort_and_delay_needs_fixed_delay() -> None:
    """An empty fault or a delay without fixedDelay does nothing: error."""
    rejected_at("spec.http[0].fault", *baseline(vs=virtual_service(http_route(fault={}))))
    rejected_at("spec.http[0].fault.delay.fixedDelay", *baseline(vs=virtual_service(http_route(fault={"delay": {"percentage": {"value": 1}}}))))


def test_retry_attempts_are_not_negative() -> None:
    """retries.attempts >= 0."""
    rejected_at("spec.http[0].retries.attempts", *baseline(vs=virtual_service(http_route(retries={"attempts": -1}))))


def test_retry_on_accepts_known_conditions_and_status_codes() -> None:
    """retryOn is a comma list of Envoy/Istio conditions or 3-digit codes."""
    retry_on = "5xx,gateway-error,reset,connect-failure,envoy-ratelimited,retriable-4xx,refused-stream,retriable-status-codes,retriable-headers,cancelled,deadline-exceeded,internal,resource-exhausted,unavailable,503"
    assert load(*baseline(vs=virtual_service(http_route(retries={"attempts": 2, "retryOn": retry_on}))))


@pytest.mark.parametrize("retry_on", ["5xx,timeout", "5xx,,reset", "50"])
def test_retry_on_rejects_unknown_conditions(retry_on: str) -> None:
    """An unknown retryOn condition would silently never retry: error."""
    vs = virtual_service(http_route(retries={"attempts": 2, "retryOn": retry_on}))
    rejected_at("spec.http[0].retries.retryOn", *baseline(vs=vs), says="unknown retry condition")


# ---- DestinationRule ----------------------------------------------------------------------------

def test_load_balancer_simple_must_be_known() -> None:
    """loadBalancer.simple is one of Istio's names."""
    dr = destination_rule(trafficPolicy={"loadBalancer": {"simple": "WEIGHTED"}})
    rejected_at("spec.trafficPolicy.loadBalancer.simple", *baseline(dr=dr), says="LEAST_REQUEST")


@pytest.mark.parametrize("simple", ["UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH"])
def test_load_balancer_simple_values(simple: str) -> None:
    """Every documented simple policy loads."""
    assert load(*baseline(dr=destination_rule(trafficPolicy={"loadBalancer": {"simple": simple}})))


@pytest.mark.parametrize(
    "hashing",
    [{}, {"httpHeaderName": "x-user", "useSourceIp": True}, {"httpCookie": {"name": "s", "ttl": "0s"}, "httpQueryParameterName": "q"}],
)
def test_consistent_hash_needs_exactly_one_key(hashing: dict) -> None:
    """consistentHash hashes on exactly one of header, cookie, source IP, query parameter."""
    dr = destination_rule(trafficPolicy={"loadBalancer": {"consistentHash": hashing}})
    rejected_at("spec.trafficPolicy.loadBalancer.consistentHash", *baseline(dr=dr), says="exactly one")


def test_simple_and_consistent_hash_are_exclusive() -> None:
    """simple and consistentHash are a oneof in Istio."""
    dr = destination_rule(trafficPolicy={"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}})
    rejected_at("spec.trafficPolicy.loadBalancer", *baseline(dr=dr), says="only one")


def test_subset_names_are_unique() -> None:
    """Two subsets with one name make the destination ambiguous."""
    dr = destination_rule(subsets=[{"name": "v1", "labels": {"version": "v1"}}, {"name": "v1", "labels": {"version": "v2"}}])
    rejected_at("spec.subsets[1].name", *baseline(dr=dr), says="defined twice")


def test_subset_label_values_are_non_empty() -> None:
    """An empty label value selects nothing useful: error."""
    dr = destination_rule(subsets=[{"name": "v1", "labels": {"version": ""}}])
    rejected_at("spec.subsets[0].labels.version", *baseline(dr=dr))


def test_port_level_settings_need_a_port() -> None:
    """Port-level settings apply to a port, which must be given and valid."""
    rejected_at("spec.trafficPolicy.portLevelSettings[0].port", *baseline(dr=destination_rule(trafficPolicy={"portLevelSettings": [{"loadBalancer": {"simple": "RANDOM"}}]})))
    rejected_at("spec.trafficPolicy.portLevelSettings[0].port.number", *baseline(dr=destination_rule(trafficPolicy={"portLevelSettings": [{"port": {"number": 0}}]})))


def test_istio_consecutive_5xx_errors_spelling_loads() -> None:
    """outlierDetection.consecutive5xxErrors (Istio's spelling) reaches the model."""
    dr = destination_rule(trafficPolicy={"outlierDetection": {"consecutive5xxErrors": 7}})
    assert load(*baseline(dr=dr)).destination_rules[0].spec.traffic_policy.outlier_detection.consecutive_5xx_errors == 7


# ---- ports, ServiceEntry, WorkloadEntry ----------------------------------------------------------

@pytest.mark.parametrize(
    ("doc_key", "doc", "path"),
    [
        ("se", service_entry(ports=[{"number": 0, "name": "http"}]), "spec.ports[0].number"),
        ("se", service_entry(ports=[{"number": 65536, "name": "http"}]), "spec.ports[0].number"),
        ("se", service_entry(endpoints=[{"address": "10.0.0.1", "ports": {"http": 70000}}]), "spec.endpoints[0].ports.http"),
        ("vs", virtual_service(http_route(route=[{"destination": {"host": "reviews", "port": {"number": 0}}}])), "spec.http[0].route[0].destination.port.number"),
        ("vs", virtual_service(http_route(match=[{"port": 99999}])), "spec.http[0].match[0].port"),
    ],
)
def test_ports_are_1_to_65535(doc_key: str, doc: dict, path: str) -> None:
    """Port numbers outside 1..65535 are rejected at their field."""
    rejected_at(path, *baseline(**{doc_key: doc}), says="between 1 and 65535")


def test_workload_entry_ports_are_checked() -> None:
    """WorkloadEntry ports are port numbers too."""
    rejected_at("spec.ports.http", *baseline(), workload_entry(ports={"http": 0}))


@pytest.mark.parametrize(("field", "value"), [("resolution", "DNS_ONLY"), ("location", "EXTERNAL")])
def test_service_entry_enums(field: str, value: str) -> None:
    """resolution and location take Istio's names only."""
    rejected_at(f"spec.{field}", *baseline(se=service_entry(**{field: value})), says="expected one of")


@pytest.mark.parametrize("address", ["reviews.example.com", "<ip>", "10.0.0.300"])
def test_static_endpoints_need_an_ip(address: str) -> None:
    """resolution STATIC endpoints are IP addresses (or unix:// paths), not names."""
    rejected_at("spec.endpoints[0].address", *baseline(se=service_entry(endpoints=[{"address": address}])), says="STATIC")


@pytest.mark.parametrize("address", ["10.0.0.1", "::1", "unix:///var/run/app.sock"])
def test_static_endpoints_accept_ip_and_unix(address: str) -> None:
    """IPv4, IPv6 and unix:// addresses are valid STATIC endpoints."""
    assert load(*baseline(se=service_entry(endpoints=[{"address": address}])))


@pytest.mark.parametrize("resolution", ["DNS", "DNS_ROUND_ROBIN"])
def test_dns_endpoints_reject_placeholders(resolution: str) -> None:
    """A DNS endpoint like <cluster2-gateway-ip> is neither a host name nor an IP: error at the field."""
    se = service_entry(resolution=resolution, endpoints=[{"address": "<cluster2-east-west-gateway-ip>"}])
    issue = rejected_at("spec.endpoints[0].address", *baseline(se=se), says="host name or an IP")
    assert "<cluster2-east-west-gateway-ip>" in issue.message


def test_dns_endpoints_accept_names() -> None:
    """A DNS endpoint may be a host name."""
    assert load(*baseline(se=service_entry(resolution="DNS", endpoints=[{"address": "gw.cluster2.example.com"}])))


def test_resolution_none_takes_no_endpoints_and_static_needs_them() -> None:
    """NONE forwards to the original destination; STATIC has nothing else to use."""
    rejected_at("spec.endpoints", *baseline(se=service_entry(resolution="NONE")), says="NONE")
    rejected_at("spec.endpoints", *baseline(se=service_entry(endpoints=[])), says="STATIC")


def test_service_entry_hosts() -> None:
    """A ServiceEntry needs hosts, and `*` is not one."""
    rejected_at("spec.hosts", *baseline(se=service_entry(hosts=[])))
    rejected_at("spec.hosts[1]", *baseline(se=service_entry(hosts=["reviews", "*"])))


def test_endpoint_port_names_must_exist_on_the_service_entry() -> None:
    """An endpoint port name that the ServiceEntry does not declare maps to nothing."""
    se = service_entry(endpoints=[{"address": "10.0.0.1", "ports": {"grpc": 9090}}])
    rejected_at("spec.endpoints[0].ports.grpc", *baseline(se=se), says="not one of")


def test_workload_entry_needs_an_address() -> None:
    """A WorkloadEntry without address has nowhere to send traffic."""
    rejected_at("spec.address", *baseline(), workload_entry(address=None), says="needs an address")
    rejected_at("spec.address", *baseline(), workload_entry(address="<vm-ip>"))


# ---- the remaining per-field rules ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"loadBalancer": {"warmupDurationSecs": "1 min"}}, "spec.trafficPolicy.loadBalancer.warmupDurationSecs"),
        ({"loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "ttl": "forever"}}}}, "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl"),
        ({"connectionPool": {"tcp": {"maxConnectionDuration": "1y"}}}, "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration"),
        ({"connectionPool": {"tcp": {"tcpKeepalive": {"interval": "often"}}}}, "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval"),
        ({"portLevelSettings": [{"port": {"number": 80}, "outlierDetection": {"interval": "x"}}]}, "spec.trafficPolicy.portLevelSettings[0].outlierDetection.interval"),
    ],
)
def test_every_destination_rule_duration_is_parsed(policy: dict, path: str) -> None:
    """The less common DestinationRule durations (and port-level policies) are checked too."""
    rejected_at(path, *baseline(dr=destination_rule(trafficPolicy=policy)), says="invalid duration")


def test_negative_durations_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A duration that parses to a negative value is rejected (guard for a future signed parser)."""
    monkeypatch.setattr("remora.config.field_checks.parse_duration", lambda text: -1.0)
    rejected_at("spec.http[0].timeout", *baseline(vs=virtual_service(http_route(timeout="1s"))), says="negative")


def test_deprecated_delay_percent_is_a_percentage() -> None:
    """fault.delay.percent (Istio's deprecated integer form) is 0..100 too."""
    vs = virtual_service(http_route(fault={"delay": {"fixedDelay": "1s", "percent": 101}}))
    rejected_at("spec.http[0].fault.delay.percent", *baseline(vs=vs), says="between 0 and 100")


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"connectionPool": {"tcp": {"maxConnections": -1}}}, "spec.trafficPolicy.connectionPool.tcp.maxConnections"),
        ({"connectionPool": {"tcp": {"tcpKeepalive": {"probes": -1}}}}, "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.probes"),
        ({"connectionPool": {"http": {"http1MaxPendingRequests": -1}}}, "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests"),
        ({"connectionPool": {"http": {"maxRetries": -3}}}, "spec.trafficPolicy.connectionPool.http.maxRetries"),
        ({"outlierDetection": {"consecutive5xxErrors": -1}}, "spec.trafficPolicy.outlierDetection.consecutive5xxErrors"),
        ({"outlierDetection": {"consecutiveGatewayErrors": -1}}, "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors"),
    ],
)
def test_counts_are_not_negative(policy: dict, path: str) -> None:
    """Connection pool limits and outlier thresholds are >= 0."""
    rejected_at(path, *baseline(dr=destination_rule(trafficPolicy=policy)), says=">= 0")


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"tls": {"mode": "STRICT"}}, "spec.trafficPolicy.tls.mode"),
        ({"connectionPool": {"http": {"h2UpgradePolicy": "ALWAYS"}}}, "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy"),
    ],
)
def test_destination_rule_enums(policy: dict, path: str) -> None:
    """tls.mode and h2UpgradePolicy take Istio's names only."""
    rejected_at(path, *baseline(dr=destination_rule(trafficPolicy=policy)), says="expected one of")


def test_ring_hash_and_maglev_are_exclusive() -> None:
    """A consistent hash uses a ring or a Maglev table, not both."""
    hashing = {"useSourceIp": True, "ringHash": {"minimumRingSize": 1024}, "maglev": {"tableSize": 65537}}
    rejected_at("spec.trafficPolicy.loadBalancer.consistentHash", *baseline(dr=destination_rule(trafficPolicy={"loadBalancer": {"consistentHash": hashing}})), says="ringHash and maglev")


def test_destination_rule_needs_a_host_and_subsets_a_name() -> None:
    """An empty DestinationRule host or subset name refers to nothing."""
    rejected_at("spec.host", destination_rule(host=""), says="needs a host")
    rejected_at("spec.subsets[0].name", *baseline(dr=destination_rule(subsets=[{"name": "", "labels": {"a": "b"}}])), says="needs a name")


@pytest.mark.parametrize(
    ("doc_key", "doc", "path"),
    [
        ("vs", virtual_service(hosts=["reviews", "bad host"]), "spec.hosts[1]"),
        ("vs", virtual_service(http_route(route=[{"destination": {"host": "-reviews"}}])), "spec.http[0].route[0].destination.host"),
        ("dr", destination_rule(host="reviews..default"), "spec.host"),
        ("se", service_entry(hosts=["reviews", "api_example.com"]), "spec.hosts[1]"),
    ],
)
def test_hosts_must_be_dns_names(doc_key: str, doc: dict, path: str) -> None:
    """Hosts are DNS names, `*.suffix`, `*` or IPs; anything else is rejected at its field."""
    rejected_at(path, *baseline(**{doc_key: doc}), says="invalid host")


def test_rewrite_uri_and_regex_rewrite_are_exclusive() -> None:
    """rewrite.uri and rewrite.uriRegexRewrite both rewrite the path: choose one."""
    vs = virtual_service(http_route(rewrite={"uri": "/v2", "uriRegexRewrite": {"match": "^/v1", "rewrite": "/v2"}}))
    rejected_at("spec.http[0].rewrite", *baseline(vs=vs), says="only one")


def test_abort_needs_a_status() -> None:
    """An abort without httpStatus (or grpcStatus) has nothing to answer."""
    vs = virtual_service(http_route(fault={"abort": {"percentage": {"value": 10}}}))
    rejected_at("spec.http[0].fault.abort.httpStatus", *baseline(vs=vs), says="needs httpStatus")


def test_service_entry_ports_are_unique_and_target_ports_valid() -> None:
    """ServiceEntry port numbers and names are unique; targetPort is a port."""
    dup_number = service_entry(ports=[{"number": 80, "name": "http"}, {"number": 80, "name": "web"}], endpoints=[{"address": "10.0.0.1"}])
    rejected_at("spec.ports[1].number", *baseline(se=dup_number), says="defined twice")
    dup_name = service_entry(ports=[{"number": 80, "name": "http"}, {"number": 81, "name": "http"}], endpoints=[{"address": "10.0.0.1"}])
    rejected_at("spec.ports[1].name", *baseline(se=dup_name), says="defined twice")
    rejected_at("spec.ports[0].targetPort", *baseline(se=service_entry(ports=[{"number": 80, "name": "http", "targetPort": 0}])))


def test_service_entry_addresses_are_ips_or_cidrs() -> None:
    """ServiceEntry addresses are virtual IPs or CIDR ranges."""
    assert load(*baseline(se=service_entry(addresses=["240.0.0.1", "10.0.0.0/8"])))
    rejected_at("spec.addresses[0]", *baseline(se=service_entry(addresses=["reviews"])), says="IP or CIDR")


def test_service_entry_endpoint_rules() -> None:
    """Endpoints need an address, a non-negative weight, and exclude workloadSelector."""
    rejected_at("spec.endpoints[0].address", *baseline(se=service_entry(endpoints=[{"labels": {"a": "b"}}])), says="needs an address")
    rejected_at("spec.endpoints[0].weight", *baseline(se=service_entry(endpoints=[{"address": "10.0.0.1", "weight": -1}])))
    both = service_entry(workloadSelector={"labels": {"app": "reviews"}})
    rejected_at("spec.endpoints", *baseline(se=both), says="workloadSelector")


def test_dns_without_endpoints_needs_concrete_hosts() -> None:
    """DNS resolution without endpoints resolves the hosts, so a wildcard host cannot work."""
    se = service_entry(hosts=["reviews", "*.example.com"], resolution="DNS", endpoints=[])
    rejected_at("spec.hosts[1]", *baseline(se=se), says="wildcard")


def test_workload_entry_weight_is_not_negative() -> None:
    """WorkloadEntry weight >= 0."""
    rejected_at("spec.weight", *baseline(), workload_entry(weight=-1))


# ---- schema walker ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("doc", "path", "says"),
    [
        (virtual_service(http=[{"route": "reviews"}]), "spec.http[0].route", "expected a list"),
        (virtual_service(http=["reviews"]), "spec.http[0]", "expected a mapping"),
        (virtual_service(http_route(match=[{"headers": ["x-user"]}])), "spec.http[0].match[0].headers", "expected a mapping"),
        (virtual_service(http_route(match=[{"headers": {1: {"exact": "a"}}}])), "spec.http[0].match[0].headers.1", "keys must be strings"),
        (virtual_service(http_route(route=[{"weight": 10}])), "spec.http[0].route[0].destination", "required field is missing"),
    ],
)
def test_schema_problems_name_the_field(doc: dict, path: str, says: str) -> None:
    """Wrong shapes and missing required fields are reported at their exact path."""
    rejected_at(path, *baseline(vs=doc), says=says)
