"""SvidManager against a fake CA client: first issue, rotation time, backoff, keeping the SVID until expiry."""
from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest
from cryptography.hazmat.primitives import hashes, serialization

from remora.certs import CertificateAuthority, RotationBackoff, SpiffeId
from remora.proxy.security.svid_manager import (
    CaUnavailable,
    HttpCaClient,
    SvidManager,
    bundle_summary,
    certificates_url,
)

TD = "cluster.local"
WEB = SpiffeId(TD, "shop", "web")
START = 1_800_000_000.0   # a fixed "now" (2027), so expiry arithmetic is exact
TIMEOUT = 20


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCa:
    """Signs with a real CA at the fake clock's time; `down` makes it fail like an unreachable server."""

    def __init__(self, ca: CertificateAuthority, clock: Clock, ttl: float = 3600) -> None:
        self.ca, self.clock, self.ttl = ca, clock, ttl
        self.down: str | None = None
        self.answer_override: dict | None = None
        self.requests = 0
        self.closed = False

    async def sign(self, csr: str, token: str) -> dict:
        self.requests += 1
        assert token == "rmt_test.secret"
        if self.down:
            raise CaUnavailable(self.down)
        if self.answer_override is not None:
            return self.answer_override
        at = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)
        issued = self.ca.sign_csr(csr, WEB, self.ttl, now=at)
        return {"certificate": issued.cert_pem, "chain": list(issued.chain_pems),
                "trust_bundle": self.ca.trust_bundle()}

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", TD)


def manager(ca, ttl: float = 3600, rng: float = 0.0):
    clock = Clock()
    fake = FakeCa(ca, clock, ttl)
    logs: list[str] = []
    m = SvidManager(fake, "rmt_test.secret", str(WEB), clock=clock, rng=lambda: rng,
                    backoff=RotationBackoff(base=1.0, cap=60.0, rng=lambda: 1.0), log=logs.append)
    return m, fake, clock, logs


async def test_first_request_issues_an_svid_and_schedules_rotation_at_half_life(ca):
    """The first refresh yields an SVID for the workload, the trust bundle, and rotation at half the lifetime."""
    m, fake, clock, logs = manager(ca)
    seen = []
    m.on_rotate.append(lambda svid, bundle: seen.append((svid.serial, len(bundle))))
    delay = await m.refresh()
    svid = m.current()
    assert svid is not None and str(svid.spiffe_id) == str(WEB)
    assert m.trust_bundle == ca.trust_bundle() and m.last_error is None
    # Rotation is due half way from not_before (which the CA backdates for clock skew).
    assert delay == pytest.approx(svid.not_before.timestamp() + svid.lifetime / 2 - clock())
    assert 1700 < delay < 1800
    assert seen == [(svid.serial, 1)]
    assert len(logs) == 1 and "certificate issued" in logs[0] and str(WEB) in logs[0]


async def test_jitter_moves_rotation_earlier_by_at_most_5_percent(ca):
    """With full jitter the rotation comes 5% of the lifetime earlier, never later."""
    early, *_ = manager(ca, rng=1.0)
    plain, *_ = manager(ca, rng=0.0)
    d_early, d_plain = await early.refresh(), await plain.refresh()
    assert d_plain - d_early == pytest.approx(0.05 * early.current().lifetime)


async def test_short_lifetime_backdated_past_half_does_not_rotate_in_a_loop(ca):
    """A 20 s certificate backdated 60 s is already 'half way' on arrival: rotate half way through the rest."""
    m, *_ = manager(ca, ttl=20)
    delay = await m.refresh()
    assert delay == pytest.approx(10.0, abs=0.01)


async def test_unreachable_ca_without_a_certificate_backs_off_and_reports(ca):
    """No CA: no SVID, last_error names the reason, retries back off exponentially, one log line each."""
    m, fake, clock, logs = manager(ca)
    fake.down = "http://127.0.0.1:1/v1/certificates unreachable: connection refused"
    delays = [await m.refresh() for _ in range(4)]
    assert m.current() is None
    assert m.last_error == fake.down
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert len(logs) == 4 and all("certificate request failed" in line and "no certificate yet" in line
                                  for line in logs)


