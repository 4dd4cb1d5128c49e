# Remora: one image for the sidecar (`remora proxy`), the control server (`remora control`)
# and the traffic-capture init step (`remora iptables`, run as root), like istio/proxyv2.
#
#   docker build -t remora:latest .
#   docker build --build-arg BASE_IMAGE=remora-base:test -t remora:test .   # any Debian-like base with python3
#
# BASE_IMAGE must have python3 >= 3.11 with the venv module (python:3.11-slim has it; on
# Debian the python3-venv package). Both stages use it, so the virtual environment built in
# the builder runs unchanged in the runtime stage (same interpreter path).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# pip's index settings pass through as build args (`--build-arg PIP_INDEX_URL=...`); unset
# ones leave pip's defaults. PIP_CERT names a CA bundle inside the base image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/remora
# Dependencies first, from pyproject.toml alone, so a source change does not re-download them.
# With the [kube] extra: `remora control --kubernetes` reads the API with kubernetes-asyncio.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/remora && touch /src/remora/__init__.py \
 && /opt/remora/bin/pip wheel -q --wheel-dir /wheels '/src[kube]' \
 && rm /wheels/remora-*.whl \
 && /opt/remora/bin/pip install -q --no-index --find-links /wheels /wheels/*.whl
COPY remora /src/remora
# The project as a real wheel (not an editable install): the runtime stage gets no sources.
RUN /opt/remora/bin/pip wheel -q --no-deps --wheel-dir /dist /src \
 && /opt/remora/bin/pip install -q --no-index --no-deps /dist/remora-*.whl \
 && /opt/remora/bin/remora --help >/dev/null

FROM ${BASE_IMAGE} AS runtime
# iptables for `remora iptables` (the init step runs this image as root with NET_ADMIN):
# installed with apt when the base lacks it and has apt; a base without either must bring it.
RUN if ! command -v iptables >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 1337 remora \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /var/lib/remora --shell /usr/sbin/nologin remora \
 && mkdir -p /var/lib/remora /var/run/remora \
 && chown 1337:1337 /var/lib/remora /var/run/remora
COPY --from=builder /opt/remora /opt/remora
ENV PATH=/opt/remora/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The proxy's uid/gid: `remora iptables --proxy-uid 1337` exempts its traffic from capture.
USER 1337:1337
WORKDIR /var/lib/remora
# 15001 outbound, 15006 inbound, 15000 admin, 15090 Prometheus, 15021 health (Istio's ports).
EXPOSE 15001 15006 15000 15090 15021
# Slim bases have no curl. REMORA_HEALTH_PORT lets a sidecar on another health port
# (e.g. several on one host network) keep the same check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz/ready' % os.environ.get('REMORA_HEALTH_PORT', '15021'), timeout=2)"]
ENTRYPOINT ["remora"]
CMD ["--help"]
