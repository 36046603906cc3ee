//! Live state of this instance's proxy, read from shared memory in the
//! calling backend: one row per map entry, and the proxy's own facts.

use ic_proxy_core::PeerState;
use pgrx::prelude::*;

use crate::{gucs, shmem};

fn timestamp(ms: u64) -> Option<TimestampWithTimeZone> {
    if ms == 0 {
        return None;
    }
    // Unix epoch milliseconds -> microseconds since PostgreSQL's epoch (2000-01-01).
    TimestampWithTimeZone::try_from((ms as i64 - 946_684_800_000) * 1000).ok()
}

/// One row per entry of the map: the link's state and its counters. When
/// the proxy is not running, every entry says so; while this instance's
/// dbid is not in the map, every entry is `not in map`. Entries beyond
/// `ic_proxy.max_status_entries` are counted in `ic_proxy_info()` and
/// announced by a NOTICE.
#[pg_extern(volatile, parallel_safe)]
fn ic_proxy_status() -> TableIterator<
    'static,
    (
        name!(dbid, i16),
        name!(content, i16),
        name!(address, String),
        name!(port, i32),
        name!(state, String),
        name!(since, Option<TimestampWithTimeZone>),
        name!(bytes_in, i64),
        name!(bytes_out, i64),
        name!(packets_in, i64),
        name!(packets_out, i64),
        name!(logical_connections, i64),
        name!(cached_bytes, i64),
        name!(drops, i64),
        name!(reconnects, i64),
        name!(last_error, Option<String>),
        name!(protection, Option<String>),
    ),
