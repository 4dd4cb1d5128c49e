"""SPIFFE IDs of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Rules (SPIFFE ID standard, plus Istio's path layout and Kubernetes' name rules):

- The scheme is exactly `spiffe` (lowercase), followed by `://`.
- The trust domain is 1..255 characters of `a-z 0-9 . - _`, lowercase only (the standard
  forbids uppercase rather than folding it, so `Cluster.Local` is an error, not an alias).
- No userinfo, port, query, fragment or percent-encoding: an ID is compared as a string,
  so only one spelling of each ID may exist.
- The path is `/ns/<namespace>/sa/<service-account>`; the namespace is a Kubernetes
  namespace name (an RFC 1123 DNS label: 1..63 of `a-z 0-9 -`, alphanumeric at both ends),
  the service account a Kubernetes ServiceAccount name (an RFC 1123 DNS subdomain:
  1..253 characters, dot-separated labels as above).
- The whole ID is at most 2048 bytes.

Errors are `InvalidSpiffeId` (a ValueError) naming the part that is wrong.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
MAX_LABEL_LENGTH = 63
MAX_SUBDOMAIN_LENGTH = 253

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


class InvalidSpiffeId(ValueError):
    """A SPIFFE ID, trust domain, namespace or service account that breaks the rules."""


def validate_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` unchanged, or raise InvalidSpiffeId saying what is wrong."""
    if not trust_domain:
        raise InvalidSpiffeId("trust domain is empty")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidSpiffeId(f"trust domain is {len(trust_domain)} characters, at most {MAX_TRUST_DOMAIN_LENGTH} allowed")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        if _TRUST_DOMAIN.fullmatch(trust_domain.lower()):
            raise InvalidSpiffeId(f"trust domain {trust_domain!r} must be lowercase")
        bad = next(c for c in trust_domain if not _TRUST_DOMAIN.fullmatch(c))
        raise InvalidSpiffeId(f"trust domain {trust_domain!r} contains {bad!r}; allowed: a-z 0-9 . - _")
    return trust_domain


def validate_namespace(namespace: str) -> str:
    """A Kubernetes namespace name (DNS label); raise InvalidSpiffeId naming the problem."""
    return _check_label(namespace, "namespace")


def validate_service_account(service_account: str) -> str:
    """A Kubernetes ServiceAccount name (DNS subdomain); raise InvalidSpiffeId naming the problem."""
    what = "service account"
    if not service_account:
        raise InvalidSpiffeId(f"{what} is empty")
    if len(service_account) > MAX_SUBDOMAIN_LENGTH:
        raise InvalidSpiffeId(f"{what} {service_account[:20]!r}... is {len(service_account)} characters, "
                              f"at most {MAX_SUBDOMAIN_LENGTH} allowed")
    for label in service_account.split("."):
        try:
            _check_label(label, what)
        except InvalidSpiffeId as error:
            raise InvalidSpiffeId(f"{what} {service_account!r}: {error}") from None
    return service_account


def _check_label(value: str, what: str) -> str:
    if not value:
        raise InvalidSpiffeId(f"{what} is empty (or has an empty part)")
    if len(value) > MAX_LABEL_LENGTH:
        raise InvalidSpiffeId(f"{what} {value!r} is {len(value)} characters, at most {MAX_LABEL_LENGTH} allowed")
    if not _DNS_LABEL.fullmatch(value):
        if value != value.lower():
            raise InvalidSpiffeId(f"{what} {value!r} must be lowercase")
        raise InvalidSpiffeId(f"{what} {value!r} must be a-z 0-9 '-', starting and ending with a letter or digit")
    return value


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A workload identity; `str()` gives its URI."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_namespace(self.namespace)
        validate_service_account(self.service_account)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse a workload SPIFFE ID; raise InvalidSpiffeId naming what is wrong."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(f"SPIFFE ID must be a string, got {type(text).__name__}")
        if len(text.encode()) > MAX_ID_LENGTH:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_LENGTH} bytes")
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise InvalidSpiffeId(f"{text!r} is not a SPIFFE ID: missing 'spiffe://'")
        if scheme != "spiffe":
            hint = " (the scheme must be lowercase)" if scheme.lower() == "spiffe" else ""
            raise InvalidSpiffeId(f"{text!r}: scheme is {scheme!r}, expected 'spiffe'{hint}")
        for char, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
            if char in rest:
                raise InvalidSpiffeId(f"{text!r}: a SPIFFE ID must not contain {what} ({char!r})")
        trust_domain, slash, path = rest.partition("/")
        if "@" in trust_domain:
            raise InvalidSpiffeId(f"{text!r}: a SPIFFE ID must not contain userinfo ('@')")
        if ":" in trust_domain:
            raise InvalidSpiffeId(f"{text!r}: a SPIFFE ID must not contain a port")
        try:
            validate_trust_domain(trust_domain)
        except InvalidSpiffeId as error:
            raise InvalidSpiffeId(f"{text!r}: {error}") from None
        if not slash or not path:
            raise InvalidSpiffeId(f"{text!r}: no workload path; expected /ns/<namespace>/sa/<service-account>")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise InvalidSpiffeId(f"{text!r}: path /{path} is not /ns/<namespace>/sa/<service-account>")
        try:
            return cls(trust_domain, parts[1], parts[3])
        except InvalidSpiffeId as error:
            raise InvalidSpiffeId(f"{text!r}: {error}") from None
