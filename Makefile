# Postern: build, run the demo, test, benchmark.
#   make run    build and start the gateway on conf/postern.yaml with three demo upstreams
#   make test   the whole test suite (unit + end to end)
#   make bench  criterion micro-benchmarks; make load-test: loopback load test vs bare Pingora and nginx
SHELL := /bin/bash
CARGO ?= cargo
RUN_DIR ?= /tmp/postern
export POSTERN_RUN_DIR := $(RUN_DIR)

# System packages needed to build (cmake for Pingora's zlib-ng) and to test.
BUILD_PKGS := cmake pkg-config build-essential
# promtool (package prometheus) checks the alert rules and the metrics output in the tests;
# redis-server backs the cluster-wide rate-limit tests (each test starts its own on a free port);
# systemd brings systemd-analyze, which checks the unit file.
TEST_PKGS := prometheus redis-server systemd
LOAD_PKGS := wrk nginx-light

.PHONY: run stop test deps bench load-test check lint demo-stop-b demo-start-b

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
	  ./target/release/examples/echo 127.0.0.1:$$1 $$2 >$(RUN_DIR)/echo-$$3.log 2>&1 & echo $$! > $(RUN_DIR)/echo-$$3.pid; done
	@echo "demo upstreams: users-a :9001, users-b :9002, orders :9003 (logs in $(RUN_DIR))"
	@echo "gateway: http://127.0.0.1:8080   admin: http://127.0.0.1:9901/upstreams   (Ctrl-C stops all)"
	@trap '$(MAKE) -s stop' EXIT INT TERM; ./target/release/postern run -c conf/postern.yaml

stop:
	@for f in $(RUN_DIR)/echo-*.pid; do [ -f "$$f" ] && kill $$(cat $$f) 2>/dev/null; rm -f "$$f"; done; true

# Stop / restart the second users upstream to watch health ejection and recovery.
demo-stop-b:
	@kill $$(cat $(RUN_DIR)/echo-b.pid) && rm -f $(RUN_DIR)/echo-b.pid && echo "users-b stopped"
demo-start-b:
	@./target/release/examples/echo 127.0.0.1:9002 users-b >$(RUN_DIR)/echo-b.log 2>&1 & echo $$! > $(RUN_DIR)/echo-b.pid; echo "users-b started"

# Benches and examples are compiled (so they cannot rot) but not run; the end-to-end suite runs last.
test: deps
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

load-test: deps
	$(call ensure_pkgs,$(LOAD_PKGS))
	load-tests/run.sh
