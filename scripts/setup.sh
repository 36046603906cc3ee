#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root: installs what the
# build, the tests and the local cluster need, and is quick when all is there.
set -euo pipefail

PGRX_VERSION=0.18.0
PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages)" >&2
  exit 1
fi

# 1. Debian packages.
pkgs=(postgresql-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR} libclang-dev clang pkg-config sudo
      build-essential git ca-certificates procps iproute2 python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# 2. The non-root user PostgreSQL runs as (the postgresql package creates it).
if ! id postgres >/dev/null 2>&1; then
  log "creating user postgres"
  useradd --system --create-home --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# 3. Rust toolchain must already be there (the machine's rustup toolchain).
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2
  exit 1
fi

# 4. cargo-pgrx, pinned to the pgrx the crate uses.
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (takes about 5 minutes on 2 cores)"
  cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked --quiet
else
  log "cargo-pgrx $PGRX_VERSION present"
fi

# 5. pgrx init against Debian's PostgreSQL (downloads nothing).
if ! grep -qs "pg${PG_MAJOR} = \"${PG_CONFIG}\"" "$HOME/.pgrx/config.toml"; then
  log "cargo pgrx init --pg${PG_MAJOR} ${PG_CONFIG}"
  cargo pgrx init --pg${PG_MAJOR} "$PG_CONFIG" >/dev/null
else
  log "pgrx configured for pg${PG_MAJOR}"
fi
log "done"
