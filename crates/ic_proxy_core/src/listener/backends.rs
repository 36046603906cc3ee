//! The backend listener: the Unix socket backends connect to, kept where
//! the configuration says (it may move or go away on a reload), guarded
//! against another process taking its path, and admitting connections into
//! backend sessions.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{AcceptEnd, Acceptor, BindRetry};
use crate::config::BackendSocket;
use crate::context::Ctx;
use crate::peer::PeerDirectory;
use crate::pending::{Pending, PendingLimits};
use crate::session::run_session;

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
fn take_over_socket(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = bind_backend_socket(path)?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
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
        if self.take_over && served_by_another(path) {
            let l = take_over_socket(path)?;
            self.took(ctx, path);
            return Ok(l);
        }
        let l = bind_backend_socket(path)?;
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

    /// The path no longer holds this proxy's socket file (`now`, its new
    /// identity, or None when it is gone). Some(listener) when the path was
    /// taken back; the caller then serves that listener.
    fn replaced(
        &mut self,
        ctx: &Ctx,
        path: &Path,
        now: Option<(u64, u64)>,
    ) -> Option<UnixListener> {
        if now.is_none() {
            log::warn!("ic-proxy: {} was removed; making it again", path.display());
            return None;
        }
        if self.take_over {
            match take_over_socket(path) {
                Ok(l) => {
                    self.took(ctx, path);
                    return Some(l);
                }
                Err(e) => log::warn!("ic-proxy: cannot take {} back: {e}", path.display()),
            }
            return None;
        }
        if self.left_alone.as_deref() != Some(path) {
            log::warn!(
                "ic-proxy: {} was replaced by another process's socket; backends now reach that process. \
                 Not taking it back (ic-proxy run --take-over does)",
                path.display()
            );
            ctx.status.backend_listener.set_failed(format!(
                "{} was replaced by another process's socket",
                path.display()
            ));
            self.left_alone = Some(path.to_path_buf());
        }
        None
    }
}

/// What ends the serving of one backend socket.
enum Leave {
    /// The runtime stops.
    Stop,
    /// Make the listener again (at the same path or a new one).
    Rebind,
}

/// Serves backends on the socket the configuration names (or on
/// `injected`, first) until the runtime stops.
pub(crate) async fn serve_backends(
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    mut injected: Option<UnixListener>,
    mut socket: watch::Receiver<BackendSocket>,
) {
    let caps = ctx.caps;
    let mut backends = Backends {
        pending: PendingLimits::new(caps.pending_backends, caps.pending_backends),
        acceptor: Acceptor::new("backend", &caps),
        guard: PathGuard {
            take_over: ctx.settings.take_over,
            warned: false,
            left_alone: None,
        },
        ctx,
        peers,
    };
    let ctx = backends.ctx.clone();
    let status = &ctx.status.backend_listener;
    let mut retry = BindRetry::default();
    loop {
        let wanted = match &*socket.borrow_and_update() {
            BackendSocket::FromSettings => Ok(ctx.settings.socket_path.clone()),
            BackendSocket::At(p) => Ok(p.clone()),
            BackendSocket::Off(why) => Err(why.clone()),
        };
        let path = match wanted {
            Ok(p) => p,
            Err(why) => {
                log::info!("ic-proxy: serving no backend socket: {why}");
                status.set_down(why);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    r = socket.changed() => if r.is_err() { ctx.shutdown.cancelled().await; return },
                }
                continue;
            }
        };
        let listener = match injected.take() {
            Some(l) => l,
            None => match backends.guard.bind(&ctx, &path) {
                Ok(l) => l,
                Err(e) => {
                    retry.failed(status, &path.display().to_string(), &e);
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return,
                        _ = BindRetry::pause() => {}
                        r = socket.changed() => if r.is_err() { ctx.shutdown.cancelled().await; return },
                    }
                    continue;
                }
            },
        };
        let mine = file_id(&path);
        retry.up(status, "backends", path.display().to_string());
        let leave = backends
            .serve(&listener, &path, mine, &mut socket, &mut injected)
            .await;
        remove_if_mine(&path, mine);
        if let Leave::Stop = leave {
            return;
        }
    }
}

/// What the backend listener keeps across the sockets it serves.
struct Backends {
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    acceptor: Acceptor,
    pending: Arc<PendingLimits>,
    guard: PathGuard,
}

impl Backends {
    /// Accepts backends on `listener` at `path` until the runtime stops,
    /// the configured socket moves, or the path is taken (then `injected`
    /// may hold the listener that took it back).
    async fn serve(
        &mut self,
        listener: &UnixListener,
        path: &Path,
        mine: Option<(u64, u64)>,
        socket: &mut watch::Receiver<BackendSocket>,
        injected: &mut Option<UnixListener>,
    ) -> Leave {
        let ctx = &self.ctx;
        let mut watch = tokio::time::interval(SOCKET_WATCH);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = socket.changed() => {
                    if r.is_err() {
                        // The configuration's sender is gone: keep serving.
                        ctx.shutdown.cancelled().await;
                        return Leave::Stop;
                    }
                    // The backend socket moved (a sidecar's server
                    // restarted) or went away: sessions already connected
                    // carry on, the old file goes.
                    return Leave::Rebind;
                }
                _ = watch.tick() => {
                    let now = file_id(path);
                    if now != mine {
                        if let Some(l) = self.guard.replaced(ctx, path, now) {
                            *injected = Some(l);
                            return Leave::Rebind;
                        }
                        if now.is_none() || self.guard.take_over {
                            return Leave::Rebind;
                        }
                    }
                }
                accepted = self.acceptor.next(ctx, listener, &ctx.shutdown) => match accepted {
                    Ok((s, _)) => {
                        // Refused: closed here, when `s` drops.
                        if let Some(admitted) = admit_backend(ctx, &self.pending) {
                            ctx.tracker
                                .spawn(run_session(ctx.clone(), self.peers.clone(), s, admitted));
                        }
                    }
                    Err(AcceptEnd::Cancelled) => return Leave::Stop,
                    Err(AcceptEnd::Broken(e)) => {
                        ctx.status
                            .backend_listener
                            .set_failed(format!("accept failed: {e}"));
                        return Leave::Rebind;
                    }
                },
            }
        }
    }
}

/// Some(guard) when a new backend connection may start its handshake; only
/// the total is capped (a Unix peer has no address), and the descriptor
/// reserve is theirs to use. None: refused, counted and logged.
fn admit_backend(ctx: &Ctx, pending: &Arc<PendingLimits>) -> Option<Pending> {
    pending
        .admit(None)
        .inspect_err(|refusal| {
            ctx.refuse(|| format!("ic-proxy: refused backend connection: {refusal}"))
        })
        .ok()
}
