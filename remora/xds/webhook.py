"""The sidecar-injection webhook of `remora control` (`--webhook-listen`, Istio's 15017).

- HTTPS only (the API server calls webhooks over TLS): the serving certificate is issued by
  the mesh CA for the webhook Service's DNS names (`--webhook-names`), so the
  MutatingWebhookConfiguration's `caBundle` is the mesh trust bundle
  (`remora webhook-config` prints it filled in). It is reissued at half its lifetime; new
  handshakes get the new one.
- POST /inject with an AdmissionReview v1: the answer of kube/admission.py (the same
  injection as `remora inject`, as a JSONPatch), handed in by the command line as `review`
  (the control server imports nothing of kube/). A body that is not an AdmissionReview is
  400 with the reason; bodies over 4 MiB are refused by the server.
- Counted in the control server's metrics: `remora_control_injections_total{result}`
  (injected, skipped, refused, invalid).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field

from aiohttp import web

from typing import Callable

MAX_REVIEW_BYTES = 4 << 20
CERT_TTL = 30 * 24 * 3600.0       # reissued at half of it


@dataclass
class WebhookSettings:
    host: str
    port: int
    review: Callable[[dict], dict]     # AdmissionReview in, AdmissionReview out; ValueError if invalid
    names: list[str] = field(default_factory=lambda: ["remora-control.remora-system.svc"])


class InjectionWebhook:
    """The webhook's TLS context and handler."""

    def __init__(self, settings: WebhookSettings, authority, count) -> None:
        self.settings = settings
        self.authority = authority      # the mesh CertificateAuthority
        self.count = count              # count(result): the control server's metric
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self.reissue()

    def reissue(self) -> None:
        """A fresh serving certificate into the context (new handshakes present it)."""
        chain, key = self.authority.issue_server_certificate(self.settings.names, CERT_TTL)
        directory = tempfile.mkdtemp(prefix="remora-webhook-")   # mode 0700: ours alone
        try:
            path = os.path.join(directory, "serving.pem")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as out:
                out.write(chain + key)
            self.context.load_cert_chain(path)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def inject(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            answer = self.settings.review(body)
        except ValueError as error:
            self.count("invalid")
            return web.json_response({"error": f"not an AdmissionReview: {error}"}, status=400)
        response = answer["response"]
        self.count("refused" if not response["allowed"] else "injected" if "patch" in response else "skipped")
        return web.json_response(answer)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/inject", self.inject)
        return app

    async def serve(self, log) -> web.AppRunner:
        """Start listening; returns the runner to clean up."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.host, self.settings.port, ssl_context=self.context).start()
        loop = asyncio.get_running_loop()

        def rotate() -> None:
            self.reissue()
            loop.call_later(CERT_TTL / 2, rotate)
        loop.call_later(CERT_TTL / 2, rotate)
        log(f"injection webhook on https://{self.settings.host}:{self.settings.port}/inject "
            f"(certificate for {', '.join(self.settings.names)})")
        return runner
