//! The runtime's entry point: `run` brings up the backend listener, the peer
//! listener and one slot per peer, applies reloaded maps as diffs, and stops
//! within a bounded time when cancelled. Listeners can be injected so tests
//! bind port 0 and temporary directories.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address_map::AddressMap;
use crate::config::{ProxySettings, RuntimeConfig};
use crate::context::{Ctx, LinkPolicy};
use crate::listener::{serve_backends, serve_peers};
use crate::log_limit::LogLimit;
use crate::peer::PeerDirectory;
use crate::pending::{soft_nofile_limit, AdmissionCaps};
use crate::protocol::{IcTcpFramer, PacketDecoder, PacketType};
use crate::route::{ByeOwed, Registry};
use crate::session::shared::Arrival;
use crate::status::{PeerState, PeerStats, StatusBoard};
use crate::tls::TlsPolicy;

/// Listeners made by the caller; `None` means the runtime binds its own
/// (and retries every second while it cannot).
#[derive(Default)]
pub struct Listeners {
    pub peer: Option<std::net::TcpListener>,
    pub backend: Option<std::os::unix::net::UnixListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid flow-control settings: {0}")]
    Flow(crate::flow::FlowParamsError),
    #[error("cannot use the listener: {0}")]
    Listener(io::Error),
}

/// How long a stop may take before tasks are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs the proxy until `shutdown` is cancelled. `config` carries the map and
/// the reloadable knobs; each new value is applied as a diff.
pub async fn run(
    settings: ProxySettings,
    mut config: watch::Receiver<Arc<RuntimeConfig>>,
    listeners: Listeners,
    shutdown: CancellationToken,
    status: Arc<StatusBoard>,
) -> Result<(), ProxyError> {
    settings.flow.validate().map_err(ProxyError::Flow)?;
    let cfg = config.borrow_and_update().clone();
    // The admission caps follow the descriptor limit at start.
    let caps = AdmissionCaps::new(&settings, soft_nofile_limit());
    log::info!(
        "ic-proxy: connections in their handshake: at most {} from peers ({} per address), {} from backends; the peer listener leaves the last {} descriptors (open files limit {}) to backends",
        caps.pending_peers,
        caps.pending_peers_per_source,
        caps.pending_backends,
        caps.reserve,
        caps.nofile.map_or("unlimited".into(), |n| n.to_string())
    );
    let (registry, owed) =
        Registry::new(status.clone(), cfg.early_cache_bytes, cfg.early_packet_ttl);
    let ctx = Arc::new(Ctx {
        decoder: PacketDecoder::new(settings.dialect, settings.max_packet_size),
        framer: IcTcpFramer {
            max_packet_size: settings.max_packet_size,
        },
        registry,
        settings,
        status,
        shutdown: shutdown.clone(),
        links: CancellationToken::new(),
        tracker: TaskTracker::new(),
        policy: LinkPolicy::new(cfg.retry_interval, cfg.peer_secret.clone(), cfg.tls.clone()),
        refusals: LogLimit::default(),
        drops: LogLimit::default(),
        sessions_done: tokio::sync::Notify::new(),
        caps,
    });
    log::info!(
        "ic-proxy: starting: dbid {}, dialect {}, max packet size {}, TLS on peer links: {}",
        ctx.settings.dbid,
        ctx.settings.dialect,
        ctx.settings.max_packet_size,
        describe_tls(&cfg.tls)
    );

    let backend_listener = match listeners.backend {
        Some(l) => {
            l.set_nonblocking(true).map_err(ProxyError::Listener)?;
            Some(UnixListener::from_std(l).map_err(ProxyError::Listener)?)
        }
        None => None,
    };
    let peers = Arc::new(PeerDirectory::default());
    let (socket_tx, socket_rx) = watch::channel(cfg.backend_socket.clone());
    {
        let (ctx2, peers2) = (ctx.clone(), peers.clone());
        ctx.tracker
            .spawn(async move { serve_backends(ctx2, peers2, backend_listener, socket_rx).await });
    }
    let mut injected_peer = match listeners.peer {
        Some(l) => {
            l.set_nonblocking(true).map_err(ProxyError::Listener)?;
            Some(TcpListener::from_std(l).map_err(ProxyError::Listener)?)
        }
        None => None,
    };
    {
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut expiry = tokio::time::interval(EXPIRY_CHECK);
            loop {
                tokio::select! {
                    _ = ctx2.shutdown.cancelled() => break,
                    _ = tick.tick() => ctx2.registry.expire(),
                    _ = expiry.tick() => warn_if_expiring(&ctx2.tls()),
                }
            }
        });
    }

    {
        let (ctx2, peers2) = (ctx.clone(), peers.clone());
        ctx.tracker
            .spawn(async move { send_owed_byes(ctx2, peers2, owed).await });
    }

    let mut listener_token = None;
    apply_map(
        &ctx,
        &peers,
        None,
        &cfg.map,
        &mut injected_peer,
        &mut listener_token,
    );
    ctx.status.counters.map_generation.store(1, Relaxed);
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = config.changed() => {
                if changed.is_err() {
                    // The sender is gone: keep running on the last map.
                    shutdown.cancelled().await;
                    break;
                }
                let next = config.borrow_and_update().clone();
                ctx.policy.set_retry_interval(next.retry_interval);
                ctx.registry.set_cache_limits(next.early_cache_bytes, next.early_packet_ttl);
                if next.peer_secret != current.peer_secret {
                    // New links use it; a link made without it ends now and
                    // is made again with it.
                    ctx.policy.set_secret(next.peer_secret.clone());
                    log::info!(
                        "ic-proxy: peer authentication {}",
                        if next.peer_secret.is_some() { "on" } else { "off" }
                    );
                    for slot in peers.slots() {
                        slot.require_secret(&next.peer_secret);
                    }
                }
                if next.tls != current.tls {
                    // New links use it; a link it no longer allows ends now
                    // and is made again.
                    ctx.policy.set_tls(next.tls.clone());
                    log::info!("ic-proxy: TLS on peer links: {}", describe_tls(&next.tls));
                    warn_if_expiring(&next.tls);
                    for slot in peers.slots() {
                        slot.require_tls(&next.tls);
                    }
                }
                socket_tx.send_if_modified(|b| {
                    let changed = *b != next.backend_socket;
                    if changed {
                        *b = next.backend_socket.clone();
                    }
                    changed
                });
                if next.map != current.map {
                    apply_map(&ctx, &peers, Some(&current.map), &next.map, &mut injected_peer, &mut listener_token);
                }
                ctx.status.counters.map_generation.fetch_add(1, Relaxed);
                current = next;
            }
        }
    }

    log::info!("ic-proxy: stopping");
    // Sessions end first and say BYE; the links then send what is queued
    // and close. Everything within STOP_GRACE.
    ctx.registry.abort_all();
    let sessions_gone = async {
        loop {
            // Registered before the check, so the last session's notice
            // cannot slip in between.
            let done = ctx.sessions_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if ctx.status.counters.sessions_open.load(Relaxed) <= 0 {
                break;
            }
            done.await;
        }
    };
    let _ = tokio::time::timeout(STOP_GRACE / 2, sessions_gone).await;
    ctx.links.cancel();
    ctx.tracker.close();
    if tokio::time::timeout(STOP_GRACE, ctx.tracker.wait())
        .await
        .is_err()
    {
        log::warn!("ic-proxy: some connections did not close within {STOP_GRACE:?}");
    }
    Ok(())
}

