"""The Envoy renderer's translation of each Istio feature: the JSON shape of routes, clusters, filters."""
from __future__ import annotations

import copy

import pytest

from remora.xds.envoy import Unsupported, render_bootstrap, render_inbound_bootstrap
from tests.envoy_render_inputs import AUTHZ_YAML, FEATURES_YAML, documents

DOCS = documents(FEATURES_YAML)
REVIEWS = "reviews.shop.svc.cluster.local"


def _render(docs=None) -> dict:
    return render_bootstrap(DOCS if docs is None else docs, 15001, 15000, "/certs/client")


def _clusters(docs=None) -> dict[str, dict]:
    return {c["name"]: c for c in _render(docs)["static_resources"]["clusters"]}


def _hcm(docs=None) -> dict:
    listener = _render(docs)["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _routes(host: str = REVIEWS, docs=None) -> list[dict]:
    vhosts = _hcm(docs)["route_config"]["virtual_hosts"]
    return next(v for v in vhosts if v["name"] == host)["routes"]


def _changed(kind: str, name: str, change) -> list[dict]:
    docs = copy.deepcopy(DOCS)
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            change(doc["spec"])
    return docs


def _endpoints(cluster: dict) -> list[tuple[str, int, int | None]]:
    return [(e["endpoint"]["address"]["socket_address"]["address"],
             e["endpoint"]["address"]["socket_address"]["port_value"],
             e.get("load_balancing_weight"))
            for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]


def test_cluster_names_follow_istio_per_port_and_subset():
    """One cluster per port, `outbound|port||host`, plus `outbound|port|subset|host` per subset."""
    names = set(_clusters())
    assert {f"outbound|9080||{REVIEWS}", f"outbound|9443||{REVIEWS}",
            f"outbound|9080|v1|{REVIEWS}", f"outbound|9080|v2|{REVIEWS}",
            "outbound|80||httpbin.example.com"} <= names


def test_workload_entries_selected_by_label_become_weighted_endpoints_split_by_subset():
    """WorkloadEntries matched by workloadSelector fill the clusters; named port, weight kept;
    a subset holds only the endpoints with its labels."""
    clusters = _clusters()
    assert _endpoints(clusters[f"outbound|9080||{REVIEWS}"]) == [
        ("127.0.0.2", 19080, 3), ("127.0.0.3", 29080, 1)]
    assert _endpoints(clusters[f"outbound|9080|v1|{REVIEWS}"]) == [("127.0.0.2", 19080, 3)]
    assert _endpoints(clusters[f"outbound|9080|v2|{REVIEWS}"]) == [("127.0.0.3", 29080, 1)]


def test_dns_service_entry_without_endpoints_resolves_its_host():
    """resolution DNS with no endpoints: a STRICT_DNS cluster on the host name itself."""
    cluster = _clusters()["outbound|80||httpbin.example.com"]
    assert cluster["type"] == "STRICT_DNS"
    assert _endpoints(cluster) == [("httpbin.example.com", 80, None)]


def test_connection_pool_maps_to_circuit_breakers_and_http_protocol_options():
    """tcp/http pool limits -> circuit_breakers; per-connection limits, idle timeout ->
    HttpProtocolOptions; keepalive -> upstream_connection_options; connect timeout."""
    cluster = _clusters()[f"outbound|9080||{REVIEWS}"]
    assert cluster["circuit_breakers"]["thresholds"] == [{
        "max_connections": 100, "max_pending_requests": 10, "max_requests": 50,
        "max_retries": 4}]
    assert cluster["connect_timeout"] == "2s"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"max_requests_per_connection": 20,
                                                       "idle_timeout": "30s"}
    assert cluster["upstream_connection_options"] == {"tcp_keepalive": {
        "keepalive_probes": 3, "keepalive_time": 60, "keepalive_interval": 10}}