> {
    let (running, missing, last_error, rows): (_, _, _, Vec<_>) = shmem::with(|a| {
        if !a.running {
            return (false, 0, a.last_error(), Vec::new());
        }
        (
            true,
            a.entries_missing(),
            String::new(),
            a.rows()
                .iter()
                .map(|r| {
                    let err = r.last_error();
                    let protection = r.protection();
                    (
                        r.dbid as i16,
                        r.content,
                        r.host(),
                        i32::from(r.port),
                        r.state_name().to_string(),
                        timestamp(r.traffic.since_ms),
                        r.traffic.bytes_in as i64,
                        r.traffic.bytes_out as i64,
                        r.traffic.packets_in as i64,
                        r.traffic.packets_out as i64,
                        r.traffic.logical_conns as i64,
                        r.traffic.cached_bytes as i64,
                        r.traffic.drops as i64,
                        r.traffic.reconnects as i64,
                        (!err.is_empty()).then_some(err),
                        (!protection.is_empty()).then_some(protection),
                    )
                })
                .collect(),
        )
    });
    if running {
        if missing > 0 {
            notice!(
                "{missing} map entries are not shown: the status area holds {} (ic_proxy.max_status_entries)",
                gucs::max_status_entries()
            );
        }
        return TableIterator::new(rows);
    }
    let me = gucs::dbid();
    let reason = not_running_reason(&last_error);
    let rows: Vec<_> = gucs::addresses()
        .entries()
        .iter()
        .map(|e| {
            let state = if Some(e.dbid) == me {
                PeerState::SelfEntry.name()
            } else {
                shmem::STATE_NOT_RUNNING
            };
            (
                e.dbid as i16,
                e.content,
                e.host.clone(),
                i32::from(e.port),
                state.to_string(),
                None,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                Some(reason.clone()),
                None,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Why the proxy does not run, given what the worker said when it stopped
/// (`last_error`, empty if nothing).
pub fn not_running_reason(last_error: &str) -> String {
    if gucs::dbid().is_none() {
        "the proxy is off: ic_proxy.dbid is not set".to_string()
    } else if !last_error.is_empty() {
        format!("the proxy is off: {last_error}")
    } else if let Some(problem) = gucs::flow_problem(&gucs::flow_params()) {
        // The worker says this too, but may not have started yet.
        format!("the proxy is off: {}. {}", problem.message, problem.hint)
    } else {
        "the proxy worker is not running (see the server log)".to_string()
    }
}

/// A count for SQL's bigint; an unlimited value shows as the largest.
fn bigint(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The proxy's own facts in one row: listeners, socket, dialect, threads,
/// uptime, map generation and the proxy-wide counters.
#[pg_extern(volatile, parallel_safe)]
fn ic_proxy_info() -> TableIterator<
    'static,
    (
        name!(running, bool),
        name!(worker_pid, Option<i32>),
        name!(dbid, Option<i16>),
        name!(content, Option<i16>),
        name!(peer_listener, String),
        name!(peer_listener_detail, Option<String>),
        name!(backend_socket, String),
        name!(backend_socket_detail, Option<String>),
        name!(dialect, String),
        name!(threads, i32),
        name!(max_packet_size, i32),
        name!(started, Option<TimestampWithTimeZone>),
        name!(map_generation, i64),
        name!(logical_connections, i64),
        name!(logical_connections_total, i64),
        name!(early_cache_bytes, i64),
        name!(early_dropped_connections, i64),
        name!(rejected_connections, i64),
        name!(dropped_packets, i64),
        name!(flow_violations, i64),
        name!(auth_failures, i64),
        name!(updated, Option<TimestampWithTimeZone>),
        name!(fd_soft_limit, Option<i64>),
        name!(fd_hard_limit, Option<i64>),
        name!(status_entries, i32),
        name!(status_entries_missing, i64),
        name!(last_error, Option<String>),
        name!(socket_takeovers, i64),
        name!(tls, String),
        name!(tls_certificate, Option<String>),
        name!(tls_certificate_expires, Option<TimestampWithTimeZone>),
    ),
> {
    let row = shmem::with(|a| {
        let (pl, pld) = a.peer_listener();
        let (bl, bld) = a.backend_listener();
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let running = a.running;
        let last_error = a.last_error();
        let limit = |v: u64| (v != 0).then(|| bigint(v));
        (
            running,
            (a.generation > 0 && a.worker_pid != 0).then_some(a.worker_pid),
            gucs::dbid().map(|d| d as i16),
            (running && a.content != i16::MIN).then_some(a.content),
            if running { pl } else { "down".to_string() },
            if running {
                opt(pld)
            } else {
                Some(not_running_reason(&last_error))
            },
            if running { bl } else { "down".to_string() },
            opt(if running { bld } else { a.socket_path() }),
            gucs::dialect().name().to_string(),
            gucs::worker_threads() as i32,
            gucs::max_packet_size() as i32,
            if running {
                timestamp(a.totals.started_ms)
            } else {
                None
            },
            a.totals.map_generation as i64,
            a.totals.sessions_open as i64,
            a.totals.sessions_total as i64,
            a.totals.early_cache_bytes as i64,
            a.totals.early_dropped_conns as i64,
            a.totals.rejected_connections as i64,
            a.totals.dropped_packets as i64,
            a.totals.flow_violations as i64,
            a.totals.auth_failures as i64,
            timestamp(a.updated_ms),
            limit(a.totals.fd_soft_limit),
            limit(a.totals.fd_hard_limit),
            gucs::max_status_entries() as i32,
            i64::from(if running { a.entries_missing() } else { 0 }),
            opt(last_error),
            a.totals.socket_takeovers as i64,
            if running {
                a.tls_mode()
            } else {
                gucs::tls_mode().name().to_string()
            },
            opt(if running {
                a.tls_subject()
            } else {
                String::new()
            }),
            if running {
                timestamp(a.tls_not_after.saturating_mul(1000))
            } else {
                None
            },
        )
    });
    TableIterator::once(row)
}

extension_sql!(
    r#"
CREATE VIEW ic_proxy_peers AS
    SELECT dbid, content, address, port, state, since, logical_connections,
           bytes_in, bytes_out, cached_bytes, drops, reconnects, last_error, protection
      FROM ic_proxy_status()
     WHERE state <> 'self';
COMMENT ON VIEW ic_proxy_peers IS 'The links of this instance''s interconnect proxy to its peers';
"#,
    name = "ic_proxy_peers",
    requires = [ic_proxy_status]
);
