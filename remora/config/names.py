"""Host naming: how a short service name in Istio YAML becomes one canonical host.

Istio resolves a short host name (one without a dot) relative to the resource's
namespace, and takes any name with a dot as fully qualified (pilot's
ResolveShortnameToFQDN):

    reviews                  -> reviews.<ns>.svc.cluster.local
    reviews.prod             -> unchanged (has a dot: Istio treats it as an FQDN)
    api.example.com          -> unchanged
    10.0.0.1, ::1            -> unchanged (addresses are never qualified)
    *.example.com, *         -> unchanged (wildcards are never qualified)

Every place that compares hosts (loader cross-checks, router, cluster registry) goes
through `qualify_host`, so "reviews" in a VirtualService and
"reviews.default.svc.cluster.local" in a ServiceEntry name the same service.
`host_aliases` is the inverse: the spellings a client may put in Host for one FQDN.
"""
from __future__ import annotations

DEFAULT_DOMAIN = "cluster.local"


def qualify_host(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """Return the lowercase fully qualified form of `host` as seen from `namespace`."""
    # DNS names are case-insensitive and a trailing dot only marks an absolute name.
    name = host.strip().lower().rstrip(".")
    if not name or name.startswith("*"):
        return name
    if "." in name or ":" in name:
        return name
    return f"{name}.{namespace.lower()}.svc.{domain.lower()}"


def host_aliases(fqdn: str, domain: str = DEFAULT_DOMAIN) -> list[str]:
    """Spellings a sidecar accepts in Host for `fqdn`, longest first.

    Only in-cluster service names have aliases (the Kubernetes search-path forms);
    any other host is only ever addressed by itself.
    """
    name = fqdn.strip().lower().rstrip(".")
    labels = name.split(".")
    domain_suffix = f".svc.{domain.lower()}"
    if (
        not name.startswith("*")
        and name.endswith(domain_suffix)
        and len(labels) == 2 + 1 + len(domain.split("."))
    ):
        service, namespace = labels[0], labels[1]
        return [name, f"{service}.{namespace}.svc", f"{service}.{namespace}", service]
    return [name]

# Istio's label on workloads whose sidecar accepts mutual TLS (auto-mTLS dials them with it).
TLS_MODE_LABEL = "security.istio.io/tlsMode"


def wildcard_covers(pattern: str, name: str) -> bool:
    """Istio's host wildcards: `*` covers every name, `*.example.com` every name under
    example.com (not example.com itself), anything else only itself. Lower-case both."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return pattern == name