def test_outlier_detection_and_min_health_percent():
    """outlierDetection -> outlier_detection (success rate off); minHealthPercent -> panic threshold."""
    cluster = _clusters()[f"outbound|9080||{REVIEWS}"]
    assert cluster["outlier_detection"] == {
        "enforcing_success_rate": 0, "consecutive_5xx": 3, "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 2, "enforcing_consecutive_gateway_failure": 100,
        "interval": "5s", "base_ejection_time": "15s", "max_ejection_percent": 50}
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 30.0}}


def test_deprecated_consecutive_errors_is_not_rendered():
    """consecutiveErrors is accepted and left out, as Istio >= 1.7 does: Envoy's consecutive_5xx default applies."""
    def only_consecutive_errors(spec):
        spec["trafficPolicy"]["outlierDetection"] = {"consecutiveErrors": 2}
    cluster = _clusters(_changed("DestinationRule", "reviews", only_consecutive_errors))[f"outbound|9080||{REVIEWS}"]
    assert cluster["outlier_detection"] == {"enforcing_success_rate": 0}


def test_subset_and_port_level_policies_override_the_rule_field_by_field():
    """A subset's loadBalancer replaces the rule's, keeping its pool; portLevelSettings win for their port."""
    clusters = _clusters()
    assert clusters[f"outbound|9080||{REVIEWS}"]["lb_policy"] == "ROUND_ROBIN"
    assert clusters[f"outbound|9443||{REVIEWS}"]["lb_policy"] == "RANDOM"
    v2 = clusters[f"outbound|9080|v2|{REVIEWS}"]
    assert v2["lb_policy"] == "RING_HASH"
    assert v2["circuit_breakers"]["thresholds"][0]["max_connections"] == 100


def test_consistent_hash_puts_the_hash_policy_on_single_destination_routes():
    """consistentHash: RING_HASH cluster, and the route to it hashes on the header / cookie."""
    jason = _routes()[0]
    assert jason["route"]["cluster"] == f"outbound|9080|v2|{REVIEWS}"
    assert jason["route"]["hash_policy"] == [{"header": {"header_name": "x-user"}}]
    ratings = _clusters()["outbound|9080||ratings.shop.svc.cluster.local"]
    assert ratings["ring_hash_lb_config"] == {"minimum_ring_size": 2048}
    default = _routes("ratings.shop.svc.cluster.local:9080")[0]
    assert default["route"]["hash_policy"] == [{"cookie": {"name": "session", "ttl": "60s"}}]


def test_istio_mutual_checks_subject_alt_names_and_service_accounts():
    """ISTIO_MUTUAL: UpstreamTlsContext accepting the endpoints' accounts and the subjectAltNames."""
    socket = _clusters()["outbound|9080||ratings.shop.svc.cluster.local"]["transport_socket"]
    sans = socket["typed_config"]["common_tls_context"]["validation_context"][
        "match_typed_subject_alt_names"]
    assert [m["matcher"]["exact"] for m in sans] == [
        "spiffe://cluster.local/ns/shop/sa/ratings-legacy", "spiffe://cluster.local/ns/shop/sa/ratings"]


def test_auto_mtls_uses_tls_only_for_workload_entries_labelled_istio():
    """No tls mode: the endpoint labelled tlsMode istio gets the TLS socket match, others plaintext;
    the WorkloadEntry's account (in its namespace) is the expected server identity."""
    cluster = _clusters()[f"outbound|9080||{REVIEWS}"]
    lb = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ["metadata" in e for e in lb] == [False, True]
    tls = cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert [m["matcher"]["exact"] for m in sans] == ["spiffe://cluster.local/ns/shop/sa/reviews-v1",
                                                     "spiffe://cluster.local/ns/shop/sa/reviews-v2"]
    assert tls["sni"] == f"outbound_.9080_._.{REVIEWS}"


