#!/usr/bin/env bash
# The main job: a local cluster of three PostgreSQL 15 servers (a coordinator,
# content -1, and two segments) with cloudberry_ic_proxy preloaded. It fills
# gp_segment_configuration, generates the address map with
# ic_proxy_addresses_generate(delta), applies it everywhere with ALTER SYSTEM
# and pg_reload_conf(), shows ic_proxy_status() and ic_proxy_ping(), streams
# data through the proxies and prints the throughput.
#
#   bash scripts/cluster.sh            # set up, build, start (or restart) the cluster
#   bash scripts/cluster.sh --stop     # stop it and remove its files
#   bash scripts/cluster.sh --status   # show the proxies' status again
#
# Run as root on Debian 12; the servers run as the postgres user.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"
PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config
DIR=${IC_PROXY_CLUSTER_DIR:-/tmp/ic_proxy_cluster}
N=3
DELTA=${IC_PROXY_DELTA:-1000}
MB=${IC_PROXY_DEMO_MB:-512}

as_pg() { runuser -u postgres -- "$@"; }
psql_on() { local port=$1; shift; as_pg psql -X -q -h "$DIR" -p "$port" -d postgres "$@"; }

stop_cluster() {
  for d in "$DIR"/d*; do
    [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}

show_status() {
  for port in $(cat "$DIR/ports"); do
    echo "== instance on port $port: ic_proxy_status()"
    psql_on "$port" -c "SELECT dbid, content, address, port, state, logical_connections AS conns, bytes_in, bytes_out, last_error FROM ic_proxy_status()"
  done
  echo "== ic_proxy_ping() from the coordinator"
  psql_on "$(cut -d" " -f1 "$DIR/ports")" -c "SELECT dbid, content, ok, round(rtt_ms::numeric, 3) AS rtt_ms, error FROM ic_proxy_ping()"
}

case "${1:-}" in
  --stop) stop_cluster; echo "cluster stopped and removed ($DIR)"; exit 0 ;;
  --status) show_status; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--stop|--status]" >&2; exit 2 ;;
esac

bash scripts/setup.sh

echo "== building and installing the extension and the ic-proxy tool (release)"
# scripts/install.sh renames each new file over the old one (never writes the
# library in place), so servers that run it now, this cluster's included,
# keep their copy until they restart instead of dying of SIGBUS.
bash scripts/install.sh --release --pg-config "$PG_CONFIG" >/dev/null
cargo build --release -q -p ic_proxy_cli
IC_PROXY=$ROOT/target/release/ic-proxy

stop_cluster
mkdir -p "$DIR"
chown postgres "$DIR"
chmod 700 "$DIR"

# Free ports for the servers, with the proxy port (port + delta) free too.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=()
p=25432
while [ ${#ports[@]} -lt $N ]; do
  if port_free "$p" && port_free $((p + DELTA)); then ports+=("$p"); fi
  p=$((p + 1))
done
echo "${ports[@]}" > "$DIR/ports"

echo "== starting $N PostgreSQL 15 servers as user postgres in $DIR"
for i in $(seq 1 $N); do
  d=$DIR/d$i
  port=${ports[$((i - 1))]}
  as_pg "$PGBIN/initdb" -D "$d" -A trust -U postgres >/dev/null
  cat >> "$d/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_preload_libraries = 'cloudberry_ic_proxy'
ic_proxy.dbid = $i
ic_proxy.socket_dir = '$DIR'
EOF
  as_pg "$PGBIN/pg_ctl" -D "$d" -l "$d/server.log" -w start >/dev/null
  echo "   dbid $i, content $((i - 2)), port $port"
done

echo "== CREATE EXTENSION and gp_segment_configuration on every instance"
rows=""
for i in $(seq 1 $N); do
  rows+="${rows:+,}($i, $((i - 2)), 'p', 'p', 'n', 'u', ${ports[$((i - 1))]}, 'localhost', '127.0.0.1', '$DIR/d$i')"
done
for port in "${ports[@]}"; do
  psql_on "$port" -c "CREATE EXTENSION cloudberry_ic_proxy" \
    -c "INSERT INTO gp_segment_configuration VALUES $rows" >/dev/null
done

echo "== the map: ic_proxy_addresses_preview($DELTA) and ic_proxy_addresses_generate($DELTA)"
psql_on "${ports[0]}" -c "SELECT * FROM ic_proxy_addresses_preview($DELTA)"
MAP=$(psql_on "${ports[0]}" -At -c "SELECT ic_proxy_addresses_generate($DELTA)")
echo "   $MAP"

echo "== applying it: ALTER SYSTEM SET ic_proxy.addresses + pg_reload_conf() on every instance"
for port in "${ports[@]}"; do
  psql_on "$port" -c "ALTER SYSTEM SET ic_proxy.addresses = '$MAP'" -c "SELECT pg_reload_conf()" >/dev/null
done

echo "== waiting for the mesh"
deadline=$((SECONDS + 30))
for port in "${ports[@]}"; do
  until [ "$(psql_on "$port" -At -c "SELECT count(*) FROM ic_proxy_status() WHERE state NOT IN ('self', 'connected')")" = 0 ]; do
    if [ $SECONDS -ge $deadline ]; then echo "the mesh did not come up; see $DIR/d*/server.log" >&2; exit 1; fi
    sleep 0.2
  done
done
show_status

echo "== streaming ${MB} MB from a backend on the coordinator to one on segment 1 (dbid 3), through both workers"
sock() { local i=$1; echo "$DIR/.s.PGSQL.ic_proxy.${ports[$((i - 1))]}.$(head -1 "$DIR/d$i/postmaster.pid")"; }
KEY="--session 1 --command 1 --send-slice 1 --recv-slice 0"
"$IC_PROXY" recv --socket "$(sock 3)" $KEY --local=1:3:4242 --remote=-1:1:4141 --count > /dev/null 2> "$DIR/recv.out" &
recv_pid=$!
start=$(date +%s.%N)
head -c "${MB}M" /dev/zero | "$IC_PROXY" send --socket "$(sock 1)" $KEY --local=-1:1:4141 --remote=1:3:4242
wait "$recv_pid"
end=$(date +%s.%N)
cat "$DIR/recv.out"
awk -v mb="$MB" -v s="$start" -v e="$end" 'BEGIN { printf "   %d MB in %.2f s: %.0f MB/s\n", mb, e - s, mb / (e - s) }'
psql_on "${ports[0]}" -c "SELECT dbid, state, packets_out, bytes_out FROM ic_proxy_status() WHERE dbid = 3"

cat <<EOF

The cluster is up. Connect with:
  runuser -u postgres -- psql -h $DIR -p ${ports[0]} postgres      # the coordinator
  runuser -u postgres -- psql -h $DIR -p ${ports[1]} postgres      # segment 0
Try:  SELECT * FROM ic_proxy_status();  SELECT * FROM ic_proxy_ping();  SELECT * FROM ic_proxy_info();
Logs: $DIR/d*/server.log
Stop: bash scripts/cluster.sh --stop
EOF
