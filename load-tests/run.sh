#!/usr/bin/env bash
# Loopback load test: Postern beside a bare Pingora proxy and nginx, measured in the same run by
# the harness in load-tests/harness (wrk closed loop, h2load fixed rate, callgrind instructions
# per request). Everything targets 127.0.0.1 and every run is bounded.
#
#   load-tests/run.sh                          # the plain scenario; QUICK=1 for a 1-round smoke run
#   SCENARIO=jwt ROUNDS=3 load-tests/run.sh    # one scenario (load-tests/scenarios/*.yaml.tmpl)
#   SCENARIOS="plain jwt cache" load-tests/run.sh   # several, one report (SCENARIOS=all: every one)
#   POSTERN_BIN=/tmp/postern-old SCENARIO=plain PHASES=cg load-tests/run.sh   # another build
# Builds (Postern's dist profile, the bare Pingora anchor) go under $CARGO_TARGET_DIR or target/.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-$PWD/load-tests/harness}
TARGET_ROOT=${CARGO_TARGET_DIR:-$PWD/target}
export BENCH_WORK=${BENCH_WORK:-$TARGET_ROOT/load-tests}

# Several scenarios: one run each (this script again), then one report with every summary.
if [ -n "${SCENARIOS:-}" ]; then
  [ "$SCENARIOS" = all ] && SCENARIOS=$(ls load-tests/scenarios | sed -n 's/\.yaml\.tmpl$//p' | tr '\n' ' ')
  STAMP=$(date -u +%Y%m%dT%H%M%SZ)
  OUT=$PWD/load-tests/results/$STAMP-report
  mkdir -p "$OUT"
  if [ -z "${POSTERN_BIN:-}" ]; then
    cargo build --profile dist --bin postern
    export POSTERN_BIN="$TARGET_ROOT/dist/postern"
  fi
  {
    echo "# Load test report $STAMP"
    echo
    echo "Scenarios: $SCENARIOS. Each section is one harness run (targets side by side: req/s,"
    echo "p50/p99, CPU per request, instructions per request); \`direct\` is the origin alone."
  } > "$OUT/report.md"
  for s in $SCENARIOS; do
    SCENARIOS= SCENARIO=$s RESULTS_DIR="$OUT/$s" "$0"
    { echo; echo "## Scenario \`$s\`"; echo; sed 's/^#/##/' "$OUT/$s/summary.md"; } >> "$OUT/report.md"
  done
  echo "report: $OUT/report.md"
  exit 0
fi
SCENARIO=${SCENARIO:-plain}
if [ ! -x "$BENCH/compare.sh" ]; then
  echo "bench harness not found at $BENCH (set BENCH=...)" >&2
  exit 1
fi
for p in wrk nginx h2load valgrind haproxy; do
  command -v $p >/dev/null || { echo "missing $p: apt-get install -y wrk nginx-light nghttp2-client valgrind haproxy" >&2; exit 1; }
done
# POSTERN_BIN=/path/to/postern measures a given build (e.g. an earlier commit's) instead.
if [ -z "${POSTERN_BIN:-}" ]; then
  cargo build --profile dist --bin postern
  POSTERN_BIN="$TARGET_ROOT/dist/postern"
fi
export GATEWAY_CMD="$POSTERN_BIN run -c @CONFIG@"
export GATEWAY_NAME="postern-$SCENARIO"
export GATEWAY_CONFIG_TEMPLATE="$PWD/load-tests/scenarios/$SCENARIO.yaml.tmpl"
# The JWT scenario authenticates every request with one HS256 token (exp in 2100).
if [ "$SCENARIO" = jwt ]; then
  TOKEN=$(python3 - <<'PY'
import base64, hmac, hashlib, json
b = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=")
msg = b({"alg": "HS256", "typ": "JWT"}) + b"." + b({"sub": "bench", "aud": "bench", "exp": 4102444800})
sig = base64.urlsafe_b64encode(hmac.new(b"load-test-secret-of-at-least-32-bytes", msg, hashlib.sha256).digest()).rstrip(b"=")
print((msg + b"." + sig).decode())
PY
)
  export EXTRA_HEADER="Authorization: Bearer $TOKEN"
fi
# Scenarios that use Redis get their own redis-server on a free loopback port.
if grep -q "@REDIS_PORT@" "$GATEWAY_CONFIG_TEMPLATE"; then
  command -v redis-server >/dev/null || { echo "missing redis-server: apt-get install -y redis-server" >&2; exit 1; }
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  REDIS_PID=$!
  trap 'kill $REDIS_PID 2>/dev/null' EXIT
  TMPL=$(mktemp /tmp/postern-scenario.XXXXXX.yaml.tmpl)
  sed "s/@REDIS_PORT@/$REDIS_PORT/" "$GATEWAY_CONFIG_TEMPLATE" > "$TMPL"
  export GATEWAY_CONFIG_TEMPLATE="$TMPL"
fi
export TARGETS=${TARGETS:-"direct nginx pingora"}
export RESULTS_DIR=${RESULTS_DIR:-$PWD/load-tests/results/$(date -u +%Y%m%dT%H%M%SZ)-$SCENARIO}
# ANCHOR=features: the bare Pingora anchors (pingora, pingora-jemalloc) are built with the Pingora
# features Postern is pinned to (read from Cargo.toml: proxy, lb, cache, rustls) instead of the
# harness's `proxy` alone. Those features alone make the same bare proxy about 7% more
# instructions per request (rustls' connector grows every request's state past 13 KB), so this is
# the like-for-like anchor; ANCHOR=stock (default) keeps the harness's.
ANCHOR=${ANCHOR:-stock}
if [ "$ANCHOR" = features ]; then
  FEATURES=$(sed -n 's/^pingora = {.*features = \(\[[^]]*\]\).*/\1/p' Cargo.toml)
  [ -n "$FEATURES" ] || { echo "no pingora features found in Cargo.toml" >&2; exit 1; }
  SRC=$BENCH_WORK/pingora-min-features
  mkdir -p "$SRC/src"
  cp "$BENCH/pingora-min/src/main.rs" "$SRC/src/main.rs"
  sed "s/^pingora = .*/pingora = { version = \"=0.9.1\", default-features = false, features = $FEATURES }/" \
    "$BENCH/pingora-min/Cargo.toml" > "$SRC/Cargo.toml.new"
  cmp -s "$SRC/Cargo.toml.new" "$SRC/Cargo.toml" || mv "$SRC/Cargo.toml.new" "$SRC/Cargo.toml"
  (cd "$SRC" && cargo build --release --quiet \
    && cargo build --release --quiet --features jemalloc --target-dir target-jemalloc)
  export PINGORA_MIN_BIN=$SRC/target/release/pingora-min
  export PINGORA_JEMALLOC_BIN=$SRC/target-jemalloc/release/pingora-min
fi
export RUST_LOG=${RUST_LOG:-error}
"$BENCH/compare.sh"
if [ "$ANCHOR" = features ]; then
  printf '\nAnchor: pingora and pingora-jemalloc are pingora-min built with Pingora features %s (ANCHOR=features).\n' \
    "$FEATURES" >> "$RESULTS_DIR/summary.md"
fi
echo "results: $RESULTS_DIR/summary.md"
