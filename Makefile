# Each target sets up .venv by itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean compose-check test-docker
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

# Validates deploy/docker-compose.yml without pulling anything: `docker compose config`
# when the Compose plugin is there, and always the Python check (schema + structure).
compose-check: $(STAMP)
	@if docker compose version >/dev/null 2>&1; then \
	  docker compose -f deploy/docker-compose.yml config -q && echo "docker compose config: valid"; \
	else echo "docker compose plugin not found: Python check only"; fi
	$(PY) -m tests.compose_check deploy/docker-compose.yml

# Builds the image on a locally made Debian base and runs the sidecar in it (slow; needs
# dockerd, started here as root if Debian's docker.io is installed; skips otherwise).
test-docker: $(STAMP)
	$(PY) -m pytest -q -rs tests/docker

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
