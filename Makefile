# Postern: build, run the demo, test, benchmark.
#   make run    build and start the gateway on conf/postern.yaml with three demo upstreams
#   make test   the whole test suite (unit + end to end)
#   make bench  criterion micro-benchmarks; make load-test: loopback load test vs bare Pingora and nginx
#   make deb    a Debian package (target/debian/postern_*.deb); make deb-check builds and inspects it
SHELL := /bin/bash
CARGO ?= cargo
RUN_DIR ?= /tmp/postern
# Where cargo builds: CARGO_TARGET_DIR when set, as cargo itself does.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
export TARGET_DIR
export POSTERN_RUN_DIR := $(RUN_DIR)

# System packages needed to build (cmake for Pingora's zlib-ng) and to test.
BUILD_PKGS := cmake pkg-config build-essential
# promtool (package prometheus) checks the alert rules and the metrics output in the tests;
# redis-server backs the cluster-wide rate-limit tests (each test starts its own on a free port);
# systemd brings systemd-analyze, which checks the unit file.
TEST_PKGS := prometheus redis-server systemd
LOAD_PKGS := wrk nginx-light haproxy nghttp2-client valgrind python3
# The scenarios `make load-test` runs (load-tests/scenarios/*.yaml.tmpl; all: every one).
LOAD_SCENARIOS ?= plain jwt ratelimit cache observed transform aggregate

.PHONY: run stop test deps bench load-test check lint demo-stop-b demo-start-b deb deb-check python-deps static

# Installs what is missing with apt-get when root; prints the command otherwise.
define ensure_pkgs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing packages:$$missing"; echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

deps:
	$(call ensure_pkgs,$(BUILD_PKGS))

run: deps stop
	$(CARGO) build --release --bin postern --example echo
	@mkdir -p $(RUN_DIR)
	@for spec in "9001 users-a a" "9002 users-b b" "9003 orders c"; do set -- $$spec; \
	  $(TARGET_DIR)/release/examples/echo 127.0.0.1:$$1 $$2 >$(RUN_DIR)/echo-$$3.log 2>&1 & echo $$! > $(RUN_DIR)/echo-$$3.pid; done
	@echo "demo upstreams: users-a :9001, users-b :9002, orders :9003 (logs in $(RUN_DIR))"
	@echo "gateway: http://127.0.0.1:8080   admin: http://127.0.0.1:9901/upstreams   (Ctrl-C stops all)"
	@trap '$(MAKE) -s stop' EXIT INT TERM; $(TARGET_DIR)/release/postern run -c conf/postern.yaml

stop:
	@for f in $(RUN_DIR)/echo-*.pid; do [ -f "$$f" ] && kill $$(cat $$f) 2>/dev/null; rm -f "$$f"; done; true

# Stop / restart the second users upstream to watch health ejection and recovery.
demo-stop-b:
	@kill $$(cat $(RUN_DIR)/echo-b.pid) && rm -f $(RUN_DIR)/echo-b.pid && echo "users-b stopped"
demo-start-b:
	@$(TARGET_DIR)/release/examples/echo 127.0.0.1:9002 users-b >$(RUN_DIR)/echo-b.log 2>&1 & echo $$! > $(RUN_DIR)/echo-b.pid; echo "users-b started"

# kubernetes-validate (PyPI) checks deploy/kubernetes/ against the Kubernetes schemas in a test;
# it lives in a virtual environment under the target directory.
K8S_VALIDATE := $(TARGET_DIR)/tools/k8s-venv/bin/kubernetes-validate
$(K8S_VALIDATE):
	@python3 -c 'import venv, ensurepip' 2>/dev/null || $(MAKE) -s python-deps
	python3 -m venv $(TARGET_DIR)/tools/k8s-venv
	$(TARGET_DIR)/tools/k8s-venv/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

python-deps:
	$(call ensure_pkgs,python3 python3-venv)

# Benches and examples are compiled (so they cannot rot) but not run; the end-to-end suite runs last.
test: deps $(K8S_VALIDATE)
	$(call ensure_pkgs,$(TEST_PKGS))
	$(CARGO) build --benches --examples
	$(CARGO) test --lib --test e2e

check:
	$(CARGO) run --quiet --bin postern -- check -c conf/postern.yaml

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: deps
	$(CARGO) bench --bench routing --bench ratelimit --bench jwt --bench cache --bench transform --bench aggregate

# One report for the scenarios (load-tests/results/<time>-report/report.md); QUICK=1 for a smoke
# run, ROUNDS=, DURATION=, PHASES=tput|rate|cg and TARGETS= as load-tests/harness/README.md says.
load-test: deps
	$(call ensure_pkgs,$(LOAD_PKGS))
	SCENARIOS="$(LOAD_SCENARIOS)" load-tests/run.sh

# The Debian package, from the dist profile (fat LTO, stripped by cargo-deb). Completions and the
# man page come from the binary's CLI definition; cargo-deb reads them from the profile's target
# directory (its `target/release/` asset prefix stands for that directory).
DEB_PKGS := dpkg-dev logrotate systemd
deb: deps
	$(call ensure_pkgs,$(DEB_PKGS))
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked --version ^3.8
	$(CARGO) build --profile dist --bin postern
	@mkdir -p $(TARGET_DIR)/dist/share
	$(TARGET_DIR)/dist/postern completions bash > $(TARGET_DIR)/dist/share/postern.bash
	$(TARGET_DIR)/dist/postern completions zsh > $(TARGET_DIR)/dist/share/_postern
	$(TARGET_DIR)/dist/postern completions fish > $(TARGET_DIR)/dist/share/postern.fish
	$(TARGET_DIR)/dist/postern man | gzip -9n > $(TARGET_DIR)/dist/share/postern.1.gz
	$(CARGO) deb --profile dist --no-build

# Builds the package and checks what it installs (packaging/check-deb.sh): contents, conffiles,
# maintainer scripts, and the installed binary checking the installed configuration.
deb-check: deb
	packaging/check-deb.sh

# A fully static binary (musl, static-pie; jemalloc stays the allocator, so musl's malloc is
# not on the request path): $(TARGET_DIR)/x86_64-unknown-linux-musl/dist/postern.
MUSL_TARGET := x86_64-unknown-linux-musl
static: deps
	$(call ensure_pkgs,musl-tools)
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --profile dist --target $(MUSL_TARGET) --bin postern
	@echo "static binary: $(TARGET_DIR)/$(MUSL_TARGET)/dist/postern"
