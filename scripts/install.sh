#!/usr/bin/env bash
# Builds the extension and installs it into PostgreSQL 15 without harming a
# running server that has the library loaded.
#
#   bash scripts/install.sh                 # debug build (what scripts/test.sh tests)
#   bash scripts/install.sh --release       # release build (what scripts/cluster.sh runs)
#   bash scripts/install.sh --pg-config /path/to/pg_config
#
# Why not `cargo pgrx install`: a server that preloads cloudberry_ic_proxy has
# $(pg_config --pkglibdir)/cloudberry_ic_proxy.so mapped into its postmaster
# and every child. Writing that file in place (as `cp` does, e.g. the
# `sudo cp` of `cargo pgrx install --sudo`, which `cargo pgrx test --runas`
# runs) changes the mapped pages under the running code: its proxy worker and
# then its postmaster die of SIGBUS. Here `cargo pgrx package` builds the files
# into a staging directory, then each one is copied next to its destination
# under a new name and renamed over the old file. rename(2) only swaps the
# directory entry: a running server keeps the old file (its inode) until it
# restarts, and the next start loads the new one.
#
# Run as root (or as a user that can write pkglibdir and the extension
# directory). Idempotent: running it again installs the same files again.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
profile=debug

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --debug) profile=debug ;;
    --pg-config) PG_CONFIG=${2:?--pg-config needs a path}; shift ;;
    --pg-config=*) PG_CONFIG=${1#--pg-config=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

pkglibdir=$("$PG_CONFIG" --pkglibdir)
sharedir=$("$PG_CONFIG" --sharedir)

# A private staging directory: two runs at once never mix their files.
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/ic_proxy_install.XXXXXX")
tmp=""
cleanup() {
  [ -n "$tmp" ] && rm -f "$tmp"
  rm -rf "$STAGE"
}
trap cleanup EXIT

# Build (the same cargo build as `cargo pgrx install` of this profile, so the
# target directory's artifacts are reused) and lay the files out under $STAGE
# as they would be under /.
package_args=(--pg-config "$PG_CONFIG" --out-dir "$STAGE")
[ "$profile" = debug ] && package_args+=(--debug)
echo "install.sh: cargo pgrx package ${package_args[*]} ($profile)"
cargo pgrx package "${package_args[@]}"

mapfile -t files < <(cd "$STAGE" && find . -type f | sort)
if ! printf '%s\n' "${files[@]}" | grep -q '/cloudberry_ic_proxy\.so$'; then
  echo "install.sh: cargo pgrx package produced no cloudberry_ic_proxy.so in $STAGE" >&2
  exit 1
fi

for rel in "${files[@]}"; do
  src="$STAGE/${rel#./}"
  dest="/${rel#./}"
  case "$dest" in
    "$pkglibdir"/*.so) mode=755 ;;
    "$sharedir"/extension/*) mode=644 ;;
    *) echo "install.sh: unexpected file in the package: $dest" >&2; exit 1 ;;
  esac
  mkdir -p "$(dirname "$dest")"
  # A new file in the same directory, then rename(2) over the old one: never
  # an open(O_TRUNC) of the file a server may have mapped.
  tmp="$dest.new.$$"
  install -m "$mode" "$src" "$tmp"
  mv -f "$tmp" "$dest"
  tmp=""
  echo "install.sh: installed $dest (new file renamed into place)"
done
