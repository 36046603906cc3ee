#!/usr/bin/env bash
# The test command: runs every test layer in order on this machine, as root,
# after the idempotent set-up. A failing layer does not stop the others; the
# output ends with one summary line per layer and `N passed, M failed`
# (layers), and the exit status is 1 when any layer failed.
#
#   lint     cargo fmt --check, then cargo clippy -D warnings on every crate and target
#   core     cargo test of the pure crates (unit, property, integration)
#   bench    ic-proxy-bench --quick: every standalone-proxy scenario at tiny sizes (fails on lost data or a stall only)
#   pgrx     the #[pg_test]s of src/, in a throw-away server run as postgres
#   install  bash scripts/install.sh (debug): the extension the next layers test, each file
#            renamed into place (never rewritten in place under a running server)
#   benchpg  ic-proxy-bench --quick --only pg: the benchmark's smoke test through the worker in two PostgreSQL servers
#   cluster  pg_regress golden files and cluster tests (crates/ic_proxy_cluster_tests/)
#   survive  a server started with the library after the pgrx layer is still up, with
#            the same postmaster and worker, after every later layer (re)installed it
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

LAYERS=(lint core bench pgrx install benchpg cluster survive)
declare -A STATUS SECS COUNTS TP TF

PGBIN=/usr/lib/postgresql/15/bin

