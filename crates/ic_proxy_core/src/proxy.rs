//! The runtime's entry point: `run` brings up the backend listener, the peer
//! listener and one slot per peer, applies reloaded maps as diffs, and stops
//! within a bounded time when cancelled. Listeners can be injected so tests
//! bind port 0 and temporary directories.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address_map::{AddressMap, PeerAddr};
use crate::config::{BackendSocket, ProxySettings, RuntimeConfig};
use crate::context::{Ctx, LinkPolicy};
use crate::log_limit::LogLimit;
use crate::peer::{accept_peer, PeerDirectory};
use crate::pending::{
    soft_nofile_limit, AcceptFailure, AdmissionCaps, Pending, PendingLimits, SpareDescriptor,
};
use crate::protocol::{IcTcpFramer, PacketDecoder, PacketType};
use crate::route::{ByeOwed, Registry};
use crate::session::run_session;
use crate::session::shared::Arrival;
use crate::status::{PeerState, PeerStats, StatusBoard};

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
const LISTEN_BACKLOG: i32 = 1024;

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
        policy: LinkPolicy::new(cfg.retry_interval, cfg.peer_secret.clone()),
        refusals: LogLimit::default(),
        drops: LogLimit::default(),
        sessions_done: tokio::sync::Notify::new(),
        caps,
    });
    log::info!(
        "ic-proxy: starting: dbid {}, dialect {}, max packet size {}",
        ctx.settings.dbid,
        ctx.settings.dialect,
        ctx.settings.max_packet_size
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
            loop {
                tokio::select! {
                    _ = ctx2.shutdown.cancelled() => break,
                    _ = tick.tick() => ctx2.registry.expire(),
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

/// Binds `addr` as the C proxy does: the entry's own address, SO_REUSEADDR,
/// backlog 1024.
async fn bind_peer(addr: &PeerAddr) -> io::Result<TcpListener> {
    let target = tokio::net::lookup_host(addr.socket_addr_string())
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
        })?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&target.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(sock.into())
}

async fn serve_peers(
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    addr: PeerAddr,
    mut injected: Option<TcpListener>,
    token: CancellationToken,
) {
    let caps = ctx.caps;
    let pending = PendingLimits::new(caps.pending_peers, caps.pending_peers_per_source);
    let mut recovery = AcceptRecovery::new("peer", &caps);
    let mut last_error = String::new();
    loop {
        let listener = match injected.take() {
            Some(l) => Ok(l),
            None => bind_peer(&addr).await,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot listen on {}: {e}", addr.socket_addr_string());
                if msg != last_error {
                    log::warn!("ic-proxy: {msg}; retrying every second");
                }
                ctx.status.peer_listener.set_failed(msg.clone());
                last_error = msg;
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        log::info!("ic-proxy: listening for peers on {local}");
        ctx.status.peer_listener.set_up(local);
        last_error.clear();
        loop {
            let accepted: io::Result<(tokio::net::TcpStream, SocketAddr)> = tokio::select! {
                _ = token.cancelled() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((s, from)) => {
                    // Refused: closed here, when `s` drops.
                    if let Some(admitted) = admit_peer(&ctx, &caps, &pending, &s, from) {
                        let (ctx2, peers2) = (ctx.clone(), peers.clone());
                        // accept_peer returns once the handshake is over
                        // (the link then runs in the peer's slot).
                        ctx.tracker.spawn(async move {
                            accept_peer(ctx2, &peers2, s, from).await;
                            drop(admitted);
                        });
                    }
                }
                Err(e) => match AcceptFailure::of(&e) {
                    AcceptFailure::Fatal => {
                        ctx.status
                            .peer_listener
                            .set_failed(format!("accept failed: {e}"));
                        break;
                    }
                    failure => {
                        let shed = |cx: &mut Context<'_>| listener.poll_accept(cx).map_ok(drop);
                        if !recovery.ride_out(&ctx, failure, &e, &token, shed).await {
                            return;
                        }
                    }
                },
            }
        }
    }
}

/// Pause after an accept that failed for want of memory, or of descriptors
/// with no spare to shed the connection with: short enough that a backend
/// hardly notices, long enough that the listener does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Some(guard) when a new peer connection may start its handshake, which it
/// is in until the guard drops. None: it was refused, counted and logged,
/// and the caller closes it at once.
fn admit_peer(
    ctx: &Ctx,
    caps: &AdmissionCaps,
    pending: &Arc<PendingLimits>,
    s: &tokio::net::TcpStream,
    from: SocketAddr,
) -> Option<Pending> {
    let why = match caps.short_of_descriptors(s.as_raw_fd().max(0) as usize) {
        Some(why) => why,
        None => match pending.admit(Some(from.ip())) {
            Ok(admitted) => return Some(admitted),
            Err(refusal) => refusal.to_string(),
        },
    };
    ctx.refuse(|| format!("ic-proxy: refused peer connection from {from}: {why}"));
    None
}

/// The same for a backend connection: only the total is capped (a Unix
/// peer has no address), and the descriptor reserve is theirs to use.
fn admit_backend(ctx: &Ctx, pending: &Arc<PendingLimits>) -> Option<Pending> {
    pending
        .admit(None)
        .inspect_err(|refusal| {
            ctx.refuse(|| format!("ic-proxy: refused backend connection: {refusal}"))
        })
        .ok()
}

/// What a listener keeps to get past a failed accept without spinning.
struct AcceptRecovery {
    /// "peer" or "backend", for the log.
    what: &'static str,
    spare: SpareDescriptor,
    /// The open files limit at start, for the log.
    nofile: Option<usize>,
}

impl AcceptRecovery {
    fn new(what: &'static str, caps: &AdmissionCaps) -> AcceptRecovery {
        AcceptRecovery {
            what,
            spare: SpareDescriptor::open(),
            nofile: caps.nofile,
        }
    }

    /// Out of descriptors, the spare is given up so that a waiting
    /// connection can be accepted (by `shed`, which closes it) and the spare
    /// taken back: each failure drains one connection from the queue. Linux
    /// reports EMFILE before it looks at the queue, so there may be none:
    /// then the listener just waits for the next one. Anything else (or no
    /// spare) waits [`ACCEPT_BACKOFF`]. Logged rate-limited; false when
    /// `token` was cancelled meanwhile.
    async fn ride_out(
        &mut self,
        ctx: &Ctx,
        failure: AcceptFailure,
        e: &io::Error,
        token: &CancellationToken,
        mut shed: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> bool {
        let what = self.what;
        match failure {
            AcceptFailure::ConnectionGone => return true,
            AcceptFailure::OutOfDescriptors if self.spare.release() => {
                // Only a connection already waiting: never wait for one here.
                let shed = std::future::poll_fn(|cx| Poll::Ready(shed(cx))).await;
                self.spare.restore();
                match shed {
                    // Nothing waiting; the listener's readiness is cleared.
                    Poll::Pending => return true,
                    Poll::Ready(Ok(())) => {
                        let limit = self.nofile.map_or("unlimited".into(), |n| n.to_string());
                        ctx.refuse(|| {
                            format!(
                                "ic-proxy: accepting a {what} connection failed ({e}); closed it with the spare descriptor; raise the open files limit ({limit})"
                            )
                        });
                        return true;
                    }
                    Poll::Ready(Err(_)) => {}
                }
            }
            _ => {}
        }
        ctx.refusals.warn("accept failures", || {
            format!(
                "ic-proxy: accepting a {what} connection failed ({e}); retrying in {ACCEPT_BACKOFF:?}"
            )
        });
        tokio::select! {
            _ = token.cancelled() => false,
            _ = tokio::time::sleep(ACCEPT_BACKOFF) => true,
        }
    }
}

/// Makes the backend socket: a file left by a dead process is replaced; a
/// live one (another proxy answering) is not touched.
pub fn bind_backend_socket(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another live proxy", path.display()),
                ))
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(l)
}

/// Identity of the file at `path` (device, inode): a process that unlinks
/// the path and binds its own socket there leaves another inode.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes the socket file at `path` if it is still the one this proxy made
/// (never another process's).
fn remove_if_mine(path: &Path, mine: Option<(u64, u64)>) {
    if mine.is_some() && file_id(path) == mine && std::fs::remove_file(path).is_ok() {
        log::info!("ic-proxy: removed {}", path.display());
    }
}

/// How often the backend socket's path is checked for a process that took
/// it (Cloudberry's built-in proxy unlinks and binds the same path at every
/// start): a takeover is answered within two of these.
const SOCKET_WATCH: Duration = Duration::from_millis(500);

/// Unlinks whatever serves `path` and binds this proxy's socket there.
fn take_over_socket(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    bind_backend_socket(path)
}

/// True if a live process serves the socket at `path`: it answers, or it
/// is there and refuses us for another reason than being gone.
fn served_by_another(path: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ),
    }
}