def test_matches_translate_headers_method_query_params_and_without_headers():
    """headers/method -> header matchers, queryParams -> query_parameters, withoutHeaders
    inverted (empty prefix = present), uri regex + ignoreUriCase; one route per match."""
    first, second = _routes()[:2]
    assert first["match"] == {
        "prefix": "/",
        "headers": [
            {"name": ":method", "string_match": {"exact": "GET"}},
            {"name": "end-user", "string_match": {"exact": "jason"}},
            {"name": "x-skip", "present_match": True, "invert_match": True}],
        "query_parameters": [{"name": "debug", "string_match": {"safe_regex": {"regex": "1|true"}}}]}
    assert second["match"] == {"safe_regex": {"regex": "/api/v[0-9]+/.*"}, "case_sensitive": False}
    assert first["route"] is second["route"] or first["route"] == second["route"]


def test_rewrite_and_header_operations():
    """rewrite uri/authority/regex -> prefix_rewrite/host_rewrite_literal/regex_rewrite; headers
    set overwrites, add appends, remove lists the names."""
    jason, _, _, regex, _ = _routes()
    assert (jason["route"]["prefix_rewrite"], jason["route"]["host_rewrite_literal"]) == (
        "/v2/", "reviews-v2")
    assert jason["request_headers_to_add"] == [
        {"header": {"key": "x-route", "value": "jason"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-trace", "value": "1"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
    assert jason["request_headers_to_remove"] == ["x-debug"]
    assert jason["response_headers_to_remove"] == ["server"]
    assert regex["route"]["regex_rewrite"] == {"pattern": {"regex": "^/old/(.*)$"},
                                               "substitution": "/new/\\1"}


def test_fault_becomes_per_route_fault_config_and_the_filter_precedes_the_router():
    """fault delay/abort -> typed_per_filter_config HTTPFault in millionths; the HCM gets the
    fault filter before the router."""
    fault = _routes()[2]["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert fault["delay"] == {"fixed_delay": "2s",
                              "percentage": {"numerator": 125000, "denominator": "MILLION"}}
    assert fault["abort"] == {"http_status": 503,
                              "percentage": {"numerator": 1000, "denominator": "MILLION"}}
    assert [f["name"] for f in _hcm()["http_filters"]] == ["envoy.filters.http.fault",
                                                           "envoy.filters.http.router"]


def test_no_fault_no_fault_filter():
    """Without faults the HCM has only the router (nothing Envoy would pay for in benchmarks)."""
    docs = [d for d in DOCS if d["kind"] != "VirtualService"]
    assert [f["name"] for f in _hcm(docs)["http_filters"]] == ["envoy.filters.http.router"]


def test_weighted_split_drops_zero_weights_and_carries_timeout_and_retries():
    """Several destinations -> weighted_clusters (weight 0 dropped, per-destination headers kept);
    timeout and Istio retries (numeric codes -> retriable_status_codes) on the route."""
    split = _routes()[4]["route"]
    assert split["weighted_clusters"] == {"clusters": [
        {"name": f"outbound|9080|v1|{REVIEWS}", "weight": 80, "request_headers_to_add": [
            {"header": {"key": "x-subset", "value": "v1"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]},
        {"name": f"outbound|9080|v2|{REVIEWS}", "weight": 20}]}
    assert split["timeout"] == "3s"
    retry = split["retry_policy"]
    assert (retry["retry_on"], retry["retriable_status_codes"], retry["num_retries"],
            retry["per_try_timeout"]) == (
        "gateway-error,connect-failure,retriable-status-codes", [503], 3, "1s")


def test_a_host_without_virtual_service_gets_istios_default_route():
    """A ServiceEntry host no VirtualService routes: all traffic to its cluster, default retries."""
    route = _routes("httpbin.example.com:80")[0]
    assert route["route"]["cluster"] == "outbound|80||httpbin.example.com"
    assert route["route"]["retry_policy"]["num_retries"] == 2


@pytest.mark.parametrize("kind,name,change,message", [
    ("VirtualService", "reviews", lambda s: s["http"][0]["route"][0]["destination"].update(
        subset="v9"), r"reviews spec\.http\[0\]\.route\[0\]\.destination\.subset: v9"),
    ("VirtualService", "reviews", lambda s: s["http"][1]["route"][0]["destination"].update(
        host="nowhere"), r"spec\.http\[1\]\.route\[0\]\.destination\.host: nowhere"),
    ("VirtualService", "reviews", lambda s: s.update(tcp=[{}]), r"reviews spec: tcp"),
    ("VirtualService", "reviews", lambda s: s["http"][1]["fault"]["abort"].update(
        grpcStatus="UNAVAILABLE"), r"spec\.http\[1\]\.fault\.abort: grpcStatus"),
    ("DestinationRule", "reviews", lambda s: s["trafficPolicy"]["connectionPool"].setdefault(
        "tcp", {}).update(idleTimeout="1h"), r"connectionPool\.tcp: idleTimeout"),
    ("DestinationRule", "ratings", lambda s: s["trafficPolicy"]["tls"].update(
        mode="MUTUAL", credentialName="client-credential"), r"trafficPolicy\.tls: credentialName"),
    ("ServiceEntry", "httpbin", lambda s: s.update(resolution="NONE"),
     r"ServiceEntry shop/httpbin spec\.resolution: NONE"),
])
def test_untranslated_fields_raise_unsupported_naming_resource_and_path(kind, name, change,
                                                                        message):
    """Anything not translated raises Unsupported with the resource and field path."""
    with pytest.raises(Unsupported, match=message):
        _render(_changed(kind, name, change))


def _inbound_filters(text: str, labels: dict[str, str]) -> list[dict]:
    boot = render_inbound_bootstrap(documents(text), namespace="shop", labels=labels,
                                    inbound_port=15006, app_port=9080, admin_port=15000,
                                    cert_dir="/certs/server")
    chain = boot["static_resources"]["listeners"][0]["filter_chains"][0]
    return chain["filters"][0]["typed_config"]["http_filters"]


def test_authorization_policies_become_deny_then_allow_rbac_filters_before_the_router():
    """DENY filter first, then ALLOW; AUDIT and policies selecting other workloads left out."""
    filters = _inbound_filters(AUTHZ_YAML, {"app": "reviews"})
    assert [f["name"] for f in filters] == ["envoy.filters.http.rbac", "envoy.filters.http.rbac",
                                            "envoy.filters.http.router"]
    deny, allow = (f["typed_config"]["rules"] for f in filters[:2])
    assert deny["action"] == "DENY" and allow["action"] == "ALLOW"
    assert sorted(deny["policies"]) == ["ns[shop]-policy[deny-debug]-rule[0]",
                                        "ns[shop]-policy[deny-debug]-rule[1]"]
    assert list(allow["policies"]) == ["ns[shop]-policy[allow-frontend]-rule[0]"]


def test_rbac_rule_shapes_follow_remoras_matching():
    """paths -> url_path, not-variants -> not_rule, ipBlocks -> direct_remote_ip; principals
    regex on spiffe://, namespaces on /ns/, hosts case-insensitive with optional port,
    ports decided against the app port, when headers/source.ip joined in."""
    deny, allow = (f["typed_config"]["rules"]["policies"]
                   for f in _inbound_filters(AUTHZ_YAML, {"app": "reviews"})[:2])
    debug = deny["ns[shop]-policy[deny-debug]-rule[0]"]
    assert debug["principals"] == [{"any": True}]
    assert debug["permissions"] == [{"and_rules": {"rules": [
        {"not_rule": {"or_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "OPTIONS"}}}]}}},
        {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/debug"}}}]}}]}}]
    ips = deny["ns[shop]-policy[deny-debug]-rule[1]"]["principals"]
    assert ips == [{"or_ids": {"ids": [{"direct_remote_ip": {"address_prefix": "10.9.0.0",
                                                             "prefix_len": 16}}]}}]
    frontend = allow["ns[shop]-policy[allow-frontend]-rule[0]"]
    sources = frontend["principals"][0]["and_ids"]["ids"]
    assert sources[0]["or_ids"]["ids"][0]["or_ids"]["ids"][0] == {"authenticated": {
        "principal_name": {"safe_regex": {"regex": "spiffe://cluster\\.local/ns/shop/sa/frontend"}}}}
    assert sources[0]["or_ids"]["ids"][1]["or_ids"]["ids"][0] == {"authenticated": {
        "principal_name": {"safe_regex": {"regex": "spiffe://[^/]+/ns/ops[^/]*/.*"}}}}
    assert sources[1]["not_id"]["or_ids"]["ids"][0]["direct_remote_ip"]["address_prefix"] == \
        "10.0.0.1"
    permissions = frontend["permissions"][0]["and_rules"]["rules"]
    host = permissions[0]["and_rules"]["rules"][0]["or_rules"]["rules"][0]
    assert host["header"]["string_match"]["safe_regex"]["regex"] == \
        "(?i)reviews\\.shop\\.svc\\.cluster\\.local(:[0-9]+)?"
    assert len(permissions[0]["and_rules"]["rules"]) == 2  # port 9080 = the app port: no matcher
    assert permissions[1] == {"or_rules": {"rules": [
        {"header": {"name": "x-tenant", "string_match": {"exact": "acme"}}}]}}


def test_port_rule_for_another_port_never_matches():
    """An operation on a port other than the app's can never match on this listener."""
    text = AUTHZ_YAML.replace('ports: ["9080"]', 'ports: ["8080"]')
    allow = _inbound_filters(text, {"app": "reviews"})[1]["typed_config"]["rules"]["policies"]
    rules = allow["ns[shop]-policy[allow-frontend]-rule[0]"]["permissions"][0]["and_rules"]["rules"]
    assert {"not_rule": {"any": True}} in rules[0]["and_rules"]["rules"]


def test_allow_policy_without_rules_denies_everything():
    """Istio's deny-all (an ALLOW policy with no rules) is an ALLOW filter with no policies."""
    text = "kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\n" \
        "metadata: {name: deny-all, namespace: shop}\nspec: {}\n"
    rbac = _inbound_filters(text, {"app": "reviews"})[0]["typed_config"]["rules"]
    assert rbac == {"action": "ALLOW", "policies": {}}


def test_no_applicable_policy_no_rbac_filter():
    """A workload no policy selects gets no RBAC filter (everything allowed, as in Remora)."""
    names = [f["name"] for f in _inbound_filters(AUTHZ_YAML, {"app": "details"})]
    assert names == ["envoy.filters.http.router"]


def test_untranslated_when_key_is_refused_with_its_path():
    """A `when` key (JWT claims) is refused naming the policy and field, never dropped."""
    text = AUTHZ_YAML.replace("key: source.ip,", "key: 'request.auth.claims[iss]',")
    with pytest.raises(Unsupported, match=r"allow-frontend spec.rules\[0\].when\[1\].key request.auth.claims"):
        _inbound_filters(text, {"app": "reviews"})


def test_request_principals_are_refused_with_their_path():
    """requestPrincipals (JWT) is refused naming the policy and field, never dropped."""
    text = "kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\n" \
        "metadata: {name: require-jwt, namespace: shop}\n" \
        "spec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}\n"
    with pytest.raises(Unsupported, match=r"require-jwt spec.rules\[0\].from\[0\].source.requestPrincipals"):
        _inbound_filters(text, {"app": "reviews"})


def test_request_authentication_becomes_jwt_authn_before_rbac():
    """Inline-key rules become jwt_authn providers (Istio's allow_missing requirement), before RBAC."""
    from tests.jwt_tokens import ISSUER, Keys, jwt_example
    jwks = Keys().jwks()
    text = jwt_example(jwks, namespace="shop", extra="    outputPayloadToHeader: x-jwt-payload\n"
                       "    fromHeaders: [{name: x-token, prefix: 'Bearer '}]\n")
    text += "---\nkind: AuthorizationPolicy\napiVersion: security.istio.io/v1\n" \
        "metadata: {name: deny-all, namespace: shop}\nspec: {}\n"
    filters = _inbound_filters(text, {"app": "httpbin"})
    assert [f["name"] for f in filters] == ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac",
                                            "envoy.filters.http.router"]
    config = filters[0]["typed_config"]
    provider = config["providers"]["origins-0"]
    assert provider["issuer"] == ISSUER and provider["local_jwks"] == {"inline_string": jwks}
    assert provider["forward_payload_header"] == "x-jwt-payload"
    assert provider["from_headers"] == [{"name": "x-token", "value_prefix": "Bearer "}]
    assert config["rules"][0]["requires"] == {"requires_any": {"requirements": [
        {"provider_name": "origins-0"}, {"allow_missing": {}}]}}
    assert config["bypass_cors_preflight"] is True


def test_jwks_uri_is_refused_for_envoy_with_its_path():
    """A rule with only jwksUri (keys fetched at run time) is refused naming the field."""
    from tests.jwt_tokens import jwt_example
    text = jwt_example(jwks_uri="https://idp.example.com/jwks.json", namespace="shop")
    with pytest.raises(Unsupported, match=r"jwt-example spec.jwtRules\[0\].jwksUri"):
        _inbound_filters(text, {"app": "httpbin"})


_H2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _with_port_protocol(protocol: str, pool_http: dict | None = None) -> list[dict]:
    """DOCS with reviews' 9080 port declared `protocol`, and optionally its DR's http pool."""
    docs = copy.deepcopy(DOCS)
    for doc in docs:
        if doc["kind"] == "ServiceEntry" and doc["metadata"]["name"] == "reviews":
            doc["spec"]["ports"][0]["protocol"] = protocol
        if pool_http is not None and doc["kind"] == "DestinationRule" \
                and doc["spec"]["host"].startswith("reviews"):
            pool = doc["spec"].setdefault("trafficPolicy", {}).setdefault("connectionPool", {})
            pool.setdefault("http", {}).update(pool_http)
    return docs


def test_grpc_port_renders_an_http2_cluster_with_the_rule_stream_limit():
    """A GRPC port gets http2_protocol_options (maxConcurrentStreams carried); an HTTP port stays HTTP/1.1."""
    clusters = _clusters(_with_port_protocol("GRPC", {"maxConcurrentStreams": 64}))
    options = clusters[f"outbound|9080||{REVIEWS}"]["typed_extension_protocol_options"][_H2_OPTIONS]
    assert options["explicit_http_config"] == {"http2_protocol_options": {"max_concurrent_streams": 64}}
    other = clusters[f"outbound|9443||{REVIEWS}"]["typed_extension_protocol_options"][_H2_OPTIONS]
    assert other["explicit_http_config"] == {"http_protocol_options": {}}


def test_h2_upgrade_policy_and_use_client_protocol_choose_the_upstream_version():
    """h2UpgradePolicy UPGRADE makes an HTTP port HTTP/2; useClientProtocol follows the client."""
    upgraded = _clusters(_with_port_protocol("HTTP", {"h2UpgradePolicy": "UPGRADE"}))
    options = upgraded[f"outbound|9080||{REVIEWS}"]["typed_extension_protocol_options"][_H2_OPTIONS]
    assert "http2_protocol_options" in options["explicit_http_config"]
    client = _clusters(_with_port_protocol("HTTP", {"useClientProtocol": True}))
    options = client[f"outbound|9080||{REVIEWS}"]["typed_extension_protocol_options"][_H2_OPTIONS]
    assert "explicit_http_config" not in options
    assert set(options["use_downstream_protocol_config"]) == {"http_protocol_options",
                                                              "http2_protocol_options"}


def test_inbound_cluster_speaks_http2_to_a_grpc_app():
    """The inbound cluster to an app behind a GRPC port is HTTP/2; behind an HTTP port, HTTP/1.1."""
    def app_cluster(protocol):
        boot = render_inbound_bootstrap(DOCS, namespace="shop", labels={"app": "reviews"},
                                        inbound_port=15006, app_port=9080, admin_port=15000,
                                        cert_dir="/certs/server", app_protocol=protocol)
        return boot["static_resources"]["clusters"][0]
    options = app_cluster("GRPC")["typed_extension_protocol_options"][_H2_OPTIONS]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    assert "typed_extension_protocol_options" not in app_cluster("HTTP")
