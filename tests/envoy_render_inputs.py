"""The repo's example mesh configs, as document lists the Envoy renderer is checked against.

Istio examples usually route to Kubernetes Services, which Remora (outside Kubernetes)
knows as ServiceEntries: `with_stand_in_services` adds one STATIC ServiceEntry on
127.0.0.1 for every host a VirtualService or DestinationRule names without one, with an
endpoint per DestinationRule subset (carrying the subset's labels) so every cluster has
an endpoint to balance over.
"""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "istio-examples"

# Fixtures Remora loads whose kinds the renderer translates; each renders and validates.
RENDERED_FIXTURES = [
    "000-00-DestinationRule-my-service.yaml",
    "000-02-PeerAuthentication-default.yaml",
    "000-03-AuthorizationPolicy-my-service-policy.yaml",
    "000-04-DestinationRule-my-service-circuit-breaker.yaml",
    "000-05-VirtualService-my-service-retry.yaml",
    "000-07-VirtualService-my-service-vs.yaml",   # bound to my-gateway only: no sidecar routes
    "000-10-VirtualService-my-service-fault-injection.yaml",
    "000-12-RequestAuthentication-jwt-auth.yaml",
    "000-13-AuthorizationPolicy-my-service-authz.yaml",
    "000-14-DestinationRule-my-service-optimized.yaml",
    "000-15-VirtualService-my-service-cached.yaml",
    "000-16-DestinationRule-my-service-lb.yaml",
    "001-05-PeerAuthentication-default.yaml",
    "001-07-DestinationRule-reviews.yaml",
    "001-13-DestinationRule-tcp-pool.yaml",
    "002-02-DestinationRule-user-service.yaml",
    "002-05-VirtualService-order-service-blue-green.yaml",
    "002-07-VirtualService-payment-service-fault.yaml",
    "002-08-PeerAuthentication-default.yaml",
    "002-09-AuthorizationPolicy-user-service-authz.yaml",
    "002-15-DestinationRule-high-throughput-service.yaml",
    "003-12-AuthorizationPolicy-deny-all.yaml",
    "004-01-ServiceEntry-edition-cnn-com.yaml",
]

# Fixtures Remora loads that the renderer refuses, with the reason it must give.
UNSUPPORTED_FIXTURES = {
    "001-02-ServiceEntry-external-service.yaml": r"external-service spec\.resolution: NONE",
    "002-04-TrafficSplit-product-service-split.yaml": "kinds TrafficSplit",
    "002-14-Sidecar-default.yaml": "kinds Sidecar",
    "003-06-TrafficSplit-blog-api-split.yaml": "kinds HTTPRouteGroup, TrafficSplit",
    "003-07-ServiceProfile-blog-api.blog.svc.cluster.local.yaml": "kinds ServiceProfile",
    "003-08-ServiceIntentions-blog-api-intentions.yaml": "kinds ServiceDefaults",
    "004-02-ServiceEntry-originate-mtls-for-nginx.yaml": r"originate-mtls-for-nginx spec\.resolution: NONE",
}


def documents(text: str) -> list[dict]:
    """The YAML documents of `text` that are Kubernetes-style resources (have a kind)."""
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]


def with_stand_in_services(docs: list[dict]) -> list[dict]:
    """docs plus a 127.0.0.1 ServiceEntry for every routed host that has none (see above)."""
    known = {h for d in docs if d["kind"] == "ServiceEntry" for h in d["spec"].get("hosts", [])}
    # A Kubernetes Service declares its name (and FQDN) as a host.
    known |= {h for d in docs if d["kind"] == "Service" and d.get("apiVersion") == "v1"
              for h in (d["metadata"]["name"], f"{d['metadata']['name']}.{d['metadata'].get('namespace') or 'default'}"
                        ".svc.cluster.local")}
    ports: dict[str, set[int]] = {}
    subsets: dict[str, list[dict]] = {}
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc["kind"] == "DestinationRule":
            ports.setdefault(spec["host"], set())
            subsets[spec["host"]] = spec.get("subsets", [])
            for level in (spec.get("trafficPolicy") or {}).get("portLevelSettings", []):
                ports[spec["host"]].add(level["port"]["number"])
        if doc["kind"] == "VirtualService":
            for http in spec.get("http", []):
                for dest in http.get("route", []):
                    d = dest["destination"]
                    ports.setdefault(d["host"], set())
                    if (d.get("port") or {}).get("number"):
                        ports[d["host"]].add(d["port"]["number"])
    added = []
    for i, (host, numbers) in enumerate(sorted(ports.items())):
        if host in known:
            continue
        endpoints = [{"address": "127.0.0.1", "labels": s.get("labels", {})}
                     for s in subsets.get(host, [])] or [{"address": "127.0.0.1"}]
        added.append({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                      "metadata": {"name": f"stand-in-{i}", "namespace": "default"},
                      "spec": {"hosts": [host], "resolution": "STATIC",
                               "location": "MESH_INTERNAL",
                               "ports": [{"number": n, "name": f"http-{n}", "protocol": "HTTP"}
                                         for n in sorted(numbers or {80})],
                               "endpoints": endpoints}})
    return added + docs