/// What the backend listener does about another process on its path.
struct PathGuard {
    take_over: bool,
    /// The long WARNING is logged once; later takeovers get one line each.
    warned: bool,
    /// Without take-over, the replacement is logged once per path.
    left_alone: Option<PathBuf>,
}

impl PathGuard {
    /// Binds `path`; with take-over, a live socket of another process there
    /// (the built-in proxy's) is replaced and counted.
    fn bind(&mut self, ctx: &Ctx, path: &Path) -> io::Result<UnixListener> {
        let l = if self.take_over && served_by_another(path) {
            let l = take_over_socket(path)?;
            self.took(ctx, path);
            l
        } else {
            bind_backend_socket(path)?
        };
        l.set_nonblocking(true)?;
        UnixListener::from_std(l)
    }

    fn took(&mut self, ctx: &Ctx, path: &Path) {
        let n = ctx.status.counters.socket_takeovers.fetch_add(1, Relaxed) + 1;
        if !self.warned {
            self.warned = true;
            log::warn!(
                "ic-proxy: {} was served by another process, most likely the built-in \"ic proxy process\" that \
                 Cloudberry and Greenplum start whatever gp_interconnect_type says; this proxy took the path over \
                 and takes it back whenever it is taken again. Leave gp_interconnect_proxy_addresses empty so that \
                 the built-in proxy holds no TCP port",
                path.display()
            );
        } else {
            log::info!(
                "ic-proxy: took {} back from another process (takeover {n})",
                path.display()
            );
        }
    }
}

