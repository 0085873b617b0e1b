#!/usr/bin/env bash
# Where a scenario's instructions go: Postern under callgrind, behind the harness's nginx origin
# (the same 4 KiB /json document), REQUESTS keep-alive requests from wrk, then the instructions
# per request and the functions that take them (callgrind_annotate, inclusive and self).
#
#   SCENARIO=transform load-tests/profile.sh            # /json through the transform scenario
#   SCENARIO=plain URL_PATH=/small REQUESTS=20000 load-tests/profile.sh
#   POSTERN_BIN=target/dist/postern load-tests/profile.sh   # default: target/release/postern
# The release profile keeps line tables (debug = 1), so functions are named and not all inlined
# away as in the dist build (fat LTO); compare totals with PHASES=cg runs of load-tests/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-plain}
REQUESTS=${REQUESTS:-5000}
URL_PATH=${URL_PATH:-/json}
TOP=${TOP:-40}
TARGET_ROOT=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${POSTERN_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --bin postern
  BIN=$TARGET_ROOT/release/postern
fi
for p in nginx valgrind callgrind_annotate wrk python3; do
  command -v $p >/dev/null || { echo "missing $p (make load-test installs them)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/postern-profile.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; echo "files: $work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); GW=$(free_port)

# The origin, as the harness runs it.
source load-tests/harness/lib.sh
mkdir -p "$work/www" "$work/origin.tmp"
gen_json "$work/www/4k.json"
sed -e "s#@RUN_DIR@#$work#g" -e "s#@NAME@#origin#g" -e "s#@LISTEN_PORT@#$UP#g" \
    -e "s#@DOC_ROOT@#$work/www#g" load-tests/harness/conf/upstream.nginx.conf.tmpl > "$work/origin.conf"
nginx -c "$work/origin.conf" -p "$work" >"$work/origin.out" 2>&1 &
pids+=($!)

# The scenario's configuration with this run's ports (and pid/socket files in $work).
sed -e "s#@LISTEN_PORT@#$GW#g" -e "s#@UP_PORT@#$UP#g" -e "s#/tmp/postern-bench#$work/postern#g" \
    "load-tests/scenarios/$SCENARIO.yaml.tmpl" > "$work/postern.yaml"
grep -q '@' "$work/postern.yaml" && { echo "scenario $SCENARIO needs placeholders this script does not fill" >&2; exit 1; }
RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$BIN" run -c "$work/postern.yaml" >"$work/postern.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  curl -fs -o /dev/null "http://127.0.0.1:$GW$URL_PATH" && break
  sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$GW$URL_PATH" || { cat "$work/postern.out" >&2; exit 1; }
# Warm up, zero the counters, measure REQUESTS requests on 4 connections.
wrk -t1 -c4 -d2s "http://127.0.0.1:$GW$URL_PATH" >/dev/null
callgrind_control -z "${pids[1]}" >/dev/null
cat > "$work/count.lua" <<LUA
local n = 0
request = function() n = n + 1; if n > $REQUESTS then wrk.thread:stop() end; return wrk.format() end
LUA
wrk -t1 -c4 -d120s -s "$work/count.lua" "http://127.0.0.1:$GW$URL_PATH" > "$work/wrk.txt"
done_requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
callgrind_control -d "${pids[1]}" >/dev/null
out=$(ls -t "$work"/callgrind.out* | head -1)
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "scenario=$SCENARIO path=$URL_PATH requests=$done_requests instructions/request=$((total / done_requests))"
echo
echo "== inclusive (top $TOP) =="
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | grep -E '^ *[0-9,]+ ' | head -n "$TOP" || true
echo
echo "== self (top $TOP) =="
callgrind_annotate "$out" 2>/dev/null | grep -E '^ *[0-9,]+ ' | head -n "$TOP" || true
