# Two commands for a new user: `make demo` and `make test` (`make bench` for the figures).
# Everything they need is installed here, system packages included, so a fresh Debian machine
# with Python 3.11 and git is enough.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# libasound2-dev: pyalsaaudio builds against ALSA's headers. gcc and pkg-config build it.
SYSTEM_PACKAGES := libasound2-dev gcc pkg-config
# The door's RTSP server: GStreamer's (through PyGObject, which builds against the first two).
SYSTEM_PACKAGES += libgirepository1.0-dev libcairo2-dev gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
# coturn: the TURN tests start a real turnserver on loopback.
# systemd: the unit file is checked with systemd-analyze verify and security.
# chromium: the web app is tested in a real browser (Debian's, driven by playwright).
# iproute2 and nftables: a fault test puts the door on a network namespace of its own and
# drops its link to the server with nftables.
# mosquitto: the Home Assistant tests start a real broker with passwords and an ACL.
# postgresql: the store's tests run on PostgreSQL as well as SQLite, on a cluster the tests make.
# redis-server and haproxy: the cluster tests run three servers on Redis behind HAProxy.
# kamailio and sip-tester (sipp): the SIP gateway is tested against a real registrar and scripted phones.
# ffmpeg and curl: the door's RTSP stream is pulled by ffmpeg and ffprobe, its snapshot by curl, as NVRs do.
TEST_SYSTEM_PACKAGES := coturn systemd chromium fonts-dejavu-core iproute2 nftables mosquitto postgresql \
	redis-server haproxy kamailio sip-tester ffmpeg curl
# node and npm run TypeScript's checker (pinned in tools/webapp-check) on the web app's JavaScript:
# Debian's nodejs and npm unless a node with its own npm (NodeSource's) is there already.
NODE_PACKAGES := nodejs npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo demo-auto test test-fast check bench system-packages clean

demo: $(VENV)/.installed
	$(BIN)/python -m intercom_sim.demo $(DEMO_ARGS)

# The unattended call of the first demo: a command-line resident answers by itself.
demo-auto: $(VENV)/.installed
	$(BIN)/python -m intercom_sim.demo --auto

test: check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier, for a developer between two edits: everything but the tests marked `slow`
# (a browser, a cluster, whole installations as processes, injected faults, the benchmarks).
# `make test` still runs everything, and is what CI runs.
test-fast: check
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The quality gate, first in `make test` and so in CI: the linter, the type checker (strict on
# the shared protocol, clean everywhere else; settings in pyproject.toml), the architecture
# (import-linter's contracts in pyproject.toml: no import circle, the server's layers; and
# tools/shape.py: the server's sizes and no reaching into another module's private names), and TypeScript's
# checker, strict, on the web app's JavaScript and its service worker (nothing is built).
WEBCHECK := tools/webapp-check
check: $(VENV)/.installed-test $(WEBCHECK)/node_modules/.installed
	$(BIN)/ruff check device tools tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tools/shape.py
	$(WEBCHECK)/node_modules/.bin/tsc -p $(WEBCHECK)/tsconfig.json
	$(WEBCHECK)/node_modules/.bin/tsc -p $(WEBCHECK)/tsconfig.worker.json

$(WEBCHECK)/node_modules/.installed: $(WEBCHECK)/package-lock.json $(VENV)/.installed-test
	cd $(WEBCHECK) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# What visitors and residents feel, and what it costs the board: about ten minutes on two
# cores; writes bench/results.json and bench/results.md. BENCH_ARGS=--quick for a dry run.
# It needs what the tests need (Chromium and Playwright): the app's start from a notification is
# measured in a real browser.
bench: $(VENV)/.installed-test
	$(BIN)/python -m intercom_bench.cli $(BENCH_ARGS)

system-packages: $(VENV)/.system-packages

$(VENV)/.system-packages:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.system-packages
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tools]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	@missing=""; \
	for p in $(TEST_SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing $(NODE_PACKAGES)"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages for the tests:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) demo-output .pytest_cache bench/work $(WEBCHECK)/node_modules