WORK="$(mktemp -d /tmp/ic_proxy_test.XXXXXX)"
cleanup() {
  # The survive layer's server, if this run started it and it is still up.
  if [ -f "$WORK/survive/data/postmaster.pid" ]; then
    runuser -u "$SERVER_USER" -- "$PGBIN/pg_ctl" -D "$WORK/survive/data" -m immediate -w stop >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
# The live library (pg_config is there once the set-up has run).
LIB="$("$PG_CONFIG" --pkglibdir)/cloudberry_ic_proxy.so"

# Servers run as the server user in temporary directories of their own; let
# that user also traverse the path to the repository (a clone under a
# root-only directory would otherwise hide any repository file a server or
# pg_regress is pointed at; the cluster tests copy the pg_regress inputs anyway).
dir="$REPO"
while [ "$dir" != / ]; do chmod o+rx "$dir"; dir="$(dirname "$dir")"; done

# 0. lint: formatting and clippy, the pgrx crate included (a clippy build
# shares nothing with the test builds, so it costs a few minutes once).
run_layer lint bash -c 'cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings'

# 1. core
# --no-fail-fast: a failing test binary does not hide the results of the next.
run_layer core cargo test --workspace --exclude cloudberry_ic_proxy --exclude ic_proxy_cluster_tests --no-fail-fast
run_layer bench bash -c 'cargo build -q -p ic_proxy_cli -p ic_proxy_bench && target/debug/ic-proxy-bench --quick --only throughput,small,latency,churn,cpu,memory,mesh,tls'

# 2. pgrx: a data directory the server user owns, removed afterwards.
PGRX_DATA="$WORK/pgrx-data"
mkdir -p "$PGRX_DATA"
chown "$SERVER_USER:" "$WORK" "$PGRX_DATA"
# `cargo pgrx test --runas` installs its test build with `sudo cp`, which
# writes the library in place: unlink the live one first, so that cp creates a
# new file and every running server keeps the inode it has mapped (writing into
# it kills their workers and postmasters with SIGBUS).
rm -f "$LIB"
run_layer pgrx cargo pgrx test pg15 --runas "$SERVER_USER" --pgdata "$PGRX_DATA"

# survive (started here, checked after the last layer): a throw-away server
# preloading the library the pgrx layer installed, with a running worker; the
# later layers install the library again and start and stop other servers.
SURV="$WORK/survive"
as_server() { runuser -u "$SERVER_USER" -- "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
surv_sql() { as_server "$PGBIN/psql" -X -q -At -h "$SURV" -p "$(cat "$SURV/port")" -d postgres -c "$1"; }
survive_start() {
  local port proxy_port deadline running=""
  [ -f "$LIB" ] || { echo "survive: no $LIB after the pgrx layer"; return 1; }
  mkdir -p "$SURV"
  chown "$SERVER_USER:" "$SURV"
  as_server "$PGBIN/initdb" -D "$SURV/data" -A trust -U postgres >/dev/null || return 1
  port=$(free_port) && proxy_port=$(free_port) || return 1
  echo "$port" > "$SURV/port"
  printf '%s\n' "port = $port" "listen_addresses = ''" "unix_socket_directories = '$SURV'" \
    "shared_preload_libraries = 'cloudberry_ic_proxy'" "ic_proxy.dbid = 1" \
    "ic_proxy.socket_dir = '$SURV'" "ic_proxy.addresses = '1:-1:127.0.0.1:$proxy_port'" \
    >> "$SURV/data/postgresql.conf"
  as_server "$PGBIN/pg_ctl" -D "$SURV/data" -l "$SURV/server.log" -w start >/dev/null || { cat "$SURV/server.log"; return 1; }
  surv_sql "CREATE EXTENSION cloudberry_ic_proxy" || return 1
  deadline=$((SECONDS + 30))
  until [ "$running" = t ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "survive: the worker did not come up (running = '$running')"
      cat "$SURV/server.log"
      return 1
    fi
    sleep 0.2
    running=$(surv_sql "SELECT running FROM ic_proxy_info()")
  done
  head -1 "$SURV/data/postmaster.pid" > "$SURV/postmaster.pid0"
  surv_sql "SELECT worker_pid FROM ic_proxy_info()" > "$SURV/worker.pid0"
  echo "survive: server on port $port (postmaster $(cat "$SURV/postmaster.pid0"), proxy worker $(cat "$SURV/worker.pid0"), proxy port $proxy_port) preloads inode $(stat -c %i "$LIB") of $LIB"
}
survive_check() {
  local ok=0 pid worker running
  cat "$WORK/survive-start.log"
  if [ ! -f "$SURV/postmaster.pid0" ]; then
    echo "survive: PROBLEM: no server was started after the pgrx layer (above)"
    return 1
  fi
  echo "survive: $LIB is now inode $(stat -c %i "$LIB" 2>&1)"
  pid=$(head -1 "$SURV/data/postmaster.pid" 2>/dev/null)
  if [ "$pid" = "$(cat "$SURV/postmaster.pid0")" ] && kill -0 "$pid" 2>/dev/null; then
    echo "survive: postmaster $pid still up"
  else
    echo "survive: PROBLEM: postmaster $(cat "$SURV/postmaster.pid0") is gone (postmaster.pid: '$pid')"
    ok=1
  fi
  as_server "$PGBIN/pg_ctl" -D "$SURV/data" status || { echo "survive: PROBLEM: pg_ctl status failed"; ok=1; }
  running=$(surv_sql "SELECT running FROM ic_proxy_info()" 2>&1)
  worker=$(surv_sql "SELECT worker_pid FROM ic_proxy_info()" 2>&1)
  if [ "$running" = t ] && [ "$worker" = "$(cat "$SURV/worker.pid0")" ]; then
    echo "survive: proxy worker $worker still running (ic_proxy_info().running = t)"
  else
    echo "survive: PROBLEM: ic_proxy_info() says running = '$running', worker_pid = '$worker' (was $(cat "$SURV/worker.pid0"))"
    ok=1
  fi
  if grep -E 'terminated by signal|was terminated|terminating any other active server processes' "$SURV/server.log"; then
    echo "survive: PROBLEM: the server log lines above show a crash"
    ok=1
  fi
  if [ -f "$SURV/data/postmaster.pid" ]; then
    as_server "$PGBIN/pg_ctl" -D "$SURV/data" -m fast -w stop >/dev/null || { echo "survive: PROBLEM: pg_ctl stop failed"; ok=1; }
  fi
  if [ $ok -ne 0 ]; then
    echo "---- the last 30 lines of its server log"
    tail -n 30 "$SURV/server.log"
  fi
  return $ok
}
survive_start > "$WORK/survive-start.log" 2>&1
cat "$WORK/survive-start.log"

# 3. install: replaces the #[pg_test] build of layer 2 with the real extension,
# each file renamed into place (see scripts/install.sh).
run_layer install bash scripts/install.sh --pg-config "$PG_CONFIG"
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

# 6. survive: the server started after the pgrx layer outlived every later one.
run_layer survive survive_check

summary
