"""The sealed secrets replicas share in etcd (replicas.py's keys `ca/root`, `admin-token`,
`ca/join-tokens`): a base class of EtcdState, which gives it `client`, `prefix` and `key`.

Each is made once, by the first replica to ask (create-if-absent), and read by the others;
the CA key and the admin token are sealed with --store-key-file before they reach etcd.
"""
from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from remora.certs import CertificateAuthority, JoinTokenStore
from remora.certs.ca import root_trust_domain, self_signed_root
from remora.certs.pem import CaError, cert_pem, certs_from_pem, key_pem
from remora.certs.sealing import SealingKey
from remora.xds.admin_auth import generate_token
from remora.xds.etcd_client import EtcdClient, compare_revision, put_op


class SharedSecrets:
    """The CA root, the admin token and the join-token records, in etcd."""

    client: EtcdClient
    prefix: str
    key: SealingKey

    # ---- the CA root and the admin token

    async def certificate_authority(self, trust_domain: str) -> tuple[CertificateAuthority, bool]:
        """The shared root, made by the first replica; (CA, made here)."""
        name = self.prefix + "ca/root"
        existing = await self.client.get(name)
        if existing is None:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self_signed_root(key, trust_domain)
            value = json.dumps({"cert": cert_pem(cert), "key": self.key.seal(key_pem(key), name).decode()}).encode()
            existing = await self.client.create(name, value)   # None: ours is the root (no replica was faster)
        if existing is not None:
            data = json.loads(existing.value)
            cert = certs_from_pem(data["cert"].encode(), "shared CA root")[0]
            key = serialization.load_pem_private_key(self.key.open(data["key"].encode(), name), None)
        found = root_trust_domain(cert)
        if found is not None and found != trust_domain:
            raise CaError(f"the shared CA root in etcd ({name}) is the root of trust domain {found!r}, "
                          f"not {trust_domain!r}")
        return CertificateAuthority(cert, key, [cert], [cert], trust_domain=trust_domain), existing is None

    async def admin_token(self, given: str | None) -> tuple[str, bool]:
        """The shared admin token: `given` (--admin-token-file) or a new one if etcd has none; (token, made)."""
        name = self.prefix + "admin-token"
        token = given or generate_token()
        existing = await self.client.create(name, self.key.seal(token.encode(), name))
        if existing is None:
            return token, given is None
        stored = self.key.open(existing.value, name).decode()
        if given is not None and stored != given:
            raise ValueError("--admin-token-file differs from the admin token the other replicas use "
                             "(in etcd): give every replica the same file")
        return stored, False

    # ---- join tokens

    async def tokens(self) -> tuple[JoinTokenStore, int]:
        """The join-token records as they are now (linearizable read) and their revision."""
        found = await self.client.get(self.prefix + "ca/join-tokens")
        return JoinTokenStore.in_memory(found.value if found else None), found.mod_revision if found else 0

    async def save_tokens(self, store: JoinTokenStore, revision: int) -> bool:
        """Write the records back if nobody changed them since `revision`; False if somebody did."""
        name = self.prefix + "ca/join-tokens"
        done, _ = await self.client.txn([compare_revision(name, revision)], [put_op(name, store.serialized())])
        return done
