# The two commands of the README: `make demo` and `make test`. Everything else is setup they
# pull in, so a fresh machine needs nothing installed by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml sdk/python/pyproject.toml | cksum | cut -d' ' -f1)
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: demo test lint setup debian node binaries bench clean

setup: $(STAMP)

# containerd, runc, CNI plugins, podman, debootstrap...: only those missing (needs root or sudo).
debian:
	hack/install-debian-packages

# The gateway's Python SDK (sdk/python, no dependencies) too: the gateway tests drive it in-process.
$(STAMP): pyproject.toml sdk/python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' -e sdk/python
	touch $@

node: $(NODE_STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# kube-apiserver, kube-controller-manager, kubectl, etcd and helm, and the node's kubelet,
# kube-scheduler, kube-proxy and CoreDNS, built from the Go module proxy once per version into
# ~/.cache/oshu-vault (override with OSHU_CACHE_DIR). The node's Debian packages: hack/install-debian-packages.
binaries: setup debian
	$(PY) -m oshu_localkube build

# Habits, checked before any test runs (configured in pyproject.toml; .pre-commit-config.yaml runs
# the same on commit): ruff lint and format, mypy, the import contracts (import-linter).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Coverage includes the sidecar and operator subprocesses; the floors per package are in
# pyproject.toml ([tool.oshu.coverage-floor]).
test: setup node binaries lint
	rm -f .coverage .coverage.*
	$(PY) -m pytest --cov --cov-report=term:skip-covered
	$(PY) -m oshu_testkit.coverage_floor

demo: setup binaries
	$(PY) hack/demo.py

bench: setup
	bench/run

clean:
	rm -rf $(VENV) tests/node/node_modules