/// How often the certificate's expiry is looked at.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);

/// A WARNING when this proxy's certificate expires within
/// [`crate::tls::EXPIRY_WARNING`] (or has expired).
fn warn_if_expiring(tls: &TlsPolicy) {
    if let Some(warning) = tls.material.as_ref().and_then(|m| m.expiry_warning()) {
        log::warn!("{warning}");
    }
}

/// `off`, or the mode, the verification and this proxy's certificate.
fn describe_tls(tls: &TlsPolicy) -> String {
    match &tls.material {
        None => tls.mode.to_string(),
        Some(m) => format!(
            "{} (verify {}; certificate {}, expires {})",
            tls.mode,
            tls.verify.name(),
            m.identity.subject,
            crate::tls::cert_info::format_utc(m.identity.not_after)
        ),
    }
}

/// Sends the BYEs the registry owes the senders of logical connections it
/// ended (dropped from the early cache, or cut for a bad packet), so their
/// backends' sockets close instead of waiting forever.
async fn send_owed_byes(
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    mut owed: mpsc::Receiver<ByeOwed>,
) {
    loop {
        let key = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            k = owed.recv() => match k {
                Some(k) => k,
                None => break,
            },
        };
        // From the receiver (local) to the sender (remote).
        if key.remote.dbid == ctx.settings.dbid {
            ctx.registry.route(&key.reversed(), Arrival::Bye);
        } else if let Some(slot) = peers.get(key.remote.dbid) {
            let d = ctx.settings.dialect;
            if !slot.send_answer(key.header(PacketType::Bye, d, 0).encode(d)) {
                // That peer reads nothing back: its sender is told nothing
                // more (its link will die of its own silence).
                ctx.status.counters.dropped_packets.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Brings the peers in line with `new` (all of it when `old` is None).
/// When this instance's own entry changes, the peer listener is replaced.
fn apply_map(
    ctx: &Arc<Ctx>,
    peers: &Arc<PeerDirectory>,
    old: Option<&AddressMap>,
    new: &AddressMap,
    injected: &mut Option<TcpListener>,
    listener: &mut Option<CancellationToken>,
) {
    let me = ctx.settings.dbid;
    let old_self = old.and_then(|m| m.get(me)).cloned();
    let new_self = new.get(me).cloned();
    let self_changed = old.is_none() || old_self != new_self;
    let empty = AddressMap::default();
    let diff = AddressMap::diff(old.unwrap_or(&empty), new);

    let mut board = peers.apply(ctx, &diff, self_changed, new, new_self.as_ref());
    if let Some(e) = &new_self {
        board.push(Arc::new(PeerStats::new(e.clone(), PeerState::SelfEntry)));
    }
    ctx.status.set_peers(board);

    if !self_changed {
        return;
    }
    if let Some(old) = listener.take() {
        old.cancel();
    }
    *listener = new_self.map(|e| {
        let t = ctx.shutdown.child_token();
        let (ctx2, peers2, t2) = (ctx.clone(), peers.clone(), t.clone());
        let listener = injected.take();
        ctx.tracker
            .spawn(async move { serve_peers(ctx2, peers2, e, listener, t2).await });
        t
    });
    if listener.is_none() {
        ctx.status
            .peer_listener
            .set_down("this instance's dbid is not in the address map");
    }
}
