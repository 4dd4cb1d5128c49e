# Each target sets up .venv by itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench bench-release clean compose-check base-image test-docker
.DEFAULT_GOAL := install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# `make` alone: the venv, and how to reach the `remora` command in it (make cannot change
# the caller's PATH, so it says what to run).
install: $(STAMP)
	@echo "remora is installed in $(abspath $(VENV))/bin; put it on your PATH with:"
	@echo "  export PATH=\"$(abspath $(VENV))/bin:\$$PATH\"    # or: . $(VENV)/bin/activate"

demo: $(STAMP)
	$(PY) -m examples.demo

test: $(STAMP)
	$(PY) -m pytest -q

# Validates deploy/docker-compose.yml with the real Compose (`config` needs no daemon and
# pulls nothing): Debian's docker-compose (v1) and the `docker compose` plugin (v2), each
# where installed, at least one required; then the structural checks of tests/compose_check.py.
compose-check: $(STAMP)
	@found=0; \
	if command -v docker-compose >/dev/null 2>&1; then found=1; \
	  docker-compose -f deploy/docker-compose.yml --profile monitoring config -q || exit 1; \
	  echo "docker-compose $$(docker-compose version --short): valid"; fi; \
	if docker compose version >/dev/null 2>&1; then found=1; \
	  docker compose -f deploy/docker-compose.yml --profile monitoring config -q || exit 1; \
	  echo "docker compose $$(docker compose version --short): valid"; fi; \
	if [ $$found = 0 ]; then echo "no Compose installed: apt-get install docker-compose" >&2; exit 1; fi
	$(PY) -m tests.compose_check deploy/docker-compose.yml

# The compose mesh's default base image, remora-base:bookworm: Debian made with debootstrap
# from the machine's apt mirror (no image registry), imported into the local Docker.
base-image: $(STAMP)
	$(PY) -m tests.docker.base_image --tag remora-base:bookworm

# Builds the image on a locally made Debian base and runs the sidecar in it (slow; needs
# dockerd, started here as root if Debian's docker.io is installed; skips otherwise).
test-docker: $(STAMP)
	$(PY) -m pytest -q -rs tests/docker

# BENCH_ARGS passes scenarios and flags on: make bench BENCH_ARGS="h2-1hop --runs 2"
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks $(BENCH_ARGS)

# The same, with Remora's sidecars on a release build of CPython (PGO + LTO, as the image's
# python is), in .venv-release: a default `./configure` build (pyenv's) runs them markedly
# slower. RELEASE_PYTHON must be such a build; Debian 12's /usr/bin/python3 is one.
# See docs/benchmarks.md, "The interpreter's build".
RELEASE_PYTHON ?= /usr/bin/python3
bench-release: $(STAMP)
	test -x .venv-release/bin/python || $(RELEASE_PYTHON) -m venv .venv-release
	.venv-release/bin/python -m pip install -q -e '.[bench]'
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks --python .venv-release/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-release .pytest_cache build *.egg-info