async fn serve_backends(
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    injected: Option<UnixListener>,
    mut socket: watch::Receiver<BackendSocket>,
) {
    let mut injected = injected;
    let mut last_error = String::new();
    let caps = ctx.caps;
    let pending = PendingLimits::new(caps.pending_backends, caps.pending_backends);
    let mut recovery = AcceptRecovery::new("backend", &caps);
    let mut guard = PathGuard {
        take_over: ctx.settings.take_over,
        warned: false,
        left_alone: None,
    };
    'serve: loop {
        let wanted = match &*socket.borrow_and_update() {
            BackendSocket::FromSettings => Ok(ctx.settings.socket_path.clone()),
            BackendSocket::At(p) => Ok(p.clone()),
            BackendSocket::Off(why) => Err(why.clone()),
        };
        let path = match wanted {
            Ok(p) => p,
            Err(why) => {
                log::info!("ic-proxy: serving no backend socket: {why}");
                ctx.status.backend_listener.set_down(why);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    r = socket.changed() => if r.is_err() { ctx.shutdown.cancelled().await; return },
                }
                continue;
            }
        };
        let listener = match injected.take() {
            Some(l) => Ok(l),
            None => guard.bind(&ctx, &path),
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot listen on {}: {e}", path.display());
                if msg != last_error {
                    log::warn!("ic-proxy: {msg}; retrying every second");
                }
                ctx.status.backend_listener.set_failed(msg.clone());
                last_error = msg;
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    r = socket.changed() => if r.is_err() { ctx.shutdown.cancelled().await; return },
                }
                continue;
            }
        };
        let mine = file_id(&path);
        log::info!("ic-proxy: listening for backends on {}", path.display());
        ctx.status
            .backend_listener
            .set_up(path.display().to_string());
        last_error.clear();
        let mut watch = tokio::time::interval(SOCKET_WATCH);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    remove_if_mine(&path, mine);
                    return;
                }
                r = socket.changed() => {
                    if r.is_err() {
                        // The configuration's sender is gone: keep serving.
                        ctx.shutdown.cancelled().await;
                        remove_if_mine(&path, mine);
                        return;
                    }
                    // The backend socket moved (a sidecar's server
                    // restarted) or went away: sessions already connected
                    // carry on, the old file goes.
                    remove_if_mine(&path, mine);
                    continue 'serve;
                }
                _ = watch.tick() => {
                    let now = file_id(&path);
                    if now == mine {
                        continue;
                    }
                    if now.is_none() {
                        log::warn!("ic-proxy: {} was removed; making it again", path.display());
                        continue 'serve;
                    }
                    if guard.take_over {
                        match take_over_socket(&path).and_then(|l| {
                            l.set_nonblocking(true)?;
                            UnixListener::from_std(l)
                        }) {
                            Ok(l) => {
                                guard.took(&ctx, &path);
                                injected = Some(l);
                            }
                            Err(e) => log::warn!("ic-proxy: cannot take {} back: {e}", path.display()),
                        }
                        continue 'serve;
                    }
                    if guard.left_alone.as_deref() != Some(&path) {
                        log::warn!(
                            "ic-proxy: {} was replaced by another process's socket; backends now reach that process. \
                             Not taking it back (ic-proxy run --take-over does)",
                            path.display()
                        );
                        ctx.status.backend_listener.set_failed(format!(
                            "{} was replaced by another process's socket",
                            path.display()
                        ));
                        guard.left_alone = Some(path.clone());
                    }
                    continue;
                }
                r = listener.accept() => r,
            };
            match accepted {
                Ok((s, _)) => {
                    // Refused: closed here, when `s` drops.
                    if let Some(admitted) = admit_backend(&ctx, &pending) {
                        ctx.tracker
                            .spawn(run_session(ctx.clone(), peers.clone(), s, admitted));
                    }
                }
                Err(e) => match AcceptFailure::of(&e) {
                    AcceptFailure::Fatal => {
                        ctx.status
                            .backend_listener
                            .set_failed(format!("accept failed: {e}"));
                        remove_if_mine(&path, mine);
                        break;
                    }
                    failure => {
                        let shed = |cx: &mut Context<'_>| listener.poll_accept(cx).map_ok(drop);
                        let token = &ctx.shutdown;
                        if !recovery.ride_out(&ctx, failure, &e, token, shed).await {
                            remove_if_mine(&path, mine);
                            return;
                        }
                    }
                },
            }
        }
    }
}
