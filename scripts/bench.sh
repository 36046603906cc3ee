#!/usr/bin/env bash
# The benchmark suite of issue 6, from a fresh clone: builds the release
# binaries, runs ic-proxy-bench (real ic-proxy processes on loopback, every
# figure beside a direct TCP baseline measured in the same run) and writes
# bench-results.json at the top of the repository. See BENCHMARKS.md.
# The full suite and --pg also package the release extension (cargo pgrx
# package) for scenario pg: the proxy as the background worker inside two
# PostgreSQL 15 servers, run as the user postgres.
#
#   bash scripts/bench.sh                 # the full suite, scenario pg included (about 15 minutes)
#   bash scripts/bench.sh --quick         # the smoke test (well under a minute)
#   bash scripts/bench.sh --pg            # only scenario pg, with the release extension
#   bash scripts/bench.sh --pg --quick    # the same at tiny sizes
#   bash scripts/bench.sh --profile       # perf profile of both proxies under 8 KB, 16 connections
#   bash scripts/bench.sh -- ARGS...      # anything else for ic-proxy-bench (see --help);
#                                         # with --pg-lib PATH no extension is built
#
# Results depend on whether the machine is quiet: check `uptime` first.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
OUT=${IC_PROXY_BENCH_JSON:-bench-results.json}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}

mode=full
pg=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --profile) mode=profile ;;
    --pg) pg=1 ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done
if [ "$pg" = 1 ] && [ "$mode" = profile ]; then
  echo "bench.sh: --pg and --profile do not go together" >&2
  exit 2
fi
# Scenario pg alone does not overwrite the full suite's results.
[ "$pg" = 1 ] && OUT=${IC_PROXY_BENCH_JSON:-bench-results-pg.json}

echo "== building (release): ic-proxy and ic-proxy-bench"
cargo build --release -q -p ic_proxy_cli -p ic_proxy_bench
BENCH=target/release/ic-proxy-bench

# The release extension for scenario pg, unless a library was given.
given_lib=0
for a in "${args[@]}"; do
  case "$a" in --pg-lib|--pg-lib=*) given_lib=1 ;; esac
done
if { [ "$pg" = 1 ] || [ "$mode" = full ]; } && [ "$given_lib" = 0 ]; then
  echo "== building (release): the extension, cargo pgrx package"
  if cargo pgrx package --pg-config "$PG_CONFIG"; then
    LIB="$PWD/target/release/cloudberry_ic_proxy-pg15$("$PG_CONFIG" --pkglibdir)/cloudberry_ic_proxy.so"
    # The servers run as postgres: it must read the library and traverse
    # every directory above it.
    chmod o+r "$LIB"
    dir="$(dirname "$LIB")"
    while [ "$dir" != / ]; do chmod o+rx "$dir"; dir="$(dirname "$dir")"; done
    args+=(--pg-lib "$LIB")
  elif [ "$pg" = 1 ]; then
    echo "bench.sh: cargo pgrx package failed: no extension to measure" >&2
    exit 1
  else
    echo "== cargo pgrx package failed: scenario pg uses the installed extension if there is one, else it is skipped" >&2
  fi
fi
[ "$pg" = 1 ] && args+=(--only pg)

echo "== machine: $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"

case "$mode" in
  quick)
    exec "$BENCH" --quick "${args[@]}"
    ;;
  full)
    exec "$BENCH" --json "$OUT" "${args[@]}"
    ;;
  profile)
    if ! command -v perf >/dev/null; then
      echo "perf is not installed (Debian: apt-get install linux-perf)" >&2
      exit 1
    fi
    SECS=${IC_PROXY_PROFILE_SECS:-10}
    DIR=${IC_PROXY_PROFILE_DIR:-target/profile}
    mkdir -p "$DIR"
    rm -f "$DIR/pids"
    "$BENCH" --profile-load "$((SECS + 2))" --profile-conns 16 --pids-file "$DIR/pids" "${args[@]}" &
    bench_pid=$!
    for _ in $(seq 1 300); do [ -s "$DIR/pids" ] && break; sleep 0.1; done
    read -r sender receiver < "$DIR/pids"
    # cpu-clock: hardware counters are often absent on VMs. DWARF call graphs:
    # release builds keep line tables (debug = 1) but no frame pointers.
    perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$sender" -o "$DIR/sender.data" -- sleep "$SECS" &
    perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$receiver" -o "$DIR/receiver.data" -- sleep "$SECS" &
    wait %2 %3
    wait "$bench_pid"
    # (head closes the pipe early: the reports are best effort, not errors.)
    set +o pipefail
    for side in sender receiver; do
      echo "== $side proxy: by shared object"
      perf report -i "$DIR/$side.data" --no-children -g none --sort dso --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -5
      echo "== $side proxy: top functions by self time"
      perf report -i "$DIR/$side.data" --no-children -g none --sort symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -20 | tee "$DIR/$side.top.txt"
      echo "== $side proxy: by proxy function and system call"
      perf script -i "$DIR/$side.data" 2>/dev/null | "$BENCH" --fold-perf-script | tee "$DIR/$side.fold.md"
    done
    echo "perf data and the top lists are in $DIR"
    ;;
esac
