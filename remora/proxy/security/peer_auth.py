"""PeerAuthentication -> effective mTLS mode: the rule lives in remora/config/peer_auth.py
(shared with the Envoy renderer); the data plane's modules import it from here."""
from remora.config.peer_auth import DEFAULT_MODE, DISABLE, PERMISSIVE, STRICT, effective_mtls_mode

__all__ = ["DEFAULT_MODE", "DISABLE", "PERMISSIVE", "STRICT", "effective_mtls_mode"]