# Every feature the renderer translates, in one mesh (Remora's loader accepts it too).
FEATURES_YAML = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9443, name: http-alt, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 127.0.0.2, ports: {http: 19080}, labels: {app: reviews, version: v1}, weight: 3,
       serviceAccount: reviews-v1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: shop}
spec:
  address: 127.0.0.3
  ports: {http: 29080}
  labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}
  serviceAccount: reviews-v2
  weight: 1
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: shop}
spec:
  hosts: [httpbin.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.4, labels: {version: v1}, serviceAccount: ratings}
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/ratings-legacy"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings.shop.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer:
      consistentHash: {httpCookie: {name: session, ttl: 60s}, ringHash: {minimumRingSize: 2048}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s, tcpKeepalive: {probes: 3, time: 60s, interval: 10s}}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 50, maxRequestsPerConnection: 20,
             maxRetries: 4, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 5s,
                       baseEjectionTime: 15s, maxEjectionPercent: 50, minHealthPercent: 30}
    portLevelSettings:
    - port: {number: 9443}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
      method: {exact: GET}
      queryParams: {debug: {regex: "1|true"}}
      withoutHeaders: {x-skip: {}}
    - uri: {regex: "/api/v[0-9]+/.*"}
      ignoreUriCase: true
    route:
    - destination: {host: reviews.shop.svc.cluster.local, subset: v2, port: {number: 9080}}
    rewrite: {uri: /v2/, authority: reviews-v2}
    headers:
      request: {set: {x-route: jason}, add: {x-trace: "1"}, remove: [x-debug]}
      response: {remove: [server]}
  - name: faulty
    match: [{uri: {exact: /fault}}]
    route:
    - destination: {host: reviews.shop.svc.cluster.local, subset: v1, port: {number: 9080}}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 12.5}}
      abort: {httpStatus: 503, percentage: {value: 0.1}}
  - name: regex-rewrite
    match: [{uri: {prefix: /old/}}]
    route:
    - destination: {host: reviews.shop.svc.cluster.local, port: {number: 9080}}
    rewrite: {uriRegexRewrite: {match: "^/old/(.*)$", rewrite: "/new/\\\\1"}}
  - name: split
    route:
    - destination: {host: reviews.shop.svc.cluster.local, subset: v1, port: {number: 9080}}
      weight: 80
      headers: {request: {set: {x-subset: v1}}}
    - destination: {host: reviews.shop.svc.cluster.local, subset: v2, port: {number: 9080}}
      weight: 20
    - destination: {host: reviews.shop.svc.cluster.local, port: {number: 9443}}
      weight: 0
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "gateway-error,connect-failure,503"}
"""

# AuthorizationPolicies for the server side of the `reviews` workload (namespace shop).
AUTHZ_YAML = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/debug*], notMethods: [OPTIONS]}}]
  - from: [{source: {ipBlocks: [10.9.0.0/16]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/shop/sa/frontend]}
    - source: {namespaces: [ops*]}
    to: [{operation: {hosts: [reviews.shop.svc.cluster.local], ports: ["9080"], methods: [GET]}}]
    when:
    - {key: "request.headers[x-tenant]", values: [acme]}
    - {key: source.ip, notValues: [10.0.0.1]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{}]
"""
