#!/usr/bin/env bash
# The test command: runs every test layer in order on this machine, as root,
# after the idempotent set-up. A failing layer does not stop the others; the
# output ends with one summary line per layer and `N passed, M failed`
# (layers), and the exit status is 1 when any layer failed.
#
#   core     cargo test of the pure crates (unit, property, integration)
#   bench    ic-proxy-bench --quick: every standalone-proxy scenario at tiny sizes (fails on lost data or a stall only)
#   pgrx     the #[pg_test]s of src/, in a throw-away server run as postgres
#   install  cargo pgrx install (debug): the extension the next layers test
#   benchpg  ic-proxy-bench --quick --only pg: the benchmark's smoke test through the worker in two PostgreSQL servers
#   cluster  pg_regress golden files and cluster tests (pg_test/)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="$HOME/.cargo/bin:$PATH"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
SERVER_USER=postgres

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: run as root (the set-up installs packages; servers run as $SERVER_USER)" >&2
  exit 1
fi

LAYERS=(core bench pgrx install benchpg cluster)
declare -A STATUS SECS COUNTS TP TF

WORK="$(mktemp -d /tmp/ic_proxy_test.XXXXXX)"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

summary() {
  local passed=0 failed=0 tests_passed=0 tests_failed=0 layer
  echo
  echo "==== summary ===="
  for layer in "${LAYERS[@]}"; do
    printf '%-8s %-4s %5ss  %s\n' "$layer" "${STATUS[$layer]}" "${SECS[$layer]:--}" "${COUNTS[$layer]:-}"
    if [ "${STATUS[$layer]}" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    tests_passed=$((tests_passed + ${TP[$layer]:-0}))
    tests_failed=$((tests_failed + ${TF[$layer]:-0}))
  done
  # A failed layer that ran no test (a build error) still counts as a failure.
  for layer in "${LAYERS[@]}"; do
    if [ "${STATUS[$layer]}" != PASS ] && [ "${TF[$layer]:-0}" -eq 0 ]; then tests_failed=$((tests_failed + 1)); fi
  done
  # The output of a long run is often cut to its end: repeat here why each
  # failed layer failed, so the last screen tells the whole story.
  for layer in "${LAYERS[@]}"; do
    [ "${STATUS[$layer]}" = PASS ] && continue
    [ -f "$WORK/$layer.log" ] || continue
    echo
    echo "---- $layer failed; its telling lines, then its last 15 ----"
    grep -E 'PROBLEM|panicked|^test .* FAILED|^failures:|^error(\[|:)|problem\(s\)|^[-+] ' "$WORK/$layer.log" | head -60
    echo "...."
    tail -n 15 "$WORK/$layer.log"
  done
  echo
  echo "layers: $passed passed, $failed failed"
  echo "$tests_passed passed, $tests_failed failed"
  [ "$failed" -eq 0 ]
}

# Sums cargo's "test result:" lines of a layer's log.
count_tests() {
  awk '/^test result:/ {
         for (i = 1; i <= NF; i++) {
           if ($(i) ~ /^passed;?$/)  p += $(i-1)
           if ($(i) ~ /^failed;?$/)  f += $(i-1)
           if ($(i) ~ /^ignored;?$/) g += $(i-1)
         }
       }
       END { printf "%d tests passed, %d failed, %d ignored", p, f, g }' "$1"
}

# run_layer NAME COMMAND...: runs the command with a header line, output
# shown and kept for the count, and records status and time.
run_layer() {
  local name="$1"; shift
  local log="$WORK/$name.log" start rc
  echo
  echo "==== layer $name: $* ===="
  start=$SECONDS
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  SECS[$name]=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then STATUS[$name]=PASS; else STATUS[$name]=FAIL; fi
  if grep -q '^test result:' "$log"; then
    COUNTS[$name]="$(count_tests "$log")"
    TP[$name]=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed;?$/) p += $(i-1) } END { print p + 0 }' "$log")
    TF[$name]=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^failed;?$/) f += $(i-1) } END { print f + 0 }' "$log")
  fi
  [ "$rc" -eq 0 ] || COUNTS[$name]="${COUNTS[$name]:-} (exit $rc)"
}

skip_layer() {
  STATUS[$1]=FAIL
  COUNTS[$1]="not run: $2"
  echo
  echo "==== layer $1: not run: $2 ===="
}

echo "==== set-up: bash scripts/setup.sh ===="
if ! bash scripts/setup.sh; then
  for layer in "${LAYERS[@]}"; do STATUS[$layer]=FAIL; COUNTS[$layer]="not run: set-up failed"; done
  summary
  exit 1
fi

# Servers run as the server user in temporary directories of their own; let
# that user also traverse the path to the repository (a clone under a
# root-only directory would otherwise hide any repository file a server or
# pg_regress is pointed at; pg_test copies the pg_regress inputs anyway).
dir="$REPO"
while [ "$dir" != / ]; do chmod o+rx "$dir"; dir="$(dirname "$dir")"; done

# 1. core
# --no-fail-fast: a failing test binary does not hide the results of the next.
run_layer core cargo test --workspace --exclude cloudberry_ic_proxy --exclude ic_proxy_cluster_tests --no-fail-fast
run_layer bench bash -c 'cargo build -q -p ic_proxy_cli -p ic_proxy_bench && target/debug/ic-proxy-bench --quick --only throughput,small,latency,churn,cpu,memory,mesh'

# 2. pgrx: a data directory the server user owns, removed afterwards.
PGRX_DATA="$WORK/pgrx-data"
mkdir -p "$PGRX_DATA"
chown "$SERVER_USER:" "$WORK" "$PGRX_DATA"
run_layer pgrx cargo pgrx test pg15 --runas "$SERVER_USER" --pgdata "$PGRX_DATA"

# 3. install: overwrites the pg_test build of layer 2 with the real extension.
run_layer install cargo pgrx install --pg-config "$PG_CONFIG"
[ "${STATUS[install]}" = PASS ] && COUNTS[install]="cloudberry_ic_proxy.so in $("$PG_CONFIG" --pkglibdir)"

# 4. benchpg: the bench's scenario pg at tiny sizes, through the workers of
# two servers preloading the extension just installed.
if [ "${STATUS[install]}" = PASS ]; then
  # (target/debug/ic-proxy-bench was built by the bench layer.)
  run_layer benchpg target/debug/ic-proxy-bench --quick --only pg --pg-lib "$("$PG_CONFIG" --pkglibdir)/cloudberry_ic_proxy.so"
else
  skip_layer benchpg "the install layer failed, so there is no extension to measure"
fi

# 5. cluster: servers run as the server user with the installed extension.
if [ "${STATUS[install]}" = PASS ]; then
  run_layer cluster cargo test -p ic_proxy_cluster_tests --no-fail-fast -- --test-threads=1
else
  skip_layer cluster "the install layer failed, so there is no extension to test"
fi

summary