async def test_failed_rotation_keeps_the_current_svid_until_it_expires(ca):
    """When rotation fails the old SVID stays in use, retries come before its expiry, and it is dropped after."""
    m, fake, clock, logs = manager(ca, ttl=600)
    await m.refresh()
    old = m.current()
    clock.now = old.not_before.timestamp() + old.lifetime / 2
    fake.down = "refused (401 token-revoked): token revoked"
    for _ in range(12):
        delay = await m.refresh()
        remaining = old.not_after.timestamp() - clock.now
        assert 0 < delay <= remaining
        assert m.current() is old
        assert "keeping serial" in logs[-1]
        clock.now += delay
    assert "token revoked" in m.last_error
    clock.now = old.not_after.timestamp()
    assert m.current() is None
    assert m.status()["svid"] is None


async def test_recovery_after_failures_gets_a_new_serial_and_resets_backoff(ca):
    """After the CA comes back the next attempt installs a new SVID, clears the error, and backoff starts over."""
    m, fake, clock, _ = manager(ca)
    await m.refresh()
    first = m.current().serial
    fake.down = "unreachable"
    await m.refresh()
    await m.refresh()
    assert m.backoff.failures == 2
    fake.down = None
    clock.now += 60
    await m.refresh()
    assert m.current().serial != first
    assert m.last_error is None and m.backoff.failures == 0


async def test_an_answer_for_another_key_is_refused(ca):
    """A certificate that does not match the key just generated is an error, not an SVID."""
    m, fake, clock, _ = manager(ca)
    await m.refresh()
    stale = {"certificate": m.current().cert.public_bytes(serialization.Encoding.PEM).decode(),
             "chain": [], "trust_bundle": ca.trust_bundle()}
    fake.answer_override = stale
    await m.refresh()
    assert "not for this sidecar's key" in m.last_error


async def test_an_answer_without_a_certificate_is_an_error(ca):
    """A CA answer missing fields is reported by name."""
    m, fake, *_ = manager(ca)
    fake.answer_override = {"chain": [], "trust_bundle": []}
    await m.refresh()
    assert m.current() is None and "'certificate'" in m.last_error


async def test_status_shows_the_svid_bundle_and_next_rotation(ca):
    """status() (GET /certs) shows the SPIFFE ID, serial, validity, roots by fingerprint, next rotation."""
    m, fake, clock, _ = manager(ca)
    m.start()
    try:
        for _ in range(TIMEOUT * 100):
            if m.next_attempt_at is not None:
                break
            await asyncio.sleep(0.01)
        status = m.status()
    finally:
        await m.stop()
    assert fake.closed
    svid = status["svid"]
    assert svid["spiffe_id"] == str(WEB)
    assert svid["serial"] == format(m.current().serial, "x")
    assert svid["expires_in_seconds"] == pytest.approx(3600, abs=1)
    assert svid["not_after"].endswith("Z") and svid["not_before"] < svid["not_after"]
    [root] = status["trust_bundle"]
    assert root["fingerprint_sha256"] == ca.cert.fingerprint(hashes.SHA256()).hex()
    assert status["last_error"] is None
    assert 1700 < status["next_rotation_in_seconds"] < 1800


def test_bundle_summary_reports_an_unreadable_root():
    """A bundle entry that is not a certificate is listed with its error, not dropped silently."""
    [row] = bundle_summary(["not a pem"])
    assert row["subject"] is None and row["error"]


def test_certificates_url_from_the_control_url():
    """--control http://h:p (or ws://) maps to the CA endpoint over HTTP."""
    assert certificates_url("http://127.0.0.1:15010") == "http://127.0.0.1:15010/v1/certificates"
    assert certificates_url("ws://127.0.0.1:15010/v1/xds") == "http://127.0.0.1:15010/v1/certificates"
    assert certificates_url("wss://ca.example:443") == "https://ca.example:443/v1/certificates"


async def test_http_client_names_the_url_when_unreachable():
    """A closed port is CaUnavailable naming the URL it tried."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpCaClient(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(CaUnavailable, match=f"127.0.0.1:{port}/v1/certificates unreachable"):
            await client.sign("csr", "token")
    finally:
        await client.close()
